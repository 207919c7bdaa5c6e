"""Logging set-up: human-readable lines (default) or one JSON object per line (`--log-format json`).

A JSON record has `ts` (ISO 8601 UTC), `level`, `logger`, `msg`, `exc` when there is a traceback, and every
field passed with `extra={...}`, so log shippers index them without parsing the message.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def json_logs() -> bool:
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (a harness may have swapped and closed the one
    there was at setup, while a background thread still logs)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup(level: int = logging.INFO, fmt: str = "text", stream=None) -> None:
    handler = logging.StreamHandler(stream) if stream is not None else _Stderr()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class Repeats(logging.Filter):
    """Lets a message through once per `window_s`: a client library retrying a dead peer says the same line
    dozens of times a second. The next one let through says how many were held back."""

    def __init__(self, window_s: float = 10.0, remember: int = 256):
        super().__init__()
        self.window_s = window_s
        self.remember = remember
        self.seen: dict[str, tuple[float, int]] = {}  # message -> (when last let through, held back since)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        last = self.seen.get(text)
        if last is not None and record.created - last[0] < self.window_s:
            self.seen[text] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.msg, record.args = f"{text} ({last[1]} more like it held back)", None
        if len(self.seen) >= self.remember and last is None:
            self.seen.clear()  # bounded: a flood of distinct lines forgets, and lets each through once again
        self.seen[text] = (record.created, 0)
        return True
