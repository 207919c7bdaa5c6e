"""Time windows, the resolution floor and the change detector of iotstream.ext: oracles, crafted series,
parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotstream.ext import _common, _snapshot, load_pure, rolling
from iotstream.ext._common import FLAG_LATE, FLAG_SHIFT, FLAG_ZSCORE

pure = load_pure()  # ext/rolling.py run uncompiled: the reference
compiled = rolling if rolling.COMPILED else None
needs_cython = pytest.mark.skipif(compiled is None, reason="iotstream.ext.rolling is not compiled")
IMPLS = [pytest.param("cython", marks=needs_cython), "python"]


@pytest.fixture(params=IMPLS)
def impl(request):
    return compiled if request.param == "cython" else pure


def feed(stats, values, ts=None, slot=0):
    values = np.asarray(values, dtype=np.float64)
    ts = np.arange(len(values), dtype=np.int64) * 1000 if ts is None else np.asarray(ts, dtype=np.int64)
    return stats.update(np.full(len(values), slot, np.int64), ts, values)


# ----------------------------------------------------------------------
# Time windows against an oracle


def time_oracle(slots, ts, values, window, span):
    """Per slot: the in-order real readings among its last ``window`` that are newer than newest - span."""
    ring: dict[int, list] = {}
    newest: dict[int, int] = {}
    for s, t, v in zip(slots.tolist(), ts.tolist(), values.tolist(), strict=True):
        last = newest.get(s)
        counted = v == v and (last is None or t >= last)
        ring.setdefault(s, []).append((t, v, counted))
        ring[s] = ring[s][-window:]
        newest[s] = t if last is None or t > last else last
    return {s: [v for t, v, c in r if c and t > newest[s] - span] for s, r in ring.items()}


def irregular(seed, n=6000, keys=5, level=1e6):
    rng = np.random.default_rng(seed)
    slots = rng.integers(0, keys, n).astype(np.int64)
    ts = np.cumsum(rng.exponential(700, n)).astype(np.int64)
    late = rng.random(n) < 0.05
    ts[late] -= rng.integers(1, 20_000, late.sum())
    same = np.flatnonzero(rng.random(n) < 0.05)[1:]
    ts[same] = ts[same - 1]  # equal timestamps
    values = level + rng.standard_normal(n) * 10 ** rng.uniform(-3, 2, keys)[slots] * (level / 1e6)
    values[rng.random(n) < 0.03] = np.nan
    return slots, np.sort(ts) if seed % 2 else ts, values


@pytest.mark.parametrize(("seed", "level"), [(0, 1e6), (1, 1e6), (2, 1e12), (3, 1e-300)])
def test_time_window_matches_oracle(impl, seed, level):
    window, span = 40, 15_000
    slots, ts, values = irregular(seed, level=level)
    if level == 1e12:  # a few ulps to a few thousand ulps of spread around 1e12
        values = 1e12 + (values - 1e12) * 1e-6
    stats = impl.RollingStats(window=window, min_count=3, time_window_ms=span)
    stats.configure([4], time_window_ms=3_000)  # per-slot spans
    for a in range(0, len(values), 487):
        stats.update(slots[a : a + 487], ts[a : a + 487], values[a : a + 487])
        upto = min(a + 487, len(values))
        for key, sp in ((0, span), (1, span), (4, 3_000)):
            sel = slots[:upto] == key
            want = time_oracle(slots[:upto][sel], ts[:upto][sel], values[:upto][sel], window, sp).get(key, [])
            assert stats.tcount(key) == len(want)
            if not want:
                assert math.isnan(stats.tmean(key))
                continue
            ref = np.array(want, dtype=np.longdouble)
            ref = ref - ref[0]  # exact in long double: the spread stays resolved around 1e12
            assert stats.tmean(key) - want[0] == pytest.approx(float(ref.mean()), rel=1e-9, abs=1e-13 * level)
            if len(want) > 1:
                assert stats.tvar(key) == pytest.approx(float(ref.var(ddof=1)), rel=1e-7, abs=1e-320)
            else:
                assert math.isnan(stats.tvar(key))


def test_time_window_off_and_back_on(impl):
    stats = impl.RollingStats(window=8, min_count=2, time_window_ms=5_000)
    feed(stats, [1.0, 2.0, 3.0, 4.0])
    assert stats.tcount(0) == 4 and stats.tmean(0) == 2.5
    stats.configure([0], time_window_ms=0)
    feed(stats, [5.0], ts=[4000])
    assert stats.tcount(0) == 0 and math.isnan(stats.tmean(0))
    stats.configure([0], time_window_ms=1_500)
    feed(stats, [6.0, 7.0, 9.0], ts=[5000, 6000, 7000])
    # the window restarts when switched back on: 6 expired (ts <= 7000 - 1500), 7 and 9 remain
    assert stats.tcount(0) == 2 and stats.tmean(0) == 8.0 and stats.tvar(0) == pytest.approx(2.0, rel=1e-14)
    # a late reading is kept in the count window but not in the time window
    _, _, flags = feed(stats, [100.0], ts=[6500])
    assert flags[0] & FLAG_LATE and stats.tcount(0) == 2 and stats.count(0) == 8


def test_time_ring_allocated_on_first_use(impl):
    stats = impl.RollingStats(window=8, min_count=2)
    feed(stats, [1.0, 2.0, 3.0])
    assert "tsring" not in _snapshot.load(stats.to_bytes(), "RollingStats")[2]
    stats.configure([1], time_window_ms=2_000)
    feed(stats, [1.0, 2.0, 3.0], slot=1)
    back = impl.RollingStats.from_bytes(stats.to_bytes())
    assert _snapshot.load(back.to_bytes(), "RollingStats")[2]["tsring"].shape == (back.nslots, 8)
    assert back.tcount(1) == 2 and back.tcount(0) == 0 and back.count(0) == 3


time_stream = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.integers(-3000, 4000),
        st.one_of(st.floats(-1e3, 1e3), st.just(np.nan), st.just(5.0)),
    ),
    min_size=1,
    max_size=150,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=time_stream, window=st.integers(2, 9), span=st.integers(1, 9000))
def test_property_time_window(stream, window, span):
    slots = np.array([s for s, _, _ in stream], dtype=np.int64)
    ts = np.cumsum([d for _, d, _ in stream]).astype(np.int64)
    values = np.array([v for _, _, v in stream], dtype=np.float64)
    stats = pure.RollingStats(window=window, min_count=2, capacity=1, time_window_ms=span)
    stats.update(slots, ts, values)
    for key, want in time_oracle(slots, ts, values, window, span).items():
        assert stats.tcount(key) == len(want)
        if want:
            exact = math.fsum(want) / len(want)
            assert stats.tmean(key) == pytest.approx(exact, rel=1e-9, abs=1e-9)
        if len(want) > 1:
            m = math.fsum(want) / len(want)
            assert stats.tvar(key) == pytest.approx(
                math.fsum((v - m) ** 2 for v in want) / (len(want) - 1), rel=1e-7, abs=1e-7
            )


# ----------------------------------------------------------------------
# Change at onset on crafted series


def noise(n, seed=0, sd=1.0, level=20.0):
    return level + sd * np.random.default_rng(seed).standard_normal(n)


def test_stationary_noise_is_quiet(impl):
    stats = impl.RollingStats(window=100, min_count=20)
    _, score, flags = feed(stats, noise(20_000, seed=1))
    assert not (flags & FLAG_SHIFT).any()
    assert 0.0 <= stats.cusum(0) < 10.0 and score.max() < 0.5


def test_level_shift_below_the_z_threshold(impl):
    """3 sd: z never reaches 6; the change is reported once, at its onset, and the detector re-arms."""
    x = noise(6000, seed=2)
    x[3000:] += 3.0
    stats = impl.RollingStats(window=100, min_count=20, robust_threshold=math.inf)
    _, score, flags = feed(stats, x)
    shift = np.flatnonzero(flags & FLAG_SHIFT)
    assert not (flags & FLAG_ZSCORE).any()
    assert len(shift) == 1 and 3000 <= shift[0] < 3010 and score[shift[0]] > np.quantile(score[:3000], 0.999)
    assert stats.cusum(0) < 10.0


def test_slow_drift(impl):
    x = noise(6000, seed=3)
    x[3000:3500] += np.linspace(0, 8, 500)
    x[3500:] += 8
    stats = impl.RollingStats(window=100, min_count=20)
    _, _, flags = feed(stats, x)
    assert not (flags[:3000] & (FLAG_SHIFT | FLAG_ZSCORE)).any() and not (flags[3000:] & FLAG_ZSCORE).any()
    shift = np.flatnonzero(flags & FLAG_SHIFT)
    assert 3050 < shift[0] < 3300  # once the lag behind the drift is a few sd
    assert len(shift) <= 6 and not (flags[3700:] & FLAG_SHIFT).any()  # events, not a state


def wander(n, seed):
    """A sensor that wanders: AR(1) components at 10, 100 and 1,000 readings and heavy-tailed noise."""
    rng = np.random.default_rng(seed)
    x = 20 + 0.5 * rng.standard_t(3, n)
    for rho, sd in ((0.9, 0.5), (0.99, 0.3), (0.999, 0.1)):
        e = sd * rng.standard_normal(n)
        a = np.zeros(n)
        for i in range(1, n):
            a[i] = rho * a[i - 1] + e[i]
        x += a
    return x


def test_wandering_sensor_is_mostly_not_a_change(monkeypatch):
    """The lag-1 correction underestimates long-memory wander, so the CUSUM alone fires hundreds of times;
    requiring the residuals' short mean to leave its usual range (SMEAN_SD of its learnt sd) removes most."""
    xs = [wander(20_000, seed) for seed in range(3)]
    counts = []
    for sd2 in (pure.SMEAN_SD2, 0.0):  # 0: the short-mean condition always holds (the CUSUM alone)
        monkeypatch.setattr(pure, "SMEAN_SD2", sd2)
        counts.append(sum(int((feed(pure.RollingStats(), x)[2] & FLAG_SHIFT).sum()) for x in xs))
    assert counts[1] > 1000 and counts[0] < counts[1] / 5, counts


def test_spikes_and_noise_burst(impl):
    """Single spikes are clipped (the z-scores' business, as are bursts of noise): no change reported."""
    x = noise(5000, seed=4)
    x[500:2000:250] += 30.0
    x[3000:3100] = 20 + 5 * np.random.default_rng(5).standard_normal(100)
    stats = impl.RollingStats(window=100, min_count=20)
    _, _, flags = feed(stats, x)
    assert (flags[500:2000:250] & FLAG_ZSCORE).all() and not (flags[:3000] & FLAG_SHIFT).any()
    assert (flags[3000:3100] & FLAG_ZSCORE).any() and not (flags[3300:] & FLAG_SHIFT).any()


def test_counter_increments(impl):
    """A counter (Poisson pulses, wrapping) is quiet, resets included; a change of its rate is reported."""
    rng = np.random.default_rng(6)
    inc = rng.poisson(2.0, 8000)
    inc[6000:] = rng.poisson(8.0, 2000)
    x = (np.cumsum(inc) % 5000).astype(np.float64)
    stats = impl.RollingStats(window=100, min_count=20)
    z, _, flags = feed(stats, x)
    assert stats.kind(0) == "counter" and np.isnan(z[200:]).all()
    assert (np.diff(x[:6000]) < 0).sum() >= 2 and not (flags[:6000] & 63).any()
    shift = np.flatnonzero(flags & FLAG_SHIFT)
    assert len(shift) >= 1 and 6000 <= shift[0] < 6010


def test_quantized_signals_learn_their_resolution(impl):
    """Quantized readings: the resolution is the quantum (numpy: the smallest non-zero step), and a
    normal quantized signal raises nothing although its window often has an sd far below one step."""
    rng = np.random.default_rng(7)
    temp = np.round((21.0 + 0.03 * rng.standard_normal(20_000)) * 10) / 10
    hum = np.round(45.0 + 0.3 * rng.standard_normal(20_000))
    stats = impl.RollingStats(window=100, min_count=20)
    for slot, x in enumerate((temp, hum)):
        _, _, flags = feed(stats, x, slot=slot)
        steps = np.abs(np.diff(x))
        assert stats.resolution(slot) == steps[steps > 0].min()
        assert not (flags & 63).any()
    assert stats.resolution(0) == pytest.approx(0.1) and stats.resolution(1) == 1.0


def test_shift_off_and_warmup(impl):
    x = noise(3000, seed=6)
    x[1500:] += 4
    stats = impl.RollingStats(window=100, min_count=20, shift_threshold=math.inf)
    _, _, flags = feed(stats, x)
    assert not (flags & FLAG_SHIFT).any() and stats.cusum(0) == 0.0
    y = noise(300, seed=8)
    y[50:] += 6  # before the detector has a window of residuals: not reported
    stats = impl.RollingStats(window=100, min_count=20, z_threshold=1e9, robust_threshold=math.inf)
    _, _, flags = feed(stats, y)
    assert not (flags & FLAG_SHIFT).any()
    stats.configure([0], shift_threshold=0.5)
    assert stats.settings(0)["shift_threshold"] == 0.5
    with pytest.raises(ValueError, match="shift_threshold"):
        stats.configure([0], shift_threshold=0.0)


# ----------------------------------------------------------------------
# Parity and snapshots with time windows and changes


def shifty(seed, n=12_000, keys=6):
    rng = np.random.default_rng(seed)
    slots = rng.integers(0, keys, n).astype(np.int64)
    ts = np.cumsum(rng.integers(0, 1500, n)).astype(np.int64)
    ts[rng.random(n) < 0.02] -= 3000
    values = rng.standard_normal(n) * (1 + slots)
    step_at = rng.integers(n // 4, n, keys)
    values += np.where(np.arange(n) >= step_at[slots], 4.0 * (1 + slots), 0.0)
    values[slots == 5] = np.round(values[slots == 5])  # quantized
    values[slots == 4] = np.cumsum(rng.poisson(3.0, n))[slots == 4] % 20_000  # a counter, resets
    values[rng.random(n) < 0.02] = np.nan
    return slots, ts, values


@needs_cython
@pytest.mark.parametrize("seed", [0, 1])
def test_parity_time_and_shift(seed):
    slots, ts, values = shifty(seed)
    kw = {"window": 30, "min_count": 5, "capacity": 2, "time_window_ms": 20_000, "stuck_count": 6}
    c, p = compiled.RollingStats(**kw), pure.RollingStats(**kw)
    split = len(values) // 2
    a = [c.update(slots[:split], ts[:split], values[:split], dominant=True)]
    b = [p.update(slots[:split], ts[:split], values[:split], dominant=True)]
    c2 = compiled.RollingStats.from_bytes(p.to_bytes())
    p2 = pure.RollingStats.from_bytes(c.to_bytes())
    a.append(c2.update(slots[split:], ts[split:], values[split:], dominant=True))
    b.append(p2.update(slots[split:], ts[split:], values[split:], dominant=True))
    for i in range(4):
        np.testing.assert_array_equal(np.concatenate([a[0][i], a[1][i]]), np.concatenate([b[0][i], b[1][i]]))
    assert c2.to_bytes() == p2.to_bytes()
    flags = np.concatenate([a[0][2], a[1][2]])
    dom = np.concatenate([a[0][3], a[1][3]])
    assert (flags & FLAG_SHIFT).any()
    # the dominant detector is one of those that fired, and only flagged readings have one
    assert np.array_equal(dom != 0, (flags & 63) != 0) and np.all(dom & flags == dom)
    assert np.all((dom & (dom - 1)) == 0)
    assert c2.kind(4) == "counter"
    for key in range(6):
        for name in ("tmean", "tvar", "tcount", "cusum", "resolution", "kind"):
            assert repr(getattr(c2, name)(key)) == repr(getattr(p2, name)(key)), (name, key)


def test_loads_stage2_snapshot(impl):
    """A snapshot of the layout before time windows and shifts: count windows continue exactly, with
    the missing columns at their defaults (no resolution learned yet, the change detector afresh)."""
    slots, ts, values = shifty(3, n=4000, keys=4)
    new = impl.RollingStats(window=20, min_count=4, shift_threshold=math.inf)
    new.update(slots, ts, values)
    raw = _snapshot.load(new.to_bytes(), "RollingStats")[2]
    old_f = _common.FLOAT_FIELDS[:10]
    old_i = _common.INT_FIELDS[:8]
    old_p = _common.PARAM_FIELDS[:8]
    legacy = _snapshot.dump(
        "RollingStats",
        {"window": 20, "min_count": 4, "z_threshold": 6.0, "ewm_alpha": 0.05},
        {"fstate": old_f, "istate": old_i, "pstate": old_p},
        {
            "fstate": raw["fstate"][:, :10],
            "istate": raw["istate"][:, :8],
            "pstate": raw["pstate"][:, :8],
            "buf": raw["buf"],
            "sorted": raw["sorted"],
        },
    )
    back = impl.RollingStats.from_bytes(legacy)
    assert back.settings(0)["shift_threshold"] == 10.0  # the default of an old snapshot's settings
    for key in range(4):
        for name in ("mean", "var", "count", "min", "max", "median", "mad"):
            assert repr(getattr(back, name)(key)) == repr(getattr(new, name)(key))
    fs, gs = raw["fstate"].copy(), raw["istate"].copy()
    fs[:, 10:] = [_common.FLOAT_DEFAULTS[k] for k in _common.FLOAT_FIELDS[10:]]
    gs[:, 8:] = [_common.INT_DEFAULTS[k] for k in _common.INT_FIELDS[8:]]
    reset = impl.RollingStats.from_bytes(
        _snapshot.dump(
            "RollingStats",
            {"window": 20, "min_count": 4, "z_threshold": 6.0, "ewm_alpha": 0.05},
            {"fstate": _common.FLOAT_FIELDS, "istate": _common.INT_FIELDS, "pstate": old_p},
            {
                "fstate": fs,
                "istate": gs,
                "pstate": raw["pstate"][:, :8],
                "buf": raw["buf"],
                "sorted": raw["sorted"],
            },
        )
    )
    out1 = back.update(slots, ts + 10**8, values)
    out2 = reset.update(slots, ts + 10**8, values)
    for x, y in zip(out1, out2, strict=True):
        np.testing.assert_array_equal(x, y)


def test_loads_histogram_layout_snapshot(impl):
    """A snapshot of the layout before the change detector (histogram shift detector: its columns and
    arrays, shift_threshold in nats): it loads, its finite shift_threshold becomes the CUSUM default,
    and it continues as the same state with the new columns at their defaults."""
    slots, ts, values = shifty(4, n=4000, keys=4)
    new = impl.RollingStats(window=20, min_count=4)
    new.update(slots, ts, values)
    raw = _snapshot.load(new.to_bytes(), "RollingStats")[2]
    keep_f, keep_i = _common.FLOAT_FIELDS[:17], _common.INT_FIELDS[:11]
    old_f = keep_f + ["lmean", "lvar", "hsum", "hw"]
    old_i = keep_i + ["ln", "hn", "srun"]
    n = raw["fstate"].shape[0]
    pstate = raw["pstate"].copy()
    pstate[:, _common.PARAM_FIELDS.index("shift_threshold")] = 1.0
    pstate[1, _common.PARAM_FIELDS.index("shift_threshold")] = math.inf
    legacy = _snapshot.dump(
        "RollingStats",
        {
            "window": 20,
            "min_count": 4,
            "z_threshold": 6.0,
            "ewm_alpha": 0.05,
            **{k: v for k, v in new.defaults.items() if k != "z_threshold"},
            "shift_threshold": 1.0,
        },
        {"fstate": old_f, "istate": old_i, "pstate": _common.PARAM_FIELDS},
        {
            "fstate": np.hstack([raw["fstate"][:, :17], np.ones((n, 4))]),
            "istate": np.hstack([raw["istate"][:, :11], np.ones((n, 3), np.int64)]),
            "pstate": pstate,
            "buf": raw["buf"],
            "sorted": raw["sorted"],
            "bins": np.zeros((n, 20), np.uint8),
            "hist": np.ones((n, 48)),
        },
    )
    back = impl.RollingStats.from_bytes(legacy)
    assert back.defaults["shift_threshold"] == 10.0 and back.settings(0)["shift_threshold"] == 10.0
    assert back.settings(1)["shift_threshold"] == math.inf  # off stays off
    for key in range(4):
        for name in ("mean", "var", "count", "min", "max", "median", "mad"):
            assert repr(getattr(back, name)(key)) == repr(getattr(new, name)(key))
    fs, gs = raw["fstate"].copy(), raw["istate"].copy()
    fs[:, 17:] = [_common.FLOAT_DEFAULTS[k] for k in _common.FLOAT_FIELDS[17:]]
    gs[:, 11:] = [_common.INT_DEFAULTS[k] for k in _common.INT_FIELDS[11:]]
    pstate[:, _common.PARAM_FIELDS.index("shift_threshold")] = 10.0
    pstate[1, _common.PARAM_FIELDS.index("shift_threshold")] = math.inf
    reset = impl.RollingStats.from_bytes(
        _snapshot.dump(
            "RollingStats",
            {"window": 20, "min_count": 4, "z_threshold": 6.0, "ewm_alpha": 0.05},
            {"fstate": _common.FLOAT_FIELDS, "istate": _common.INT_FIELDS, "pstate": _common.PARAM_FIELDS},
            {"fstate": fs, "istate": gs, "pstate": pstate, "buf": raw["buf"], "sorted": raw["sorted"]},
        )
    )
    for x, y in zip(
        back.update(slots, ts + 10**8, values), reset.update(slots, ts + 10**8, values), strict=True
    ):
        np.testing.assert_array_equal(x, y)
