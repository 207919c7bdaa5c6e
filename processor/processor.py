"""Read, compute, write: queued batches become stored readings and anomalies.

`prepare` decodes and scores (and so advances the rolling state exactly once); `write` inserts, and may
be retried with the same token without storing anything twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from google.protobuf.message import DecodeError

from iotstream.ext import ANOMALY_FLAGS, FLAG_NAMES
from iotstream.v1 import ingest_pb2 as pb

from .decode import Columns, to_columns
from .state import PartitionState

# flag bit -> anomaly kind stored in ClickHouse (FLAG_LATE is information, not an anomaly)
KINDS = {bit: name for bit, name in FLAG_NAMES.items() if bit & ANOMALY_FLAGS}


@dataclass
class Prepared:
    readings: pa.Table
    anomalies: pa.Table
    resent: int = 0  # batches skipped because they were stored before
    undecodable: list[tuple[int, str]] = field(default_factory=list)  # (payload index, reason)


class Processor:
    """Owns the state of the partitions it has been given. One caller at a time."""

    def __init__(self, store):
        self.store = store
        self.partitions: dict[int, PartitionState] = {}

    def state(self, partition: int) -> PartitionState:
        return self.partitions.setdefault(partition, PartitionState())

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
        z, score, flags = state.stats.update(key_slots(state, cols), cols.time_ms, cols.values)
        return Prepared(cols.readings_table(), anomaly_table(cols, z, score, flags), resent, undecodable)

    def write(self, prepared: Prepared, token: str | None = None) -> None:
        """One insert per table; with `token`, a repeated call stores nothing twice."""
        if prepared.readings.num_rows:
            self.store.insert_readings(prepared.readings, token)
        if prepared.anomalies.num_rows:
            self.store.insert_anomalies(prepared.anomalies, None if token is None else token + ":anomalies")


def key_slots(state: PartitionState, cols: Columns) -> np.ndarray:
    """State slot of each reading's (device, metric) key; looks up each distinct key once."""
    n_metrics = len(cols.metric_names)
    codes, inverse = np.unique(cols.device.astype(np.int64) * n_metrics + cols.metric, return_inverse=True)
    lut = np.empty(len(codes), dtype=np.int64)
    for i, code in enumerate(codes.tolist()):
        key = (cols.device_ids[code // n_metrics], cols.metric_names[code % n_metrics])
        lut[i] = state.slots.setdefault(key, len(state.slots))
    return lut[inverse]


ANOMALY_SCHEMA = pa.schema([("device_id", pa.string()), ("metric", pa.string()),
                            ("time", pa.timestamp("ms", tz="UTC")), ("value", pa.float64()),
                            ("kind", pa.string()), ("score", pa.float64()), ("zscore", pa.float64())])


def empty_anomalies() -> pa.Table:
    return ANOMALY_SCHEMA.empty_table()


def anomaly_table(cols: Columns, z: np.ndarray, score: np.ndarray, flags: np.ndarray) -> pa.Table:
    """One row per (flagged reading, detector that fired), in the column order of `anomalies`."""
    tables = []
    for bit, kind in KINDS.items():
        rows = np.flatnonzero(flags & bit)
        if len(rows) == 0:
            continue
        t = cols.readings_table(rows)
        tables.append(pa.table({
            "device_id": t.column("device_id").cast(pa.string()), "metric": t.column("metric").cast(pa.string()),
            "time": t.column("time"), "value": t.column("value"),
            "kind": pa.array([kind] * len(rows), pa.string()), "score": pa.array(score[rows], pa.float64()),
            "zscore": pa.array(z[rows], pa.float64())}, schema=ANOMALY_SCHEMA))
    return pa.concat_tables(tables) if tables else empty_anomalies()
