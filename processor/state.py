"""Everything a processor remembers about the keys of one partition, and its byte form for snapshots.

One device's batches always land in one partition (the Kafka key is the device id), so a partition's
state moves whole when the partition moves to another processor.
"""

from __future__ import annotations

import collections
import json
import struct

from iotstream.ext import RollingStats

MAGIC = b"IOTSPS\x00\x01"
_LEN = struct.Struct("<I")
RECENT_BATCHES = 64  # per device: a reconnecting device resends at most its unacked in-flight batches


class PartitionState:
    """Rolling statistics per (device, metric) key, the key -> slot map, and the fingerprints of each
    device's recent batches (to store a resent batch once)."""

    def __init__(self, stats: RollingStats | None = None, slots: dict | None = None, recent: dict | None = None):
        self.stats = stats or RollingStats()
        self.slots: dict[tuple[str, str], int] = slots or {}
        self.recent: dict[str, collections.deque] = recent or {}
        self.silenced: set[int] = set()  # slots already reported silent (wall-clock driven, not snapshotted)

    def is_resend(self, device_id: str, seq: int, fingerprint: int) -> bool:
        """True when this (seq, fingerprint) was already seen for the device; else remember it."""
        key = (seq, fingerprint)
        seen = self.recent.setdefault(device_id, collections.deque(maxlen=RECENT_BATCHES))
        if key in seen:
            return True
        seen.append(key)
        return False

    def to_bytes(self) -> bytes:
        header = json.dumps({"slots": [[d, m, s] for (d, m), s in self.slots.items()],
                             "recent": {d: list(q) for d, q in self.recent.items()}}).encode()
        return MAGIC + _LEN.pack(len(header)) + header + self.stats.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> PartitionState:
        if data[:len(MAGIC)] != MAGIC:
            raise ValueError(f"not a partition-state snapshot (starts {data[:8]!r})")
        (n,) = _LEN.unpack_from(data, len(MAGIC))
        start = len(MAGIC) + _LEN.size
        header = json.loads(data[start:start + n])
        slots = {(d, m): s for d, m, s in header["slots"]}
        recent = {d: collections.deque((tuple(k) for k in keys), maxlen=RECENT_BATCHES)
                  for d, keys in header["recent"].items()}
        return cls(RollingStats.from_bytes(data[start + n:]), slots, recent)
