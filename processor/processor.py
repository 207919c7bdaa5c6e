"""Read, compute, write: one call turns a list of queued batches into stored readings and anomalies."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from iotstream.ext import FLAG_ZSCORE, RollingStats

from .decode import Columns, decode_batches

KINDS = {FLAG_ZSCORE: "zscore"}  # flag bit -> anomaly kind stored in ClickHouse


@dataclass
class Outcome:
    readings: int
    anomalies: int


class Processor:
    """Owns the rolling state of every (device, metric) key it has seen.

    Not thread-safe: one caller at a time (the embedded loop or one Kafka consumer).
    """

    def __init__(self, store, stats: RollingStats | None = None):
        self.store = store
        self.stats = stats or RollingStats()
        self.slots: dict[tuple[str, str], int] = {}

    def process(self, payloads: list[bytes], token: str | None = None) -> Outcome:
        """Decode, score and store `payloads`; with `token`, a repeated call stores nothing twice."""
        cols = decode_batches(payloads)
        if len(cols) == 0:
            return Outcome(0, 0)
        z, score, flags = self.stats.update(self.key_slots(cols), cols.time_ms, cols.values)
        self.store.insert_readings(cols.readings_table(), token)
        anomalies = anomaly_table(cols, z, score, flags)
        if anomalies.num_rows:
            self.store.insert_anomalies(anomalies, None if token is None else token + ":anomalies")
        return Outcome(len(cols), anomalies.num_rows)

    def key_slots(self, cols: Columns) -> np.ndarray:
        """State slot of each reading's (device, metric) key; looks up each distinct key once."""
        pair = cols.device.astype(np.int64) * len(cols.metric_names) + cols.metric
        codes, inverse = np.unique(pair, return_inverse=True)
        lut = np.empty(len(codes), dtype=np.int64)
        for i, code in enumerate(codes.tolist()):
            key = (cols.device_ids[code // len(cols.metric_names)], cols.metric_names[code % len(cols.metric_names)])
            lut[i] = self.slots.setdefault(key, len(self.slots))
        return lut[inverse]


def anomaly_table(cols: Columns, z: np.ndarray, score: np.ndarray, flags: np.ndarray) -> pa.Table:
    """One row per (flagged reading, detector that fired), in the column order of `anomalies`."""
    tables = []
    for bit, kind in KINDS.items():
        rows = np.flatnonzero(flags & bit)
        if len(rows) == 0:
            continue
        t = cols.readings_table(rows)
        t = t.append_column("kind", pa.array([kind] * len(rows), pa.string()))
        t = t.append_column("score", pa.array(score[rows], pa.float64()))
        tables.append(t.append_column("zscore", pa.array(z[rows], pa.float64())))
    if not tables:
        return pa.table({"device_id": pa.array([], pa.string())})
    return pa.concat_tables(tables)
