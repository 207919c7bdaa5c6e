"""Read, compute, write: queued batches become stored readings and anomalies.

`prepare` decodes and scores (and so advances the rolling state exactly once); `write` inserts, and may
be retried with the same token without storing anything twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from google.protobuf.message import DecodeError

from iotstream.ext import ANOMALY_FLAGS, FLAG_NAMES, FLAG_SILENCE, SILENCE_SCORE, RuleBook
from iotstream.v1 import ingest_pb2 as pb

from .decode import Columns, to_columns
from .state import IDLE_MS, MAX_KEYS, PartitionState

# flag bit -> anomaly kind stored in ClickHouse (FLAG_LATE is information, not an anomaly)
DETECTORS = {bit: name for bit, name in FLAG_NAMES.items() if bit & ANOMALY_FLAGS}


@dataclass
class Prepared:
    readings: pa.Table
    anomalies: pa.Table
    resent: int = 0  # batches skipped because they were stored before
    undecodable: list[tuple[int, str]] = field(default_factory=list)  # (payload index, reason)


class Processor:
    """Owns the state of the partitions it has been given. One caller at a time."""

    def __init__(
        self, store, rules: RuleBook | None = None, max_keys: int = MAX_KEYS, idle_ms: int = IDLE_MS
    ):
        self.store = store
        self.rules = rules or RuleBook()
        self.partitions: dict[int, PartitionState] = {}
        self.max_keys, self.idle_ms = max_keys, idle_ms  # per partition (see PartitionState)

    def state(self, partition: int) -> PartitionState:
        if partition not in self.partitions:
            self.partitions[partition] = PartitionState(max_keys=self.max_keys, idle_ms=self.idle_ms)
        return self.partitions[partition]

    def adopt(self, partition: int, state: PartitionState) -> None:
        """Take over a restored state; its keys get the current rules (the file may have changed)."""
        state.max_keys, state.idle_ms = self.max_keys, self.idle_ms
        configure(state, self.rules, state.slots)
        self.partitions[partition] = state

    def prepare(self, payloads: list[bytes], partition: int = 0) -> Prepared:
        state = self.state(partition)
        batches, undecodable, resent = [], [], 0
        for i, payload in enumerate(payloads):
            try:
                batch = pb.ReadingBatch.FromString(payload)
            except DecodeError as exc:
                undecodable.append((i, f"not an iotstream.v1.ReadingBatch: {exc}"))
                continue
            if batch.fingerprint and state.is_resend(batch.device_id, batch.seq, batch.fingerprint):
                resent += 1
                continue
            batches.append(batch)
        cols = to_columns(batches)
        if len(cols) == 0:
            return Prepared(cols.readings_table(), empty_anomalies(), resent, undecodable)
        z, score, flags, dom = score_readings(state, key_slots(state, cols, self.rules), cols)
        return Prepared(cols.readings_table(), anomaly_table(cols, z, score, flags, dom), resent, undecodable)

    def write(self, prepared: Prepared, token: str | None = None) -> None:
        """One insert per table; with `token`, a repeated call stores nothing twice."""
        if prepared.readings.num_rows:
            self.store.insert_readings(prepared.readings, token)
        if prepared.anomalies.num_rows:
            self.store.insert_anomalies(prepared.anomalies, None if token is None else token + ":anomalies")

    def silence(self, now_ms: int) -> pa.Table:
        """Anomalies for keys that just went silent (timer-driven; each silence is reported once)."""
        rows = []
        for state in self.partitions.values():
            silent = set(state.stats.silent(now_ms).tolist())
            fresh = silent - state.silenced
            state.silenced = silent
            if fresh:
                keys = {slot: key for key, slot in state.slots.items() if slot in fresh}
                rows += [
                    (dev, metric, state.stats.last_ts(slot)) for slot, (dev, metric) in sorted(keys.items())
                ]
            state.evict_idle(now_ms)  # reported silent after silence_ms, dropped after idle_ms
        return pa.table(
            {
                "device_id": pa.array([r[0] for r in rows], pa.string()),
                "metric": pa.array([r[1] for r in rows], pa.string()),
                "time": pa.array([r[2] for r in rows], pa.timestamp("ms", tz="UTC")),
                "value": pa.array([float("nan")] * len(rows), pa.float64()),
                "kind": pa.array([FLAG_NAMES[FLAG_SILENCE]] * len(rows), pa.string()),
                "detectors": pa.array([[FLAG_NAMES[FLAG_SILENCE]]] * len(rows), pa.list_(pa.string())),
                "score": pa.array([SILENCE_SCORE] * len(rows), pa.float64()),
                "zscore": pa.array([float("nan")] * len(rows), pa.float64()),
            },
            schema=ANOMALY_SCHEMA,
        )


def configure(state: PartitionState, rules: RuleBook, keys) -> None:
    """Apply each metric's rules to the slots of `keys` ((device, metric) pairs)."""
    by_metric: dict[str, list[int]] = {}
    for key in keys:
        by_metric.setdefault(key[1], []).append(state.slots[key])
    for metric, slots in by_metric.items():
        rules.apply(state.stats, np.array(slots, dtype=np.int64), metric)


def key_slots(state: PartitionState, cols: Columns, rules: RuleBook) -> np.ndarray:
    """State slot of each reading's (device, metric) key (-1: no room, see PartitionState); looks up each
    distinct key once, and gives new keys their metric's rules."""
    n_metrics = len(cols.metric_names)
    codes, inverse = np.unique(cols.device.astype(np.int64) * n_metrics + cols.metric, return_inverse=True)
    keys = [
        (cols.device_ids[code // n_metrics], cols.metric_names[code % n_metrics]) for code in codes.tolist()
    ]
    lut, new = state.assign(keys)
    if new:
        configure(state, rules, new)
    return lut[inverse]


def score_readings(state: PartitionState, slots: np.ndarray, cols: Columns):
    """(z, score, flags, dominant flag) per reading; readings of keys without a slot are stored unscored
    (NaN, 0, 0, 0)."""
    scored = slots >= 0
    if scored.all():
        return state.stats.update(slots, cols.time_ms, cols.values, dominant=True)
    state.unscored += int((~scored).sum())
    rows = np.flatnonzero(scored)
    part = state.stats.update(slots[rows], cols.time_ms[rows], cols.values[rows], dominant=True)
    out = [np.full(len(slots), np.nan)] + [np.zeros(len(slots), dtype=a.dtype) for a in part[1:]]
    for whole, some in zip(out, part, strict=True):
        whole[rows] = some
    return tuple(out)


ANOMALY_SCHEMA = pa.schema(
    [
        ("device_id", pa.string()),
        ("metric", pa.string()),
        ("time", pa.timestamp("ms", tz="UTC")),
        ("value", pa.float64()),
        ("kind", pa.string()),
        ("detectors", pa.list_(pa.string())),
        ("score", pa.float64()),
        ("zscore", pa.float64()),
    ]
)


def empty_anomalies() -> pa.Table:
    return ANOMALY_SCHEMA.empty_table()


def anomaly_table(
    cols: Columns, z: np.ndarray, score: np.ndarray, flags: np.ndarray, dominant: np.ndarray
) -> pa.Table:
    """One row per flagged reading, in the column order of `anomalies`: `kind` is the detector with the
    largest evidence, `detectors` all that fired (in flag order)."""
    rows = np.flatnonzero(flags & ANOMALY_FLAGS)
    if len(rows) == 0:
        return empty_anomalies()
    t = cols.readings_table(rows)
    fired = flags[rows] & ANOMALY_FLAGS
    names = {int(f): [kind for bit, kind in DETECTORS.items() if f & bit] for f in np.unique(fired)}
    return pa.table(
        {
            "device_id": t.column("device_id").cast(pa.string()),
            "metric": t.column("metric").cast(pa.string()),
            "time": t.column("time"),
            "value": t.column("value"),
            "kind": pa.array([DETECTORS[int(d)] for d in dominant[rows]], pa.string()),
            "detectors": pa.array([names[int(f)] for f in fired], pa.list_(pa.string())),
            "score": pa.array(score[rows], pa.float64()),
            "zscore": pa.array(z[rows], pa.float64()),
        },
        schema=ANOMALY_SCHEMA,
    )
