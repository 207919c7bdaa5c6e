"""Serialized ReadingBatch messages to one set of columns, with no Python object per reading."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from iotstream.v1 import ingest_pb2 as pb

SMALL_BATCH = 32  # readings; see to_columns
DTYPES = {
    "device": np.int32,
    "metric": np.int32,
    "time": np.int64,
    "values": np.float64,
    "received": np.int64,
}


@dataclass
class Columns:
    """Readings of many batches. Devices and metrics are dictionary-coded: `device[i]` indexes
    `device_ids`, `metric[i]` indexes `metric_names`."""

    device_ids: list[str]
    metric_names: list[str]
    device: np.ndarray  # int32
    metric: np.ndarray  # int32
    time_ms: np.ndarray  # int64
    values: np.ndarray  # float64
    received_ms: np.ndarray  # int64, per reading (when ingest accepted its batch)

    def __len__(self) -> int:
        return len(self.values)

    def readings_table(self, rows: np.ndarray | None = None) -> pa.Table:
        """Arrow table in the column order of the `readings` table; `rows` selects a subset."""
        sel = slice(None) if rows is None else rows
        return pa.table(
            {
                "device_id": pa.DictionaryArray.from_arrays(
                    self.device[sel], pa.array(self.device_ids, pa.string())
                ),
                "metric": pa.DictionaryArray.from_arrays(
                    self.metric[sel], pa.array(self.metric_names, pa.string())
                ),
                "time": pa.array(self.time_ms[sel], pa.timestamp("ms", tz="UTC")),
                "value": pa.array(self.values[sel], pa.float64()),
            }
        )


def decode_batches(payloads: list[bytes]) -> Columns:
    """Raises google.protobuf.message.DecodeError on a payload that is not a ReadingBatch."""
    return to_columns([pb.ReadingBatch.FromString(p) for p in payloads])


def to_columns(batches: list[pb.ReadingBatch]) -> Columns:
    """Batches of up to SMALL_BATCH readings are gathered in Python lists and become arrays once per run of
    them: numpy's ~1 µs a call, five calls a batch, was most of the processor's time for one-reading
    messages (bench/profile/README.md section 10); larger batches go column by column."""
    device_ids: list[str] = []
    device_slot: dict[str, int] = {}
    metric_names: list[str] = []
    metric_slot: dict[str, int] = {}
    parts: dict[str, list] = {key: [] for key in DTYPES}
    small: dict[str, list] = {key: [] for key in DTYPES}  # readings of the small batches not yet in parts

    def flush() -> None:
        for key, dtype in DTYPES.items():
            if small[key]:
                parts[key].append(np.array(small[key], dtype=dtype))
                small[key] = []

    for batch in batches:
        n = len(batch.values)
        if n == 0:
            continue
        dev = device_slot.setdefault(batch.device_id, len(device_ids))
        if dev == len(device_ids):
            device_ids.append(batch.device_id)
        # Map the batch's own metric dictionary onto the combined one (per name, not per reading).
        local = []
        for name in batch.metric_names:
            local.append(metric_slot.setdefault(name, len(metric_names)))
            if local[-1] == len(metric_names):
                metric_names.append(name)
        if n <= SMALL_BATCH:
            base = batch.base_time_ms
            small["device"] += [dev] * n
            small["metric"] += [local[i] for i in batch.metric_index]
            small["time"] += [base + t for t in batch.time_offset_ms]
            small["values"] += batch.values
            small["received"] += [batch.received_ms] * n
            continue
        flush()
        parts["device"].append(np.full(n, dev, dtype=np.int32))
        parts["metric"].append(np.array(local, dtype=np.int32)[np.array(batch.metric_index, dtype=np.int64)])
        parts["time"].append(batch.base_time_ms + np.array(batch.time_offset_ms, dtype=np.int64))
        parts["values"].append(np.array(batch.values, dtype=np.float64))
        parts["received"].append(np.full(n, batch.received_ms, dtype=np.int64))
    flush()

    def cat(key):
        return np.concatenate(parts[key]) if parts[key] else np.empty(0, dtype=DTYPES[key])

    return Columns(
        device_ids, metric_names, cat("device"), cat("metric"), cat("time"), cat("values"), cat("received")
    )
