"""Anomaly episodes: consecutive flagged readings of one slot and kind become one episode.

An episode opens at the first reading flagged with a kind, is extended by every further flagged reading
of that slot and kind that comes within ``quiet_ms`` of the previous one, and closes once ``quiet_ms``
pass without one. Time is the readings' own clock: ``update`` closes what the batch's newest timestamp
makes quiet, and ``close_idle(now_ms)`` lets a timer close episodes of keys that went silent. One
incident thus yields one "opened", at most one "updated" per batch, and one "closed" event, never a row
per reading. Severity is the largest combined score seen in the episode (0..1, calibrated per key:
0.5 = evidence seen once in 10**4 readings of the key).
With ``by_key`` an episode is per slot instead, whatever detectors fire, named after the dominant
detector of its first reading (``RollingStats.update(..., dominant=True)``): one incident, one episode.
Pure Python: it only touches flagged readings, which are rare.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from ._common import ANOMALY_FLAGS, FLAG_NAMES


@dataclass
class Episode:
    """One anomaly episode of a slot and kind; ``end_ms`` is the last flagged reading's timestamp."""

    slot: int
    kind: str
    start_ms: int
    end_ms: int
    count: int
    severity: float
    closed: bool = False

    @property
    def id(self) -> str:
        """Stable identity (the same replayed stream gives the same ids)."""
        return f"{self.slot}:{self.kind}:{self.start_ms}"


@dataclass(frozen=True)
class EpisodeEvent:
    action: str  # "opened", "updated" or "closed"
    episode: Episode


class EpisodeTracker:
    """Group flagged readings into episodes (see the module docstring)."""

    def __init__(self, quiet_ms: int = 60_000, kinds: int = ANOMALY_FLAGS, by_key: bool = False):
        if quiet_ms < 0:
            msg = f"quiet_ms must be >= 0, got {quiet_ms}"
            raise ValueError(msg)
        self.quiet_ms = int(quiet_ms)
        self.kinds = int(kinds)
        self.by_key = bool(by_key)
        self.open: dict[tuple[int, str], Episode] = {}

    def update(self, slots, ts_ms, scores, flags, dominant=None) -> list[EpisodeEvent]:
        """Feed one batch (the arrays given to and returned by ``RollingStats.update``, and with
        ``by_key`` its ``dominant`` array: the flag that names an episode when it opens)."""
        slots = np.asarray(slots, dtype=np.int64)
        ts_ms = np.asarray(ts_ms, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float64)
        flags = np.asarray(flags, dtype=np.uint8)
        if self.by_key:
            if dominant is None:
                msg = "an EpisodeTracker(by_key=True) needs each reading's dominant flag"
                raise TypeError(msg)
            flags = np.where(flags & self.kinds, np.asarray(dominant, dtype=np.uint8), 0).astype(np.uint8)
        events: list[EpisodeEvent] = []
        touched: dict[tuple[int, str], Episode] = {}
        rows = np.flatnonzero(flags & self.kinds)
        for i in rows.tolist():
            s, t, sc, fl = int(slots[i]), int(ts_ms[i]), float(scores[i]), int(flags[i])
            for bit, kind in FLAG_NAMES.items():
                if not fl & bit & self.kinds:
                    continue
                key = (s, "" if self.by_key else kind)
                ep = self.open.get(key)
                if ep is not None and t - ep.end_ms > self.quiet_ms:
                    ep.closed = True
                    events.append(EpisodeEvent("closed", _copy(ep)))
                    touched.pop(key, None)
                    ep = None
                if ep is None:
                    ep = Episode(s, kind, t, t, 1, sc)
                    self.open[key] = ep
                    events.append(EpisodeEvent("opened", _copy(ep)))
                else:
                    ep.end_ms = max(ep.end_ms, t)
                    ep.count += 1
                    ep.severity = max(ep.severity, sc)
                    touched[key] = ep
        for ep in touched.values():
            if not ep.closed:
                events.append(EpisodeEvent("updated", _copy(ep)))
        if len(ts_ms):
            events.extend(self.close_idle(int(ts_ms.max())))
        return events

    def close_idle(self, now_ms: int) -> list[EpisodeEvent]:
        """Close every open episode whose last flagged reading is more than ``quiet_ms`` before now."""
        events = []
        for key, ep in list(self.open.items()):
            if now_ms - ep.end_ms > self.quiet_ms:
                ep.closed = True
                del self.open[key]
                events.append(EpisodeEvent("closed", _copy(ep)))
        return events

    def to_bytes(self) -> bytes:
        """Open episodes as JSON, for the processor's warm-state snapshot."""
        return json.dumps(
            {
                "quiet_ms": self.quiet_ms,
                "kinds": self.kinds,
                "by_key": self.by_key,
                "open": [asdict(ep) for ep in self.open.values()],
            }
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> EpisodeTracker:
        doc = json.loads(data)
        self = cls(doc["quiet_ms"], doc["kinds"], doc.get("by_key", False))
        for d in doc["open"]:
            ep = Episode(**d)
            self.open[(ep.slot, "" if self.by_key else ep.kind)] = ep
        return self


def _copy(ep: Episode) -> Episode:
    return Episode(**asdict(ep))
