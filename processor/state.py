"""Everything a processor remembers about the keys of one partition, and its byte form for snapshots.

One device's batches always land in one partition (the Kafka key is the device id), so a partition's
state moves whole when the partition moves to another processor.

State is bounded: at most `max_keys` (device, metric) keys hold rolling state. A key not seen for `idle_ms`
(wall clock, as this processor saw it) is evicted and comes back cold; evicting compacts the slots, so
memory follows the live keys. A key that finds the partition full of live keys gets no state: its readings
are stored but not scored, counted in `unscored` (KEYS_OVER_LIMIT). After a restore every key counts as seen
at that moment (the snapshot does not carry last-seen times).
"""

from __future__ import annotations

import json
import logging
import struct
import sys
import time

import numpy as np

from iotstream.ext import RollingStats, _snapshot

log = logging.getLogger(__name__)

# v2 names each device and metric once and gives every slot, in slot order, the index of its device and
# metric: at 10^6 keys the header is a quarter of the size, and a restored key shares its strings as a live
# one does. v3 keeps the resend windows as they are in memory, packed records after the header, where v2 had
# them as JSON pairs (10^5 devices: 5 s of json holding the GIL, and so ingest's event loop). v1 (a [device,
# metric, slot] list per key) and v2 are still read.
MAGIC = b"IOTSPS\x00\x03"
MAGIC_V2 = b"IOTSPS\x00\x02"
MAGIC_V1 = b"IOTSPS\x00\x01"
_LEN = struct.Struct("<I")
_BLOB_LEN = struct.Struct("<Q")
RECENT_BATCHES = 64  # per device: a reconnecting device resends at most its unacked in-flight batches
# One resend-window record, (seq, fingerprint), packed: a device's window is one bytearray of at most
# RECENT_BATCHES records (~1 KB), where a deque of tuples of ints held ~8 KB once full.
_RECORD = struct.Struct("<QQ")
MAX_KEYS = 2_000_000  # per partition
IDLE_MS = 24 * 3_600_000
SWEEP_SHARE = 8  # a timed sweep compacts once 1/8 of the keys are idle (compaction copies every key's state)
CAP_COMPACT_EVERY_MS = 60_000  # a full partition compacts for room at most this often (new keys wait)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class PartitionState:
    """Rolling statistics per (device, metric) key, the key -> slot map, and the fingerprints of each
    device's recent batches (to store a resent batch once)."""

    def __init__(
        self,
        stats: RollingStats | None = None,
        slots: dict | None = None,
        recent: dict[str, bytearray] | None = None,
        max_keys: int = MAX_KEYS,
        idle_ms: int = IDLE_MS,
    ):
        self.stats = stats or RollingStats()
        self.slots: dict[tuple[str, str], int] = slots or {}
        self.recent: dict[str, bytearray] = recent or {}  # device -> its resend window (_RECORD records)
        self.silenced: set[int] = set()  # slots already reported silent (wall-clock driven, not snapshotted)
        self.max_keys, self.idle_ms = max_keys, idle_ms
        self.seen = np.full(len(self.slots), now_ms(), dtype=np.int64)  # per slot: last batch, wall clock ms
        self.unscored = 0  # readings of keys that found no room (KEYS_OVER_LIMIT)
        self.evicted = 0  # keys evicted as idle
        self._cap_compacted_at = -CAP_COMPACT_EVERY_MS

    def assign(self, keys: list[tuple[str, str]], now: int | None = None) -> tuple[np.ndarray, list]:
        """Slot of each key (-1 when the partition is full of live keys), marking them seen; and the keys
        that got a new slot (they need their metric's rules)."""
        now = now_ms() if now is None else now
        known = self._lookup(keys)
        self.seen[known[known >= 0]] = now  # before evicting: these keys are live
        missing = [k for k, slot in zip(keys, known.tolist(), strict=True) if slot < 0]
        renumbered = False
        if (
            missing
            and len(self.slots) + len(missing) > self.max_keys
            and now - self._cap_compacted_at >= CAP_COMPACT_EVERY_MS
        ):
            self._cap_compacted_at = now
            renumbered = self.evict_idle(now, at_cap=True) > 0
        new = []
        for d, m in missing[: max(0, self.max_keys - len(self.slots))]:
            key = (sys.intern(d), sys.intern(m))  # one string per device / metric name, not one per key
            self.slots[key] = len(self.slots)
            new.append(key)
        if len(self.seen) < len(self.slots):
            grow = max(len(self.slots), 2 * len(self.seen)) - len(self.seen)
            self.seen = np.concatenate([self.seen, np.empty(grow, dtype=np.int64)])
        if not new and not renumbered:  # only known keys, or a full partition: `known` still holds
            return known, new
        out = self._lookup(keys)
        self.seen[out[out >= 0]] = now
        return out, new

    def _lookup(self, keys) -> np.ndarray:
        return np.fromiter((self.slots.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))

    def evict_idle(self, now: int, at_cap: bool = False) -> int:
        """Drop the keys not seen for idle_ms (their state, and the resend window of devices left with no
        key) and compact the slots. Unless `at_cap`, only once enough are idle to be worth the copy."""
        n = len(self.slots)
        idle = self.seen[:n] < now - self.idle_ms
        count = int(idle.sum())
        if not count or (not at_cap and count * SWEEP_SHARE < n):
            return 0
        keep = np.flatnonzero(~idle)
        self.stats = _compact(self.stats, keep)
        renumber = np.full(n, -1, dtype=np.int64)
        renumber[keep] = np.arange(len(keep))
        self.slots = {k: int(renumber[s]) for k, s in self.slots.items() if renumber[s] >= 0}
        self.seen = self.seen[keep]
        self.silenced = {int(renumber[s]) for s in self.silenced if renumber[s] >= 0}
        devices = {d for d, _ in self.slots}
        self.recent = {d: q for d, q in self.recent.items() if d in devices}
        self.evicted += count
        log.info(
            "evicted %d keys idle for over %d s; %d keep their state", count, self.idle_ms // 1000, len(keep)
        )
        return count

    def is_resend(self, device_id: str, seq: int, fingerprint: int) -> bool:
        """True when this (seq, fingerprint) was already seen for the device; else remember it."""
        record = _RECORD.pack(seq, fingerprint)
        seen = self.recent.get(device_id)
        if seen is None:
            self.recent[device_id] = bytearray(record)
            return False
        at = seen.find(record)
        while at >= 0:  # find() may match across two records: only a match at a record's start counts
            if at % _RECORD.size == 0:
                return True
            at = seen.find(record, at + 1)
        if len(seen) >= RECENT_BATCHES * _RECORD.size:
            del seen[: _RECORD.size]
        seen += record
        return False

    def to_bytes(self) -> bytes:
        by_slot: list = [None] * len(self.slots)  # slots are always 0..n-1 (assign, evict_idle)
        for key, slot in self.slots.items():
            by_slot[slot] = key
        devices: dict[str, int] = {}
        metrics: dict[str, int] = {}
        header = json.dumps(
            {
                "device": [devices.setdefault(d, len(devices)) for d, _ in by_slot],
                "metric": [metrics.setdefault(m, len(metrics)) for _, m in by_slot],
                "devices": list(devices),
                "metrics": list(metrics),
                "recent": {d: len(w) // _RECORD.size for d, w in self.recent.items()},  # records each
            }
        ).encode()
        windows = b"".join(self.recent.values())
        return b"".join(
            (
                MAGIC,
                _LEN.pack(len(header)),
                header,
                _BLOB_LEN.pack(len(windows)),
                windows,
                self.stats.to_bytes(),
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> PartitionState:
        magic = data[: len(MAGIC)]
        if magic not in (MAGIC, MAGIC_V2, MAGIC_V1):
            raise ValueError(f"not a partition-state snapshot (starts {data[:8]!r})")
        (n,) = _LEN.unpack_from(data, len(MAGIC))
        start = len(MAGIC) + _LEN.size
        header = json.loads(data[start : start + n])
        if magic == MAGIC_V1:
            slots = {(sys.intern(d), sys.intern(m)): s for d, m, s in header["slots"]}
        else:
            devices = [sys.intern(d) for d in header["devices"]]
            metrics = [sys.intern(m) for m in header["metrics"]]
            slots = {
                (devices[d], metrics[m]): s
                for s, (d, m) in enumerate(zip(header["device"], header["metric"], strict=True))
            }
        start += n
        if magic == MAGIC:
            (size,) = _BLOB_LEN.unpack_from(data, start)
            start += _BLOB_LEN.size
            recent, at = {}, start
            for d, count in header["recent"].items():
                recent[d] = bytearray(data[at : at + count * _RECORD.size])
                at += count * _RECORD.size
            if at != start + size:
                raise ValueError(f"partition-state snapshot: resend windows of {at - start} of {size} bytes")
            start += size
        else:
            recent = {
                d: bytearray(b"".join(_RECORD.pack(*k) for k in keys[-RECENT_BATCHES:]))
                for d, keys in header["recent"].items()
            }
        return cls(RollingStats.from_bytes(data[start:]), slots, recent)


def _compact(stats: RollingStats, keep: np.ndarray) -> RollingStats:
    """`stats` with only the slots `keep`, renumbered 0..len(keep)-1, through the snapshot form (the
    kernels have no call to drop slots): every per-slot array loses the other rows."""
    params, fields, arrays = _snapshot.load(stats.to_bytes(), "RollingStats")
    if not len(keep):
        return RollingStats(**params)
    nslots = stats.nslots
    kept = {name: a[keep] if a.ndim and a.shape[0] == nslots else a for name, a in arrays.items()}
    return RollingStats.from_bytes(_snapshot.dump("RollingStats", params, fields, kept))
