"""Per-reading validation of a ReadingBatch, on whole columns at once.

A bad reading is rejected with its index and reason; the rest of the batch is accepted. Batch-level
faults (bad device id, column lengths that disagree) reject every reading of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from iotstream.common.ids import DEVICE_ID, METRIC_NAME
from iotstream.v1 import ingest_pb2 as pb

DAY_MS = 86_400_000


@dataclass(frozen=True)
class Limits:
    max_readings: int = 10_000
    # Older readings would fall out of ClickHouse's TTL at insert, i.e. be acked and then dropped:
    # keep this at or below the store's retention.
    max_past_ms: int = 30 * DAY_MS
    max_future_ms: int = 5 * 60_000
    # Optional allow-list; None accepts any well-formed name.
    metrics: frozenset[str] | None = None
    # Call-level limits (ingest/limits.py). A message over max_message_bytes ends its call with
    # RESOURCE_EXHAUSTED before it is decoded.
    max_message_bytes: int = 8 * 1024 * 1024
    max_streams_per_device: int = 8  # 0: no cap
    rate_readings_per_s: float = 0.0  # per device; 0: no rate limit
    burst_readings: int = 0  # bucket size; 0: one second of rate
    max_delay_s: float = 5.0  # the most debt a device may run up, in seconds of its rate
    reject_after_s: float = 30.0  # held back this long without a break: batches are refused


@dataclass
class Verdict:
    """Which readings of a batch are accepted, and the Ack's rejections."""

    accepted: np.ndarray  # bool mask, one entry per reading
    rejections: list[pb.Rejection]

    @property
    def n_accepted(self) -> int:
        return int(self.accepted.sum())


def _reject_all(n: int, reason: int, detail: str) -> Verdict:
    rejected = [pb.Rejection(index=i, reason=reason, detail=detail) for i in range(n)]
    return Verdict(np.zeros(n, dtype=bool), rejected)


def validate(batch: pb.ReadingBatch, now_ms: int, limits: Limits) -> Verdict:
    n = len(batch.values)
    if not DEVICE_ID.match(batch.device_id):
        return _reject_all(n, pb.BAD_DEVICE_ID, f"device_id {batch.device_id[:80]!r} must match "
                                                 f"{DEVICE_ID.pattern}")
    if len(batch.time_offset_ms) != n or len(batch.metric_index) != n:
        return _reject_all(n, pb.MALFORMED_BATCH,
                           f"column lengths differ: values {n}, time_offset_ms "
                           f"{len(batch.time_offset_ms)}, metric_index {len(batch.metric_index)}")

    reason = np.zeros(n, dtype=np.int32)  # 0 = accepted; the first failing check wins
    detail = np.zeros(n, dtype=np.int32)  # index into details
    details: list[str] = []

    def mark(mask: np.ndarray, code: int, text: str) -> None:
        hit = mask & (reason == 0)
        if hit.any():
            reason[hit] = code
            detail[hit] = len(details)
            details.append(text)

    values = np.array(batch.values, dtype=np.float64)
    mark(~np.isfinite(values), pb.NON_FINITE_VALUE, "value must be finite (not NaN or infinite)")

    times = batch.base_time_ms + np.array(batch.time_offset_ms, dtype=np.int64)
    mark(times < now_ms - limits.max_past_ms, pb.TIME_OUT_OF_RANGE,
         f"time older than {limits.max_past_ms // 1000} s before server time")
    mark(times > now_ms + limits.max_future_ms, pb.TIME_OUT_OF_RANGE,
         f"time more than {limits.max_future_ms // 1000} s after server time")

    index = np.array(batch.metric_index, dtype=np.int64)
    names = list(batch.metric_names)
    mark(index >= len(names), pb.UNKNOWN_METRIC,
         f"metric_index outside metric_names (which has {len(names)} entries)")
    for i, name in enumerate(names):  # per distinct name, not per reading
        if not METRIC_NAME.match(name):
            mark(index == i, pb.BAD_METRIC_NAME, f"metric name {name[:80]!r} must match {METRIC_NAME.pattern}")
        elif limits.metrics is not None and name not in limits.metrics:
            mark(index == i, pb.UNKNOWN_METRIC, f"metric {name!r} is not registered")

    if n > limits.max_readings:
        over = np.zeros(n, dtype=bool)
        over[limits.max_readings:] = True
        mark(over, pb.BATCH_TOO_LARGE, f"batch holds more than {limits.max_readings} readings")

    bad = np.flatnonzero(reason)
    rejections = [pb.Rejection(index=int(i), reason=int(reason[i]), detail=details[detail[i]]) for i in bad]
    return Verdict(reason == 0, rejections)


def accepted_only(batch: pb.ReadingBatch, verdict: Verdict) -> pb.ReadingBatch:
    """The batch with its rejected readings left out (columns filtered whole, no per-reading work)."""
    keep = verdict.accepted
    out = pb.ReadingBatch(device_id=batch.device_id, seq=batch.seq, base_time_ms=batch.base_time_ms,
                          metric_names=batch.metric_names, received_ms=batch.received_ms)
    if len(batch.time_offset_ms) == len(keep):
        out.time_offset_ms.extend(np.array(batch.time_offset_ms, dtype=np.int64)[keep].tolist())
        out.metric_index.extend(np.array(batch.metric_index, dtype=np.int64)[keep].tolist())
        out.values.extend(np.array(batch.values, dtype=np.float64)[keep].tolist())
    return out
