"""The simulator's labelled anomalies (iotstream.client.simulate), the event-level scoring of
bench/detection.py,
and false alarms on normal real-sensor signals (iotstream.client.signals) with the shipped defaults."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from iotstream.client.signals import DAY_MS, NORMAL, RESOLUTION, normal_signal, quantize
from iotstream.client.simulate import KINDS, METRICS, PROFILES, SEGMENTS, device_signal
from iotstream.ext import Episode

END = 1_800_000_000_000


def load_bench():
    path = Path(__file__).resolve().parents[2] / "bench" / "detection.py"
    spec = importlib.util.spec_from_file_location("bench_detection", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def series(d, m):
    sel = d.metric == m
    return d.time_ms[sel], d.values[sel]


def test_spikes_only_by_default():
    d = device_signal("d", 3000, END, 1000, 0.01, np.random.default_rng(0))
    assert len(d.values) == 3000 and len(d.spikes) == 30
    assert [(a.kind, a.metric, a.start_ms) for a in d.anomalies] == [
        ("spike", int(d.metric[i]), int(d.time_ms[i])) for i in d.spikes
    ]
    again = device_signal("d", 3000, END, 1000, 0.01, np.random.default_rng(0), kinds=("spike",))
    np.testing.assert_array_equal(again.values, d.values)
    with pytest.raises(ValueError, match="unknown anomaly kind"):
        device_signal("d", 10, END, 1000, 0.01, np.random.default_rng(0), kinds=("spike", "gremlin"))


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "spike"])
def test_segments_are_labelled_and_shaped(kind):
    rng = np.random.default_rng(KINDS.index(kind))
    clean = device_signal("d", 9000, END, 1000, 0.0, np.random.default_rng(7))
    d = device_signal("d", 9000, END, 1000, 0.0005, rng, kinds=(kind,))
    labels = d.anomalies
    assert labels and all(a.kind == kind for a in labels) and len(d.spikes) == 0
    (short, long), (small, large) = SEGMENTS[kind]
    for a in labels:
        sd = PROFILES[a.metric][2]
        points = (a.end_ms - a.start_ms) // 1000 + 1
        assert short <= points <= long
        t, v = series(d, a.metric)
        inside = (t >= a.start_ms) & (t <= a.end_ms)
        before = v[(t < a.start_ms) & (t >= a.start_ms - 100_000)]
        if kind == "dropout":
            assert not inside.any()
        elif kind == "stuck":
            assert np.all(v[inside] == v[np.flatnonzero(inside)[0] - 1])
        elif kind == "noise_burst":
            assert np.std(np.diff(v[inside])) > 2.5 * np.std(np.diff(before))
        elif kind == "level_shift":
            assert abs(np.mean(v[inside][:50]) - np.mean(before)) > (small - 1) * sd
        elif kind == "drift":
            assert abs(np.mean(v[inside][-30:]) - np.mean(before)) > (small - 2) * sd
    if kind == "dropout":
        assert len(d.values) == 9000 - sum((a.end_ms - a.start_ms) // 1000 + 1 for a in labels)
    else:
        assert len(d.values) == len(clean.values)
    # segments of one metric keep their distance
    for m in range(len(METRICS)):
        spans = sorted((a.start_ms, a.end_ms) for a in labels if a.metric == m)
        assert all(b[0] - a[1] > 300_000 for a, b in zip(spans, spans[1:], strict=False))


def test_mixed_kinds_keep_spike_indices_valid():
    d = device_signal("d", 9000, END, 1000, 0.001, np.random.default_rng(3), kinds=KINDS)
    kinds = {a.kind for a in d.anomalies}
    assert {"spike", "dropout"} <= kinds and len(kinds) >= 4
    spikes = {(a.metric, a.start_ms) for a in d.anomalies if a.kind == "spike"}
    assert spikes == {(int(d.metric[i]), int(d.time_ms[i])) for i in d.spikes}
    assert np.all(np.diff(d.time_ms) >= 0)


def test_event_level_scoring():
    bench = load_bench()

    class Data:
        def __init__(self, anomalies):
            self.anomalies = anomalies

    from iotstream.client.simulate import Anomaly

    data = [
        Data(
            [
                Anomaly("stuck", 0, 1_000, 5_000),
                Anomaly("stuck", 1, 1_000, 5_000),
                Anomaly("stuck", 2, 500_000, 600_000),
            ]
        )
    ]
    eps = [
        Episode(0, "stuck", 3_000, 9_000, 5, 0.6),
        Episode(0, "zscore", 4_000, 4_000, 1, 0.7),  # one hit
        Episode(
            1, "zscore", 5_000 + bench.GRACE * bench.INTERVAL_MS + 1, 70_000, 1, 0.6
        ),  # after the grace: false
        Episode(2, "zscore", 100, 200, 1, 0.6),
    ]  # before: false; window 3 missed
    r = bench.score(data, eps, ("stuck",))["stuck"]
    assert (r["labelled"], r["detected"], r["false_alarms"]) == (3, 1, 2)
    assert r["precision"] == pytest.approx(1 / 3, abs=1e-4) and r["recall"] == pytest.approx(1 / 3, abs=1e-4)
    assert r["median_delay_s"] == 2.0 and r["detected_by"] == {"stuck": 1}


@pytest.mark.parametrize("kind", ["level_shift", "drift", "noise_burst"])
def test_detection_quality_does_not_regress(kind):
    """A small fleet through the bench's pipeline: the kinds the z-scores alone miss are caught."""
    bench = load_bench()
    data = bench.fleet((kind,), 7, 4, 6000)
    episodes, _ = bench.detect(data)
    r = bench.score(data, episodes, (kind,))[kind]
    assert r["labelled"] >= 8 and r["recall"] >= 0.85 and r["precision"] >= 0.85, r


# ----------------------------------------------------------------------
# False alarms on normal real-sensor signals (issue 11's table, counters, daily cycles)


@pytest.mark.parametrize("interval_ms", [1_000, 10_000, 60_000])
@pytest.mark.parametrize("kind", sorted(NORMAL))
def test_normal_signals_stay_quiet(kind, interval_ms):
    """At most one false episode per key-day with the shipped defaults."""
    keys = 4
    opened, _ = load_bench().normal_episodes(kind, interval_ms, keys, seed=sorted(NORMAL).index(kind))
    assert len(opened) <= keys, [(e.slot, e.kind, e.start_ms) for e in opened]


def test_normal_generator_is_what_it_says():
    rng = np.random.default_rng(0)
    t, v = normal_signal("temperature_q", 1000, 10_000, rng)
    assert np.array_equal(t, np.arange(1000) * 10_000) and np.allclose(v * 10, np.round(v * 10))
    _, v = normal_signal("door", DAY_MS // 1000, 1000, rng)
    assert set(np.unique(v)) == {0.0, 1.0} and 0.002 < v.mean() < 0.03
    _, v = normal_signal("counter", 5000, 1000, rng)
    assert (np.diff(v) < 0).sum() <= 1 and np.all(v == np.round(v))
    _, v = normal_signal("humidity_q", 1000, 1000, rng)
    assert np.all(v == np.round(v))
    with pytest.raises(ValueError, match="unknown normal signal kind"):
        normal_signal("gremlin", 10, 1000, rng)


def test_quantized_simulator_fleet_is_quiet():
    """``simulate --quantize``'s rounding: readings on the resolution grid, and the kinds the detectors
    judged on full-precision noise still come without false alarms on an anomaly-free quantized fleet."""
    bench = load_bench()
    rng = np.random.default_rng(11)
    data = [quantize(device_signal(f"q-{d}", 9000, END, 1000, 0.0, rng)) for d in range(6)]
    for d in data:
        for m, name in enumerate(METRICS):
            v = d.values[d.metric == m] / RESOLUTION[name]
            assert np.allclose(v, np.round(v))
    episodes, _ = bench.detect(data)
    assert episodes == []
