"""Serialized ReadingBatch messages to one set of columns, with no Python object per reading."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from iotstream.v1 import ingest_pb2 as pb


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
    device_ids: list[str] = []
    device_slot: dict[str, int] = {}
    metric_names: list[str] = []
    metric_slot: dict[str, int] = {}
    parts: dict[str, list] = {"device": [], "metric": [], "time": [], "values": [], "received": []}
    for batch in batches:
        n = len(batch.values)
        if n == 0:
            continue
        dev = device_slot.setdefault(batch.device_id, len(device_ids))
        if dev == len(device_ids):
            device_ids.append(batch.device_id)
        # Map the batch's own metric dictionary onto the combined one (per name, not per reading).
        local = np.empty(len(batch.metric_names), dtype=np.int32)
        for i, name in enumerate(batch.metric_names):
            local[i] = metric_slot.setdefault(name, len(metric_names))
            if local[i] == len(metric_names):
                metric_names.append(name)
        parts["device"].append(np.full(n, dev, dtype=np.int32))
        parts["metric"].append(local[np.array(batch.metric_index, dtype=np.int64)])
        parts["time"].append(batch.base_time_ms + np.array(batch.time_offset_ms, dtype=np.int64))
        parts["values"].append(np.array(batch.values, dtype=np.float64))
        parts["received"].append(np.full(n, batch.received_ms, dtype=np.int64))

    def cat(key, dtype):
        return np.concatenate(parts[key]) if parts[key] else np.empty(0, dtype=dtype)

    return Columns(
        device_ids,
        metric_names,
        cat("device", np.int32),
        cat("metric", np.int32),
        cat("time", np.int64),
        cat("values", np.float64),
        cat("received", np.int64),
    )
