"""The one retry rule for storage writes: transient errors again after a growing delay, a bounded number of
times; anything else, or the last failure, goes to the caller (who fails the role and says why)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

DELAYS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0)  # about 30 s in all: a server restart, a merge backlog


class Interrupted(Exception):
    """`stop` was set while waiting to retry."""


def retry(
    fn: Callable,
    what: str,
    transient: Callable[[Exception], bool],
    stop: threading.Event,
    delays: tuple[float, ...] = DELAYS_S,
):
    """fn(), retried after each of `delays` while it raises an error `transient` accepts."""
    for attempt, delay in enumerate((*delays, None), 1):
        try:
            return fn()
        except Exception as exc:
            if delay is None or not transient(exc):
                raise
            log.warning("%s failed (attempt %d, again in %.2f s): %s", what, attempt, delay, exc)
            if stop.wait(delay):
                raise Interrupted(what) from exc
