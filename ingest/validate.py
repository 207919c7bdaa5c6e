"""Per-reading validation of a ReadingBatch, on whole columns at once.

A bad reading is rejected with its index and reason; the rest of the batch is accepted. Batch-level
faults (bad device id, column lengths that disagree, more metric names than readings) reject every reading
of the batch.

The work is O(readings + metric names), and a batch may not carry more names than readings (beyond a small
allowance, for devices that always send their whole name table), so it is bounded by what was sent: names are
checked once each, and readings look their name's verdict up by index.
Readings past `max_readings` are rejected as BATCH_TOO_LARGE whatever else is wrong with them.

A batch of at most SMALL_BATCH readings is first checked reading by reading in plain Python: numpy costs
~25 µs a call sequence whatever the size, most of the handler's time for a one-reading message
(bench/profile/README.md section 5). Only a batch that passes every check takes that path; anything else
goes through the column path, which alone decides rejections, so the verdict is the same either way
(tests/unit/test_validate.py compares the two).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np

from iotstream.common.ids import DEVICE_ID, METRIC_NAME
from iotstream.v1 import ingest_pb2 as pb

DAY_MS = 86_400_000
# Only the first this many rejections of a batch carry their `detail` text, so an Ack stays a few bytes per
# rejected reading however many a batch has (an 8 MiB message holds ~800,000 readings).
DETAILED_REJECTIONS = 1000
SMALL_BATCH = 32  # readings; see the module docstring


@dataclass(frozen=True)
class Limits:
    max_readings: int = 10_000
    # metric_names may hold max(readings, names_allowance) entries; more reject the whole batch.
    names_allowance: int = 64
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
    max_sends_per_device: int = 8  # concurrent unary Send calls of one device; 0: no cap
    # Bytes of one device's batches read but not yet acked (all its calls); past it its streams are not
    # read until acks free room. One batch alone always passes, so this cannot deadlock.
    max_inflight_bytes_per_device: int = 16 * 1024 * 1024
    # Distinct metric names one device may send (per ingest node); readings of further names are
    # rejected as TOO_MANY_METRICS. A device idle for metrics_idle_s is forgotten.
    max_metrics_per_device: int = 1000
    metrics_idle_s: float = 3600.0
    rate_readings_per_s: float = 0.0  # per device; 0: no rate limit
    burst_readings: int = 0  # bucket size; 0: one second of rate
    max_delay_s: float = 5.0  # the most debt a device may run up, in seconds of its rate
    reject_after_s: float = 30.0  # held back this long without a break: batches are refused


@dataclass
class Verdict:
    """Which readings of a batch are accepted, and the Ack's rejections."""

    accepted: np.ndarray  # bool mask, one entry per reading
    rejections: list[pb.Rejection]
    counts: dict[str, int]  # rejected readings by reason name
    n_accepted: int = -1  # counted from `accepted` when not given

    def __post_init__(self) -> None:
        if self.n_accepted < 0:
            self.n_accepted = int(self.accepted.sum())


# The masks of small all-good batches, shared and read-only (numpy's own `ones` costs more than the check).
def _read_only(mask: np.ndarray) -> np.ndarray:
    mask.setflags(write=False)
    return mask


ALL_ACCEPTED = [_read_only(np.ones(n, dtype=bool)) for n in range(SMALL_BATCH + 1)]


def _reject_all(n: int, reason: pb.RejectReason, detail: str) -> Verdict:
    rejected = [
        pb.Rejection(index=i, reason=reason, detail=detail if i < DETAILED_REJECTIONS else "")
        for i in range(n)
    ]
    return Verdict(np.zeros(n, dtype=bool), rejected, {pb.RejectReason.Name(reason): n} if n else {})


def check_names(names, limits: Limits) -> tuple[np.ndarray, list[str]]:
    """Per name: 0 when good, else its reason; and the detail of each bad name (in name order)."""
    codes = np.zeros(len(names), dtype=np.int32)
    details = []
    for i, name in enumerate(names):
        if not METRIC_NAME.fullmatch(name):
            codes[i] = pb.BAD_METRIC_NAME
            details.append(f"metric name {name[:80]!r} must match {METRIC_NAME.pattern}")
        elif limits.metrics is not None and name not in limits.metrics:
            codes[i] = pb.UNKNOWN_METRIC
            details.append(f"metric {name!r} is not registered")
    return codes, details


# Given the device and the names its otherwise-good readings use, returns which of them it may not send
# (indexes into the list) and why; see ingest.limits.MetricBook.
Admit = Callable[[str, list[str]], tuple[list[int], str]]


def validate(batch: pb.ReadingBatch, now_ms: int, limits: Limits, admit: Admit | None = None) -> Verdict:
    n = len(batch.values)
    if n <= SMALL_BATCH and all_good(batch, now_ms, limits, admit):
        return Verdict(ALL_ACCEPTED[n], [], {}, n)
    return validate_columns(batch, now_ms, limits, admit)


def all_good(batch: pb.ReadingBatch, now_ms: int, limits: Limits, admit: Admit | None = None) -> bool:
    """Whether every reading passes every check of `validate_columns` (a loop: for small batches)."""
    n, names = len(batch.values), batch.metric_names
    if (
        n > limits.max_readings
        or len(batch.time_offset_ms) != n
        or len(batch.metric_index) != n
        or len(names) > max(n, limits.names_allowance)
        or not DEVICE_ID.fullmatch(batch.device_id)
        or not all(map(math.isfinite, batch.values))
    ):
        return False
    lo, hi = (
        now_ms - limits.max_past_ms - batch.base_time_ms,
        now_ms + limits.max_future_ms - batch.base_time_ms,
    )
    if not all(lo <= t <= hi for t in batch.time_offset_ms):
        return False
    used = sorted(set(batch.metric_index))
    if used and used[-1] >= len(names):
        return False
    used_names = [names[i] for i in used]
    known = limits.metrics
    if not all(METRIC_NAME.fullmatch(x) and (known is None or x in known) for x in used_names):
        return False
    # As validate_columns: the names the readings use are recorded whenever the batch has names.
    return admit is None or not names or not admit(batch.device_id, used_names)[0]


def validate_columns(
    batch: pb.ReadingBatch, now_ms: int, limits: Limits, admit: Admit | None = None
) -> Verdict:
    """The verdict of every reading, on whole columns (numpy)."""
    n = len(batch.values)
    if not DEVICE_ID.fullmatch(batch.device_id):
        return _reject_all(
            n, pb.BAD_DEVICE_ID, f"device_id {batch.device_id[:80]!r} must match {DEVICE_ID.pattern}"
        )
    if len(batch.time_offset_ms) != n or len(batch.metric_index) != n:
        return _reject_all(
            n,
            pb.MALFORMED_BATCH,
            f"column lengths differ: values {n}, time_offset_ms "
            f"{len(batch.time_offset_ms)}, metric_index {len(batch.metric_index)}",
        )
    if len(batch.metric_names) > max(n, limits.names_allowance):
        return _reject_all(
            n,
            pb.TOO_MANY_METRIC_NAMES,
            f"metric_names has {len(batch.metric_names)} entries for {n} readings; "
            "list only the names the readings use",
        )

    reason = np.zeros(n, dtype=np.int32)  # 0 = accepted; the first failing check wins
    detail = np.zeros(n, dtype=np.int32)  # index into details
    details: list[str] = []

    def mark(
        mask: np.ndarray, code: int | np.ndarray, text: str | list[str], which: np.ndarray | None = None
    ) -> None:
        """Reject the readings of `mask` not rejected yet; with `which`, reading i gets code[i] and
        text[which[i]] (per-name verdicts), else one code and text for all."""
        hit = mask & (reason == 0)
        if not hit.any():
            return
        if which is None:
            reason[hit], detail[hit] = code, len(details)
            details.append(cast(str, text))
        else:
            reason[hit], detail[hit] = cast(np.ndarray, code)[hit], len(details) + which[hit]
            details.extend(text)

    m = min(n, limits.max_readings)
    if n > m:
        over = np.zeros(n, dtype=bool)
        over[m:] = True
        mark(over, pb.BATCH_TOO_LARGE, f"batch holds more than {limits.max_readings} readings")

    values = np.array(batch.values, dtype=np.float64)
    mark(~np.isfinite(values), pb.NON_FINITE_VALUE, "value must be finite (not NaN or infinite)")

    times = batch.base_time_ms + np.array(batch.time_offset_ms, dtype=np.int64)
    mark(
        times < now_ms - limits.max_past_ms,
        pb.TIME_OUT_OF_RANGE,
        f"time older than {limits.max_past_ms // 1000} s before server time",
    )
    mark(
        times > now_ms + limits.max_future_ms,
        pb.TIME_OUT_OF_RANGE,
        f"time more than {limits.max_future_ms // 1000} s after server time",
    )

    names = list(batch.metric_names)
    index = np.array(batch.metric_index, dtype=np.int64)
    mark(
        index >= len(names),
        pb.UNKNOWN_METRIC,
        f"metric_index outside metric_names (which has {len(names)} entries)",
    )
    if names:
        known = np.minimum(index, len(names) - 1)  # out-of-range ones are rejected already
        codes, texts = check_names(names, limits)
        bad_rank = np.cumsum(codes != 0) - 1  # a bad name's position in `texts`
        mark(codes[known] != 0, codes[known], texts, bad_rank[known])
        if admit is not None:
            used = np.flatnonzero(np.bincount(known[reason == 0], minlength=len(names)))
            refused, why = admit(batch.device_id, [names[i] for i in used.tolist()])
            if refused:
                out = np.zeros(len(names), dtype=bool)
                out[used[refused]] = True
                mark(out[known], pb.TOO_MANY_METRICS, why)

    bad = np.flatnonzero(reason)
    head, tail = bad[:DETAILED_REJECTIONS], bad[DETAILED_REJECTIONS:]
    rejections = [
        pb.Rejection(index=i, reason=r, detail=details[d])
        for i, r, d in zip(head.tolist(), reason[head].tolist(), detail[head].tolist(), strict=True)
    ]
    rejections += [
        pb.Rejection(index=i, reason=r) for i, r in zip(tail.tolist(), reason[tail].tolist(), strict=True)
    ]
    codes, times = np.unique(reason[bad], return_counts=True)
    counts = {pb.RejectReason.Name(c): k for c, k in zip(codes.tolist(), times.tolist(), strict=True)}
    return Verdict(reason == 0, rejections, counts)


def accepted_only(batch: pb.ReadingBatch, verdict: Verdict) -> pb.ReadingBatch:
    """The batch with its rejected readings left out (columns filtered whole, no per-reading work)."""
    keep = verdict.accepted
    out = pb.ReadingBatch(
        device_id=batch.device_id,
        seq=batch.seq,
        base_time_ms=batch.base_time_ms,
        metric_names=batch.metric_names,
        received_ms=batch.received_ms,
    )
    if len(batch.time_offset_ms) == len(batch.metric_index) == len(keep):  # else nothing was accepted
        out.time_offset_ms.extend(np.array(batch.time_offset_ms, dtype=np.int64)[keep].tolist())
        out.metric_index.extend(np.array(batch.metric_index, dtype=np.int64)[keep].tolist())
        out.values.extend(np.array(batch.values, dtype=np.float64)[keep].tolist())
    return out
