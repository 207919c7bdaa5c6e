"""The one way tests wait: poll a condition until it holds, failing after a timeout (never a fixed sleep)."""

from __future__ import annotations

import time


def poll(check, timeout: float = 30.0, what: str = "condition", every: float = 0.05):
    """Call `check` until it returns something truthy and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s (last: {value!r})")
        time.sleep(every)  # polling a condition
