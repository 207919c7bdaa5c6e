"""The in-process bounded queue that stands in for Kafka in the embedded mode."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field


class QueueUnavailable(Exception):
    """The queue stayed full (or its broker away) for longer than a device should wait."""


@dataclass
class Item:
    payload: bytes  # a serialized ReadingBatch holding only accepted readings
    readings: int
    done: asyncio.Future = field(repr=False)  # resolved once the readings are stored


class LocalQueue:
    """Bounded by readings, not items: `put` waits while the queue is full, which stops the ingest
    handler from reading its stream, so gRPC flow control pushes back on the device."""

    def __init__(self, max_readings: int = 1_000_000):
        self.max_readings = max_readings
        self.depth = 0  # readings queued, not yet taken
        self._items: collections.deque[Item] = collections.deque()
        self._changed = asyncio.Event()
        self.closed = False

    def close(self) -> None:
        """No more puts; `take` returns [] once the queue is drained."""
        self.closed = True
        self._changed.set()

    async def put(self, payload: bytes, readings: int, key: str = "") -> asyncio.Future:
        """Queue a batch; returns the future that resolves when the batch is durable. (`key`, the
        device id, orders batches in Kafka; one local queue keeps every batch in order anyway.)"""
        # An oversized batch still goes in alone, so it cannot wait forever.
        while self.depth > 0 and self.depth + readings > self.max_readings:
            self._changed.clear()
            await self._changed.wait()
        item = Item(payload, readings, asyncio.get_running_loop().create_future())
        self._items.append(item)
        self.depth += readings
        self._changed.set()
        return item.done

    async def take(self, max_readings: int) -> list[Item]:
        """Wait for at least one item, then take queued items up to `max_readings` readings;
        [] when the queue is closed and empty."""
        while not self._items:
            if self.closed:
                return []
            self._changed.clear()
            await self._changed.wait()
        taken, total = [], 0
        while self._items and (not taken or total + self._items[0].readings <= max_readings):
            item = self._items.popleft()
            taken.append(item)
            total += item.readings
        self.depth -= total
        self._changed.set()
        return taken
