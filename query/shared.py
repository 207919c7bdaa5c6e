"""One answer computed for many callers: GetStats' stored figures (whole-table counts and system.parts), which
every dashboard asks for every few seconds and which cost the engine a statement each time."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any


class Shared:
    """A value from `compute`, shared by its callers, never older than `max_age_s`: each caller gets a value
    whose computation began at most `max_age_s` before the call, and for which `valid(began)` holds (e.g.
    nothing was written since, or writes are still coming). Once the value is half that old, the next caller
    starts a new computation in the background and still gets the value it has, so callers that come at
    least that often never wait; a caller that finds nothing fresh enough waits for a computation that is
    (the one in progress if it began late enough, else a new one). `max_age_s` 0: computed per call."""

    def __init__(
        self,
        compute: Callable[[], Awaitable[Any]],
        max_age_s: float,
        valid: Callable[[float], bool] = lambda began: True,
    ):
        self.compute, self.max_age_s, self.valid = compute, max_age_s, valid
        self._value: Any = None
        self._began = -math.inf  # monotonic start of the computation that gave `_value`
        self._task: asyncio.Task | None = None  # the newest computation in progress
        self._task_began = -math.inf

    async def get(self) -> Any:
        now = time.monotonic()
        if self._began >= now - self.max_age_s and self.valid(self._began):
            if self._task is None and self._began < now - self.max_age_s / 2:
                self._start(now)
            return self._value
        if self._task is None or self._task_began < now - self.max_age_s or not self.valid(self._task_began):
            self._start(now)
        assert self._task is not None
        return await asyncio.shield(self._task)

    def _start(self, now: float) -> None:
        task = asyncio.ensure_future(self._refresh(now))
        task.add_done_callback(self._done)
        self._task, self._task_began = task, now

    async def _refresh(self, began: float) -> Any:
        value = await self.compute()
        if began > self._began:
            self._value, self._began = value, began
        return value

    def _done(self, task: asyncio.Task) -> None:
        if task is self._task:
            self._task = None
        if not task.cancelled():
            task.exception()  # a failure reaches the callers that waited for it; none: nothing to report
