"""Bounded per-key state: idle keys are evicted and come back cold, the live keys go on exactly as if the
evicted ones had never been there, a full partition stores readings unscored, snapshots still round-trip."""

import numpy as np

from iotstream.processor import PartitionState, Processor
from iotstream.v1 import ingest_pb2 as pb

HOUR = 3_600_000


def feed(state: PartitionState, keys, now, seed, n=40):
    """n readings for each key, through assign (as the processor does); returns the kernel's outputs."""
    rng = np.random.default_rng(seed)
    slots, _ = state.assign(keys, now)
    lut = np.repeat(slots, n)
    ts = np.tile(np.arange(n, dtype=np.int64) * 1000 + now, len(keys))
    return state.stats.update(lut, ts, rng.normal(size=len(lut)))


def test_idle_keys_are_evicted_and_the_rest_continue_exactly():
    t0 = 1_800_000_000_000
    a = PartitionState(idle_ms=HOUR)
    oracle = PartitionState(idle_ms=HOUR)  # never saw the idle key
    feed(a, [("d1", "temp"), ("d2", "hum"), ("gone", "x")], t0, seed=1)
    feed(oracle, [("d1", "temp"), ("d2", "hum")], t0, seed=1)
    a.is_resend("gone", 1, 5)
    a.is_resend("d1", 1, 6)
    later = t0 + 2 * HOUR
    # d1 and d2 seen again within the hour, `gone` not: it is dropped (with its device's resend window).
    a.assign([("d1", "temp"), ("d2", "hum")], later - HOUR // 2)
    assert a.evict_idle(later) == 1 and a.evicted == 1
    assert set(a.slots) == {("d1", "temp"), ("d2", "hum")} and a.stats.nslots == 2
    assert "gone" not in a.recent and a.is_resend("d1", 1, 6)
    for x, y in zip(
        feed(a, [("d1", "temp"), ("d2", "hum")], later, seed=2),
        feed(oracle, [("d1", "temp"), ("d2", "hum")], later, seed=2),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)
    (slot,) = a.assign([("gone", "x")], later)[0]  # back, cold
    assert slot == 2 and a.stats.count(int(slot)) == 0


def test_a_timed_sweep_waits_for_enough_idle_keys():
    t0 = 1_800_000_000_000
    s = PartitionState(idle_ms=HOUR)
    keys = [(f"d{i}", "m") for i in range(16)]
    s.assign(keys, t0)
    s.assign(keys[1:], t0 + HOUR)
    assert s.evict_idle(t0 + HOUR + 1) == 0  # 1 of 16 idle: under the 1/8 share, not worth a copy
    assert s.evict_idle(t0 + HOUR + 1, at_cap=True) == 1


def test_a_full_partition_evicts_idle_keys_first_then_stores_unscored():
    t0 = 1_800_000_000_000
    s = PartitionState(max_keys=2, idle_ms=HOUR)
    slots, new = s.assign([("a", "m"), ("b", "m"), ("c", "m")], t0)
    assert slots.tolist() == [0, 1, -1] and len(new) == 2
    slots, _ = s.assign([("b", "m"), ("c", "m")], t0 + 2 * HOUR)  # `a` idle: evicted to make room
    assert slots.tolist() == [0, 1] and ("a", "m") not in s.slots


def test_a_full_partition_compacts_for_room_at_most_once_a_minute():
    t0 = 1_800_000_000_000
    s = PartitionState(max_keys=1, idle_ms=1000)
    assert s.assign([("a", "m")], t0)[0].tolist() == [0]
    assert s.assign([("b", "m")], t0 + 2000)[0].tolist() == [0]  # `a` idle: compacted away
    assert s.assign([("c", "m")], t0 + 4000)[0].tolist() == [-1]  # `b` idle too, but 2 s after the last one
    assert s.assign([("c", "m")], t0 + 2000 + 60_000)[0].tolist() == [0]
    assert s.evicted == 2 and set(s.slots) == {("c", "m")}


def payload(device, metric, values, t0):
    batch = pb.ReadingBatch(
        device_id=device,
        seq=1,
        base_time_ms=t0,
        time_offset_ms=range(len(values)),
        metric_names=[metric],
        metric_index=[0] * len(values),
        values=values,
    )
    return batch.SerializeToString()


def test_processor_stores_readings_of_keys_over_the_limit_unscored():
    t0 = 1_800_000_000_000
    proc = Processor(store=None, max_keys=1)
    spike = [1.0, 1.1, 0.9, 1.0] * 10 + [500.0]
    prepared = proc.prepare([payload("in", "m", spike, t0), payload("out", "m", spike, t0)])
    assert prepared.readings.num_rows == 2 * len(spike)  # every reading is stored
    assert set(prepared.anomalies.column("device_id").to_pylist()) == {"in"}  # only the scored key flags
    assert proc.state(0).unscored == len(spike)


def test_snapshot_after_eviction_round_trips():
    t0 = 1_800_000_000_000
    a = PartitionState(idle_ms=HOUR)
    feed(a, [("x", "m"), ("y", "m")], t0, seed=3)
    a.assign([("y", "m")], t0 + 2 * HOUR)
    a.evict_idle(t0 + 2 * HOUR, at_cap=True)
    b = PartitionState.from_bytes(a.to_bytes())
    assert b.slots == a.slots == {("y", "m"): 0}
    later = t0 + 3 * HOUR
    for x, y in zip(feed(a, [("y", "m")], later, seed=4), feed(b, [("y", "m")], later, seed=4), strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_flood_of_distinct_keys_keeps_state_bounded():
    """100,000 new keys against a cap of 1,000: the state never holds more than the cap (so its memory is
    bounded by it), every reading is still stored, and the ones without room are counted."""
    t0 = 1_800_000_000_000
    proc = Processor(store=None, max_keys=1000)
    metrics = [f"m{j}" for j in range(100)]
    stored = 0
    for chunk in range(10):
        payloads = [
            pb.ReadingBatch(
                device_id=f"flood-{chunk}-{d}",
                seq=1,
                base_time_ms=t0,
                time_offset_ms=[0] * 100,
                metric_names=metrics,
                metric_index=range(100),
                values=[1.0] * 100,
            ).SerializeToString()
            for d in range(100)
        ]
        stored += proc.prepare(payloads).readings.num_rows
        state = proc.state(0)
        assert len(state.slots) <= 1000 and state.stats.nslots <= 1024
    assert stored == 100_000 and state.unscored == 99_000
