"""Validation rules on whole batches: each reason, and the good neighbours of a bad reading."""

import math

import numpy as np
import pytest

from iotstream.ingest.validate import Limits, accepted_only, validate
from iotstream.v1 import ingest_pb2 as pb

NOW = 1_800_000_000_000


def batch(values, offsets=None, index=None, names=("temp",), device="dev-1", base=NOW):
    n = len(values)
    return pb.ReadingBatch(
        device_id=device,
        seq=7,
        base_time_ms=base,
        time_offset_ms=offsets if offsets is not None else [0] * n,
        metric_names=names,
        metric_index=index if index is not None else [0] * n,
        values=values,
    )


def reasons(verdict):
    return {r.index: r.reason for r in verdict.rejections}


def test_all_good():
    v = validate(batch([1.0, 2.0, 3.0]), NOW, Limits())
    assert v.n_accepted == 3 and v.rejections == []


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_rejected_neighbours_kept(bad):
    v = validate(batch([1.0, bad, 3.0]), NOW, Limits())
    assert reasons(v) == {1: pb.NON_FINITE_VALUE}
    assert v.accepted.tolist() == [True, False, True]


def test_time_window():
    limits = Limits(max_past_ms=1000, max_future_ms=500)
    v = validate(batch([1.0, 2.0, 3.0, 4.0], offsets=[-1001, -1000, 500, 501]), NOW, limits)
    assert reasons(v) == {0: pb.TIME_OUT_OF_RANGE, 3: pb.TIME_OUT_OF_RANGE}
    assert "older" in v.rejections[0].detail and "after" in v.rejections[1].detail


def test_metric_names_and_indexes():
    v = validate(
        batch([1.0, 2.0, 3.0, 4.0], index=[0, 1, 2, 5], names=["ok", "9bad", "has space"]), NOW, Limits()
    )
    assert reasons(v) == {1: pb.BAD_METRIC_NAME, 2: pb.BAD_METRIC_NAME, 3: pb.UNKNOWN_METRIC}
    assert "9bad" in v.rejections[0].detail


def test_registered_metrics_only():
    v = validate(
        batch([1.0, 2.0], index=[0, 1], names=["temp", "other"]), NOW, Limits(metrics=frozenset({"temp"}))
    )
    assert reasons(v) == {1: pb.UNKNOWN_METRIC}


def test_batch_cap_rejects_the_tail():
    v = validate(batch([1.0] * 5), NOW, Limits(max_readings=3))
    assert reasons(v) == {3: pb.BATCH_TOO_LARGE, 4: pb.BATCH_TOO_LARGE}


def test_first_failing_check_wins():
    v = validate(batch([math.nan], offsets=[-(10**12)]), NOW, Limits())
    assert reasons(v) == {0: pb.NON_FINITE_VALUE}


@pytest.mark.parametrize("device", ["", " lead", "x" * 200, "a'b", "d\x00"])
def test_bad_device_rejects_all(device):
    v = validate(batch([1.0, 2.0], device=device), NOW, Limits())
    assert reasons(v) == {0: pb.BAD_DEVICE_ID, 1: pb.BAD_DEVICE_ID}


def test_column_mismatch_rejects_all():
    b = batch([1.0, 2.0], offsets=[0])
    v = validate(b, NOW, Limits())
    assert set(reasons(v).values()) == {pb.MALFORMED_BATCH} and v.n_accepted == 0


def test_accepted_only_keeps_columns_aligned():
    b = batch([1.0, math.nan, 3.0, 4.0], offsets=[1, 2, 3, 4], index=[0, 1, 0, 1], names=["a", "b"])
    out = accepted_only(b, validate(b, NOW, Limits()))
    assert list(out.values) == [1.0, 3.0, 4.0]
    assert list(out.time_offset_ms) == [1, 3, 4]
    assert list(out.metric_index) == [0, 0, 1]
    assert (out.device_id, out.seq, list(out.metric_names)) == ("dev-1", 7, ["a", "b"])


def test_empty_batch():
    v = validate(batch([]), NOW, Limits())
    assert v.n_accepted == 0 and v.rejections == [] and isinstance(v.accepted, np.ndarray)


def test_small_batch_path_gives_the_column_path_verdict():
    """validate() takes a per-reading loop for small all-good batches; on random small batches, good and
    bad, its verdict and what the metric book records equal the column path's alone."""
    from iotstream.ingest.limits import MetricBook
    from iotstream.ingest.validate import SMALL_BATCH, validate_columns

    rng = np.random.default_rng(7)
    limits = Limits(metrics=frozenset({"temp", "hum", "co2"}), max_readings=20)
    pool = ["temp", "hum", "co2", "bad name", "unknown"]
    specials = [math.nan, math.inf, 1.0, -2.5, 0.0]
    fast_book, column_book = MetricBook(2, 3600.0), MetricBook(2, 3600.0)  # a third metric is refused
    good, capped = 0, 0
    for i in range(2000):
        n = int(rng.integers(0, SMALL_BATCH + 1))
        names = list(rng.choice(pool, size=int(rng.integers(0, 4)), replace=False))
        clean = rng.random() < 0.5  # half the batches have nothing wrong but, sometimes, the metric cap
        names = [x for x in names if x in limits.metrics] if clean else names
        values = rng.normal(size=n).tolist() if clean else rng.choice(specials, size=n).tolist()
        edges = [
            0,
            limits.max_future_ms,
            limits.max_future_ms + 1,
            -limits.max_past_ms,
            -limits.max_past_ms - 1,
        ]
        b = batch(
            values,
            offsets=rng.choice(edges[:2] + edges[3:4] if clean else edges, size=n).tolist(),
            index=rng.integers(0, max(len(names), 1) + (0 if clean else 1), size=n).tolist(),
            names=names or ([] if n == 0 else ["temp"]),
            device=f"dev-{i % 5}" if rng.random() < 0.95 else "bad device",
        )
        fast = validate(b, NOW, limits, fast_book.admit)
        column = validate_columns(b, NOW, limits, column_book.admit)
        assert fast.accepted.tolist() == column.accepted.tolist(), b
        assert fast.rejections == column.rejections and fast.counts == column.counts, b
        good += not column.rejections
        capped += column.counts.get("TOO_MANY_METRICS", 0) > 0
    assert fast_book.devices.keys() == column_book.devices.keys()
    assert {d: e[0] for d, e in fast_book.devices.items()} == {
        d: e[0] for d, e in column_book.devices.items()
    }
    assert 200 < good < 1800 and capped  # both paths were taken, and the cap
