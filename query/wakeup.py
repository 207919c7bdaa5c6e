"""Episode writes of this process, announced to the WatchAnomalies streams that wait for them.

The Store calls `notify` (its on_episodes hook) from whichever thread wrote; streams wait on their event
loop. A stream notes `count` before it looks and then waits for a count past it, so a write that lands
during a look is never missed.
"""

from __future__ import annotations

import asyncio
import threading


class EpisodeSignal:
    def __init__(self) -> None:
        self.count = 0  # episode writes so far
        self._lock = threading.Lock()
        self._waiters: dict[asyncio.Future, asyncio.AbstractEventLoop] = {}

    def notify(self) -> None:
        with self._lock:
            self.count += 1
            waiters, self._waiters = self._waiters, {}
        for future, loop in waiters.items():
            loop.call_soon_threadsafe(_wake, future)

    def after(self, seen: int) -> asyncio.Future:
        """A future of the running loop, done once `count` is past `seen`; `forget` it when no longer
        waited for."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if self.count != seen:
                future.set_result(None)
            else:
                self._waiters[future] = loop
        return future

    def forget(self, future: asyncio.Future) -> None:
        with self._lock:
            self._waiters.pop(future, None)


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
