"""Bounded ingest work: identifiers matched whole, the name-table rule, per-name verdicts against a
per-reading oracle, the metrics-per-device book, and the per-device caps on Send calls and bytes in flight."""

import asyncio
import math
import re

import numpy as np
import pytest

from iotstream.ingest import DeviceLimiter
from iotstream.ingest.limits import MetricBook, TooManySends
from iotstream.ingest.validate import DEVICE_ID, METRIC_NAME, Limits, validate
from iotstream.v1 import ingest_pb2 as pb

NOW = 1_800_000_000_000


def batch(values, index, names, device="dev-1", offsets=None):
    n = len(values)
    return pb.ReadingBatch(
        device_id=device,
        seq=1,
        base_time_ms=NOW,
        time_offset_ms=offsets if offsets is not None else [0] * n,
        metric_names=names,
        metric_index=index,
        values=values,
    )


def reasons(verdict):
    return {r.index: r.reason for r in verdict.rejections}


@pytest.mark.parametrize("device", ["sim-00001\n", "sim-00001\r\n", "\nsim-00001"])
def test_look_alike_device_ids_are_rejected(device):
    v = validate(batch([1.0], [0], ["temp"], device=device), NOW, Limits())
    assert reasons(v) == {0: pb.BAD_DEVICE_ID}


def test_metric_name_with_trailing_newline_is_rejected():
    v = validate(batch([1.0, 2.0], [0, 1], ["temp\n", "temp"]), NOW, Limits())
    assert reasons(v) == {0: pb.BAD_METRIC_NAME}


def test_more_names_than_readings_rejects_the_batch():
    limits = Limits(names_allowance=4)
    ok = validate(batch([1.0], [0], ["a", "b", "c", "d"]), NOW, limits)  # a whole name table: allowed
    assert ok.n_accepted == 1
    v = validate(batch([1.0] * 5, [0] * 5, [f"m{i}" for i in range(6)]), NOW, limits)
    assert v.n_accepted == 0 and set(reasons(v).values()) == {pb.TOO_MANY_METRIC_NAMES}
    assert "6 entries for 5 readings" in v.rejections[0].detail


def oracle(values, offsets, index, names, limits):
    """Reason per reading, checked one reading at a time in the documented order (first failing wins)."""
    out = []
    for i, (v, o, k) in enumerate(zip(values, offsets, index, strict=True)):
        t = NOW + o
        if i >= limits.max_readings:
            out.append(pb.BATCH_TOO_LARGE)
        elif not math.isfinite(v):
            out.append(pb.NON_FINITE_VALUE)
        elif t < NOW - limits.max_past_ms or t > NOW + limits.max_future_ms:
            out.append(pb.TIME_OUT_OF_RANGE)
        elif k >= len(names):
            out.append(pb.UNKNOWN_METRIC)
        elif not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", names[k]):
            out.append(pb.BAD_METRIC_NAME)
        elif limits.metrics is not None and names[k] not in limits.metrics:
            out.append(pb.UNKNOWN_METRIC)
        else:
            out.append(0)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_per_name_verdicts_match_a_per_reading_oracle(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    pool = ["temp", "hum", "9bad", "has space", "x" * 70, "ok.name", "bad\n", "", "registered_not"]
    names = [pool[i] for i in rng.integers(0, len(pool), int(rng.integers(1, 12)))]
    values = rng.choice([1.0, 2.5, math.nan, math.inf], n, p=[0.7, 0.2, 0.05, 0.05]).tolist()
    offsets = rng.choice([0, -(10**11), 10**9, 5], n, p=[0.8, 0.05, 0.05, 0.1]).tolist()
    index = rng.integers(0, len(names) + 2, n).tolist()
    limits = Limits(
        max_readings=int(rng.integers(1, 400)),
        metrics=frozenset({"temp", "hum", "ok.name"}) if seed % 2 else None,
    )
    v = validate(batch(values, index, names, offsets=offsets), NOW, limits)
    want = oracle(values, offsets, index, names, limits)
    assert [reasons(v).get(i, 0) for i in range(n)] == want
    assert v.accepted.tolist() == [w == 0 for w in want]
    for r in v.rejections:  # each detail names the culprit
        if r.reason == pb.BAD_METRIC_NAME:
            assert repr(names[index[r.index]][:80]) in r.detail


def test_metrics_per_device_are_capped():
    book = MetricBook(max_metrics=3, idle_s=60.0)
    limits = Limits()
    v = validate(batch([1.0] * 5, [0, 1, 2, 3, 4], ["a", "b", "c", "d", "e"]), NOW, limits, book.admit)
    assert reasons(v) == {3: pb.TOO_MANY_METRICS, 4: pb.TOO_MANY_METRICS}
    assert "3 distinct metrics" in v.rejections[0].detail
    again = validate(batch([1.0, 1.0], [0, 1], ["c", "d"]), NOW, limits, book.admit)  # known: passes
    assert reasons(again) == {1: pb.TOO_MANY_METRICS}
    other = validate(batch([1.0], [0], ["d"], device="dev-2"), NOW, limits, book.admit)
    assert other.n_accepted == 1  # per device
    # A name whose readings are all bad for another reason takes no place in the book.
    validate(batch([math.nan], [0], ["z"], device="dev-3"), NOW, limits, book.admit)
    assert "z" not in book.devices["dev-3"][0]


def test_idle_devices_leave_the_metric_book():
    now = [0.0]
    book = MetricBook(max_metrics=2, idle_s=10.0, clock=lambda: now[0])
    book.SWEEP_EVERY = 2
    book.admit("old", ["a", "b"])
    now[0] = 11.0
    book.admit("new", ["a"])  # the second call sweeps
    assert set(book.devices) == {"new"}
    assert book.admit("old", ["c"]) == ([], "")  # back cold, with a fresh allowance


def test_identifier_patterns_have_no_anchors_to_slip_past():
    assert DEVICE_ID.fullmatch("sim-00001") and not DEVICE_ID.fullmatch("sim-00001\n")
    assert METRIC_NAME.fullmatch("temp") and not METRIC_NAME.fullmatch("temp\n")


def test_concurrent_sends_per_device_are_capped():
    lim = DeviceLimiter(max_sends=2)
    lim.open_send("d")
    lim.open_send("d")
    with pytest.raises(TooManySends, match="2 Send calls"):
        lim.open_send("d")
    lim.open_send("e")
    lim.close_send("d")
    lim.open_send("d")
    for dev in ("d", "d", "e"):
        lim.close_send(dev)
    assert lim.sends == {}


def test_bytes_in_flight_hold_a_device_back_until_acks_free_them():
    async def scenario():
        lim = DeviceLimiter(max_inflight_bytes=100)
        await lim.hold_bytes("d", 60)
        await lim.hold_bytes("other", 90)  # other devices are not held
        waiting = asyncio.create_task(lim.hold_bytes("d", 60))
        await asyncio.sleep(0)  # one turn of the loop: the task now waits for room
        assert not waiting.done()  # 120 > 100
        lim.free_bytes("d", 60)
        await asyncio.wait_for(waiting, 1)
        assert lim.inflight["d"].nbytes == 60
        lone = DeviceLimiter(max_inflight_bytes=100)
        await asyncio.wait_for(lone.hold_bytes("d", 500), 1)  # alone, an oversized batch still passes
        lone.free_bytes("d", 500)
        assert lone.inflight == {}

    asyncio.run(scenario())


def test_only_the_first_rejections_carry_details():
    from iotstream.ingest.validate import DETAILED_REJECTIONS

    n = DETAILED_REJECTIONS + 500
    v = validate(batch([math.nan] * n, [0] * n, ["temp"]), NOW, Limits(max_readings=n))
    assert len(v.rejections) == n and v.counts == {"NON_FINITE_VALUE": n}
    assert all(r.detail for r in v.rejections[:DETAILED_REJECTIONS])
    assert not any(r.detail for r in v.rejections[DETAILED_REJECTIONS:])
    assert [r.index for r in v.rejections] == list(range(n))
