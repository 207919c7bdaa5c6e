"""Per-device limits: a token bucket over readings that slows a device down before it refuses it, caps on
the streams and the unary Send calls a device holds open at once, a cap on the bytes of its batches in
flight (read, not yet acked), and a cap on the distinct metrics it sends (MetricBook).

A batch takes its readings from its device's bucket. While the bucket has them, nothing happens. When it
runs dry, the bucket goes into debt and the batch is held back until the debt is paid (`delay`): the
ingest handler stops reading that stream meanwhile, so gRPC flow control slows the device down and
nothing is lost. Only when the device stays over its rate for `reject_after_s` without a break, or when
its concurrent calls would pile up more than `max_delay_s` of debt, is a batch refused (RateLimited) with
the time after which a resend will pass, which the handler returns as `grpc-retry-pushback-ms`. A device
that flushes an offline backlog over one stream is therefore paced, and refused only after
`reject_after_s` of pacing; what it had acked is stored, and what was refused it resends.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass, field


class RateLimited(Exception):
    """The device is over its rate for too long; resend after `retry_after_s`."""

    readings = 0  # the batch's, counted under RATE_LIMITED

    def __init__(self, device: str, retry_after_s: float, why: str):
        super().__init__(f"device {device!r} {why}; resend after {retry_after_s * 1000:.0f} ms")
        self.retry_after_s = retry_after_s


class TooManyStreams(Exception):
    """The device already holds its maximum of concurrent streams."""


class TooManySends(Exception):
    """The device already has its maximum of unary Send calls in progress."""


@dataclass
class _Inflight:
    nbytes: int = 0
    freed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class TokenBucket:
    rate: float  # readings per second
    burst: float  # bucket size, readings
    max_delay_s: float
    reject_after_s: float
    level: float = math.nan
    updated: float = 0.0
    throttled_since: float | None = None  # start of the current stretch of held-back batches

    def __post_init__(self):
        if math.isnan(self.level):
            self.level = self.burst

    def _refill(self, now: float) -> None:
        self.level = min(self.burst, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def take(self, n: int, now: float, device: str = "") -> float:
        """Take `n` readings; returns how long to hold the batch (0: pass now). Raises RateLimited when the
        device has been held back for `reject_after_s` without a break, or the debt would pass
        `max_delay_s` (then nothing is taken)."""
        self._refill(now)
        after = self.level - n
        if after >= 0:
            self.level, self.throttled_since = after, None
            return 0.0
        if self.throttled_since is not None and now - self.throttled_since >= self.reject_after_s:
            raise RateLimited(
                device,
                -after / self.rate,
                f"stayed over {self.rate:g} readings/s for {self.reject_after_s:g} s",
            )
        if -after > self.max_delay_s * self.rate:
            raise RateLimited(
                device,
                (-after - self.max_delay_s * self.rate) / self.rate,
                f"is over {self.rate:g} readings/s by more than {self.max_delay_s:g} s of readings",
            )
        if self.throttled_since is None:
            self.throttled_since = now
        self.level = after
        return -after / self.rate

    def idle(self, now: float) -> bool:
        return self.level + (now - self.updated) * self.rate >= self.burst


class DeviceLimiter:
    """Buckets and open-stream counts of every device seen (idle buckets are forgotten)."""

    SWEEP_EVERY = 10_000

    def __init__(
        self,
        rate: float = 0.0,
        burst: float = 0.0,
        max_delay_s: float = 5.0,
        reject_after_s: float = 30.0,
        max_streams: int = 0,
        max_sends: int = 0,
        max_inflight_bytes: int = 0,
        clock=time.monotonic,
    ):
        self.rate = rate
        self.burst = burst or max(rate, 1.0)
        self.max_delay_s = max_delay_s
        self.reject_after_s = reject_after_s
        self.max_streams = max_streams
        self.max_sends = max_sends
        self.max_inflight_bytes = max_inflight_bytes
        self.clock = clock
        self.buckets: dict[str, TokenBucket] = {}
        self.streams: dict[str, int] = {}
        self.sends: dict[str, int] = {}
        self.inflight: dict[str, _Inflight] = {}  # only devices with bytes in flight
        self._takes = 0

    def take(self, device: str, n: int) -> float:
        """Seconds to hold a batch of `n` readings of `device` (0 without a rate limit)."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        bucket = self.buckets.get(device)
        if bucket is None:
            bucket = self.buckets[device] = TokenBucket(
                self.rate, self.burst, self.max_delay_s, self.reject_after_s, updated=now
            )
        self._takes += 1
        if self._takes % self.SWEEP_EVERY == 0:
            self.buckets = {d: b for d, b in self.buckets.items() if d == device or not b.idle(now)}
        return bucket.take(n, now, device)

    def open_stream(self, device: str) -> None:
        count = self.streams.get(device, 0)
        if self.max_streams and count >= self.max_streams:
            raise TooManyStreams(
                f"device {device!r} already has {count} open streams (limit {self.max_streams}); "
                "close one first"
            )
        self.streams[device] = count + 1

    def close_stream(self, device: str) -> None:
        _decrement(self.streams, device)

    def open_send(self, device: str) -> None:
        count = self.sends.get(device, 0)
        if self.max_sends and count >= self.max_sends:
            raise TooManySends(
                f"device {device!r} already has {count} Send calls in progress (limit "
                f"{self.max_sends}); wait for their acks or use one Stream"
            )
        self.sends[device] = count + 1

    def close_send(self, device: str) -> None:
        _decrement(self.sends, device)

    async def hold_bytes(self, device: str, nbytes: int) -> None:
        """Wait until `nbytes` more of `device` fit under `max_inflight_bytes`, then count them (a device
        with nothing in flight always gets its batch in, so one batch over the cap cannot wait forever)."""
        while True:
            entry = self.inflight.setdefault(device, _Inflight())
            cap = self.max_inflight_bytes
            if not cap or not entry.nbytes or entry.nbytes + nbytes <= cap:
                entry.nbytes += nbytes
                return
            entry.freed.clear()
            await entry.freed.wait()

    def free_bytes(self, device: str, nbytes: int) -> None:
        entry = self.inflight[device]
        entry.nbytes -= nbytes
        entry.freed.set()
        if not entry.nbytes:
            del self.inflight[device]  # waiters woken above take a fresh entry


def _decrement(counts: dict[str, int], device: str) -> None:
    count = counts.get(device, 0) - 1
    if count > 0:
        counts[device] = count
    else:
        counts.pop(device, None)


class MetricBook:
    """The distinct metric names each device has sent (on this node), at most `max_metrics` per device.
    A device unseen for `idle_s` is forgotten (swept every SWEEP_EVERY calls), so the book is bounded by
    the devices active within `idle_s`. Thread-safe: validation of large batches runs in a worker thread."""

    SWEEP_EVERY = 10_000

    def __init__(self, max_metrics: int, idle_s: float, clock=time.monotonic):
        self.max_metrics, self.idle_s, self.clock = max_metrics, idle_s, clock
        self.devices: dict[str, tuple[set[str], list[float]]] = {}  # device -> (names, [last seen])
        self._lock = threading.Lock()
        self._calls = 0

    def admit(self, device: str, names: list[str]) -> tuple[list[int], str]:
        """Record `names` for `device`; returns the positions of those over its cap, and why."""
        if not self.max_metrics:
            return [], ""
        now = self.clock()
        with self._lock:
            self._calls += 1
            if self._calls % self.SWEEP_EVERY == 0:
                self.devices = {d: e for d, e in self.devices.items() if now - e[1][0] < self.idle_s}
            known, seen = self.devices.setdefault(device, (set(), [now]))
            seen[0] = now
            refused = []
            for i, name in enumerate(names):
                if name not in known:
                    if len(known) >= self.max_metrics:
                        refused.append(i)
                    else:
                        known.add(name)
        why = (
            (
                f"device {device!r} already sends {self.max_metrics} distinct metrics (the limit); "
                "readings of further metrics are refused"
            )
            if refused
            else ""
        )
        return refused, why
