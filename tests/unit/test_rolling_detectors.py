"""Window min/max/median/MAD, EWMA, and the detectors of iotstream.ext on crafted series; both twins."""

from __future__ import annotations

import math

import numpy as np
import pytest

from iotstream.ext import _common, _snapshot, load_pure, rolling
from iotstream.ext._common import (
    FLAG_LATE,
    FLAG_RATE,
    FLAG_ROBUST,
    FLAG_SHIFT,
    FLAG_STUCK,
    FLAG_THRESHOLD,
    FLAG_ZSCORE,
)

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


def stream(seed, n=8000, keys=12):
    rng = np.random.default_rng(seed)
    slots = rng.integers(0, keys, n).astype(np.int64)
    ts = np.cumsum(rng.integers(0, 2000, n)).astype(np.int64)
    late = rng.random(n) < 0.02
    ts[late] -= rng.integers(1, 5000, late.sum())
    values = np.round(rng.standard_normal(n) * 10 ** rng.uniform(-1, 2, keys)[slots], 1)
    values[rng.random(n) < 0.03] = np.nan
    for _ in range(20):  # stuck runs on even slots
        i = rng.integers(n - 200)
        j = i + rng.integers(3, 200)
        run = np.flatnonzero(slots[i:j] % 2 == 0) + i
        values[run] = 7.0
    return slots, ts, values


# ----------------------------------------------------------------------
# Window order statistics and EWMA against numpy


def test_order_statistics_match_numpy(impl):
    window = 25
    slots, ts, values = stream(1)
    stats = impl.RollingStats(window=window, min_count=3)
    for a in range(0, len(values), 611):
        stats.update(slots[a : a + 611], ts[a : a + 611], values[a : a + 611])
        upto = min(a + 611, len(values))
        for key in range(12):
            w = values[:upto][slots[:upto] == key][-window:]
            real = w[~np.isnan(w)]
            if len(real) == 0:
                assert math.isnan(stats.min(key)) and math.isnan(stats.median(key))
                continue
            assert stats.min(key) == real.min() and stats.max(key) == real.max()
            assert stats.median(key) == pytest.approx(np.median(real), rel=1e-15, abs=1e-15)
            med = np.median(real)
            assert stats.mad(key) == pytest.approx(np.median(np.abs(real - med)), rel=1e-14, abs=1e-14)


def test_ewm_matches_recurrence(impl):
    alpha = 0.1
    stats = impl.RollingStats(window=10, min_count=2, ewm_alpha=alpha)
    vals = np.random.default_rng(2).standard_normal(500) * 3 + 5
    vals[::17] = np.nan
    feed(stats, vals)
    mean, var = math.nan, math.nan
    for x in vals:
        if math.isnan(x):
            continue
        if math.isnan(mean):
            mean, var = x, 0.0
        else:
            var = (1 - alpha) * (var + alpha * (x - mean) ** 2)
            mean = mean + alpha * (x - mean)
    assert stats.ewm_mean(0) == pytest.approx(mean, rel=1e-12)
    assert stats.ewm_var(0) == pytest.approx(var, rel=1e-10)
    assert math.isnan(stats.ewm_mean(5)) and math.isnan(stats.ewm_var(10**6))


# ----------------------------------------------------------------------
# Detectors on crafted series


def test_static_thresholds(impl):
    stats = impl.RollingStats(window=10, min_count=5, robust_threshold=math.inf)
    stats.configure([3], lo=0.0, hi=10.0)
    z, score, flags = feed(stats, [5.0, -0.5, 10.0, 10.5, 20.0, np.nan, 0.0], slot=3)
    assert list(flags & FLAG_THRESHOLD) == [0, 2, 0, 2, 2, 0, 0]
    assert score[1] > 0.0 and score[3] > 0.0 and score[4] > score[3]
    assert stats.settings(3)["hi"] == 10.0 and stats.settings(4)["hi"] == math.inf


def test_rate_of_change(impl):
    stats = impl.RollingStats(window=10, min_count=5, max_rate=2.0, robust_threshold=math.inf)
    # 1/s, then 3 units in 1 s, then 3 units in 2 s (1.5/s), then a late reading, then 4 units in 1 s
    ts = [0, 1000, 2000, 3000, 5000, 4000, 6000]
    vals = [0.0, 1.0, 2.0, 5.0, 8.0, 100.0, 12.0]
    _, score, flags = feed(stats, vals, ts)
    assert list(flags & FLAG_RATE) == [0, 0, 0, 4, 0, 0, 4]
    assert flags[5] & FLAG_LATE and not flags[5] & FLAG_RATE
    # rate of the last reading is measured from the last reading that was not late: (12-8)/1 s
    assert score[6] > score[4] > 0.0
    assert stats.last_ts(0) == 6000


def test_stuck_sensor_by_count_and_time(impl):
    stats = impl.RollingStats(window=20, min_count=50 // 5, stuck_count=4, robust_threshold=math.inf)
    _, _, flags = feed(stats, [1.0, 2.0, 2.0, np.nan, 2.0, 2.0, 2.0, 3.0])
    assert list(flags & FLAG_STUCK) == [0, 0, 0, 0, 0, 8, 8, 0]
    stats = impl.RollingStats(window=20, min_count=10, stuck_ms=5000, robust_threshold=math.inf)
    _, _, flags = feed(stats, [4.0, 4.0, 4.0, 4.0, 4.0], ts=[0, 1000, 4999, 5000, 9000])
    assert list(flags & FLAG_STUCK) == [0, 0, 0, 8, 8]


def test_zscore_and_robust_z(impl):
    rng = np.random.default_rng(4)
    base = rng.standard_normal(60)
    stats = impl.RollingStats(window=60, min_count=20, z_threshold=6.0, robust_threshold=8.0)
    feed(stats, base)
    med = np.median(base)
    scale = 1.4826 * np.median(np.abs(base - med))
    probe = med + 9 * scale
    snap = stats.to_bytes()
    z, score, flags = feed(stats, [probe], ts=[10**6])
    assert flags[0] & FLAG_ROBUST
    assert score[0] > 0.0
    assert bool(flags[0] & FLAG_ZSCORE) == bool(abs(z[0]) > 6.0)
    # heavy outliers in the window inflate the std (masking the next one) but barely move median/MAD
    masked = impl.RollingStats.from_bytes(snap)
    feed(masked, [50.0, -50.0, 60.0], ts=[1, 2, 3])
    z, _, flags = feed(masked, [probe], ts=[10**6])
    assert abs(z[0]) < 6.0 and flags[0] & FLAG_ROBUST


def test_robust_z_with_quantized_values(impl):
    """More than half the window one value (MAD = 0): the mean absolute deviation takes over, floored at
    the resolution (here 1), so one step is one unit of robust z and 8 steps are the threshold."""
    stats = impl.RollingStats(window=20, min_count=10, z_threshold=100.0, robust_threshold=8.0)
    feed(stats, [1.0] * 15 + [2.0] * 5)
    assert stats.mad(0) == 0.0 and stats.resolution(0) == 1.0
    _, score, flags = feed(stats, [2.0, 9.0, 10.0], ts=[10**5, 10**5 + 1, 10**5 + 2])
    assert not flags[0] & FLAG_ROBUST and not flags[1] & FLAG_ROBUST and flags[2] & FLAG_ROBUST
    assert score[2] > score[1] > 0.0


def robust_oracle(values: np.ndarray, window: int, minp: int, thr: float, res: np.ndarray) -> np.ndarray:
    """Per reading of one key: |robust z| > thr against the window before it, by numpy: scale 1.4826 MAD
    (MAD 0: 1.2533 mean |x - median|), floored at ROBUST_IDR_SHARE of (q90 - q10) / 2.5631 (the 11th
    smallest and largest of 100) and at the resolution so far; None where |robust z| is within 1e-9 of thr."""
    out = []
    for i, x in enumerate(values):
        w = values[max(0, i - window) : i]
        if len(w) < minp:
            out.append(False)
            continue
        med = np.median(w)
        mad = np.median(np.abs(w - med))
        scale = 1.4826 * mad if mad > 0 else 1.2533 * np.mean(np.abs(w - med))
        q = np.sort(w)
        n = len(w)
        scale = max(scale, _common.ROBUST_IDR_SHARE / 2.5631 * (q[n - 1 - n // 10] - q[n // 10]), res[i])
        rz = (x - med) / scale if scale > 0 else (0.0 if x == med else math.inf)
        out.append(None if abs(abs(rz) - thr) < 1e-9 * thr else abs(rz) > thr)
    return np.array(out, dtype=object)


ROBUST_STREAMS = ["two-level", "gaussian", "student-t", "quantized", "mostly-constant"]


@pytest.mark.parametrize("kind", ROBUST_STREAMS)
def test_robust_flags_match_numpy(impl, kind):
    rng = np.random.default_rng(ROBUST_STREAMS.index(kind))
    n = 3000
    if kind == "two-level":  # SKAB's flow meter: two levels a unit apart, each with a jitter of 0.013
        values = 32.0 + (rng.random(n) < 0.45) + rng.choice([0.0, 0.013, -0.013], n)
    elif kind == "gaussian":
        values = rng.standard_normal(n)
    elif kind == "student-t":
        values = rng.standard_t(3, n)
    elif kind == "quantized":
        values = np.round(20 + 0.3 * rng.standard_normal(n), 1)
    else:
        values = np.where(rng.random(n) < 0.9, 5.0, 5.0 + rng.integers(-3, 4, n))
    values[rng.choice(n, 15, replace=False)] += rng.choice([-1, 1], 15) * rng.uniform(3, 60, 15)
    res = np.zeros(n)
    steps = np.abs(np.diff(values))
    steps[steps == 0] = np.inf
    res[1:] = np.minimum.accumulate(steps)
    res[np.isinf(res)] = 0.0
    stats = impl.RollingStats(window=100, min_count=20, z_threshold=1e9, robust_threshold=8.0)
    _, _, flags = feed(stats, values)
    want = robust_oracle(values, 100, 20, 8.0, res)
    sure = np.array([w is not None for w in want])
    got = (flags & FLAG_ROBUST) != 0
    assert sure.mean() > 0.99
    assert list(got[sure]) == list(want[sure].astype(bool))
    assert want[sure].astype(bool).sum() >= 5  # the injected outliers are still found


def test_robust_z_quiet_on_two_level_jitter(impl):
    """More than half the window in one tight cluster (a flow meter at 32.0 +- 0.013, 45 % of the time
    one unit up): the MAD is the jitter, and the other level, as common, would be ~50 MADs away. The
    interdecile floor keeps both levels quiet; a fall to 29 is still flagged."""
    rng = np.random.default_rng(7)
    values = 32.0 + (rng.random(2000) < 0.45) + rng.choice([0.0, 0.013, -0.013], 2000)
    stats = impl.RollingStats(window=100, min_count=20, z_threshold=1e9, robust_threshold=8.0)
    _, _, flags = feed(stats, values)
    assert 1.0 / (1.4826 * stats.mad(0)) > 20  # the other level, by the MAD alone
    assert not (flags & FLAG_ROBUST).any()
    _, _, flags = feed(stats, [29.0], ts=[10**7])
    assert flags[0] & FLAG_ROBUST


def test_late_readings(impl):
    stats = impl.RollingStats(window=5, min_count=2, robust_threshold=math.inf)
    _, _, flags = feed(stats, [1.0, 2.0, 3.0, 4.0], ts=[1000, 3000, 2000, 3000])
    assert list(flags & FLAG_LATE) == [0, 0, FLAG_LATE, 0]
    assert stats.last_ts(0) == 3000 and stats.count(0) == 4 and stats.mean(0) == 2.5


def test_silence_is_timer_driven(impl):
    stats = impl.RollingStats(window=5, min_count=2)
    stats.configure([1, 2], silence_ms=10_000)
    stats.update([0, 1, 2, 1], [0, 0, 0, 5_000], [1.0, 1.0, 1.0, np.nan])
    assert list(stats.silent(9_999)) == []
    assert list(stats.silent(10_000)) == [2]
    assert list(stats.silent(15_000)) == [1, 2]
    assert stats.last_ts(7) is None


def test_configure_validation(impl):
    stats = impl.RollingStats(window=5)
    with pytest.raises(TypeError, match="unknown detector setting 'hight'"):
        stats.configure([0], hight=3.0)
    with pytest.raises(ValueError, match="lo must be <= hi"):
        stats.configure([0], lo=5.0, hi=1.0)
    with pytest.raises(ValueError, match="stuck_count"):
        stats.configure([0], stuck_count=2.5)
    with pytest.raises(ValueError, match="ewm_alpha"):
        impl.RollingStats(ewm_alpha=0.0)
    stats.configure([40], max_rate=3.0)
    assert stats.nslots >= 41 and stats.settings(40)["max_rate"] == 3.0


def test_score_combines_detectors_monotonically(impl):
    stats = impl.RollingStats(window=10, min_count=5, robust_threshold=math.inf)
    stats.configure([0], lo=0.0, hi=10.0)
    feed(stats, [5.0] * 3)
    snap = stats.to_bytes()
    scores = []
    for v in [10.0, 10.5, 12.0, 20.0, 1e6, 1e300]:
        s = impl.RollingStats.from_bytes(snap)
        scores.append(feed(s, [v], ts=[10**5])[1][0])
    assert scores[0] == 0.0 and np.all(np.diff(scores) > 0) and scores[-1] < 1.0


# ----------------------------------------------------------------------
# Parity and snapshots with every detector on


def full_detectors(impl):
    stats = impl.RollingStats(
        window=16,
        min_count=4,
        z_threshold=3.0,
        capacity=4,
        ewm_alpha=0.2,
        robust_threshold=4.0,
        max_rate=5.0,
        stuck_count=5,
        stuck_ms=4000,
        silence_ms=3000,
        shift_threshold=0.5,
        time_window_ms=10_000,
    )
    stats.configure(np.arange(0, 12, 3), lo=-0.3, hi=0.3)
    return stats


@needs_cython
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_all_detectors(seed):
    slots, ts, values = stream(seed)
    c, p = full_detectors(compiled), full_detectors(pure)
    split = len(values) // 3
    oc = [c.update(slots[:split], ts[:split], values[:split])]
    op = [p.update(slots[:split], ts[:split], values[:split])]
    c2 = compiled.RollingStats.from_bytes(p.to_bytes())  # cross-restore midway
    p2 = pure.RollingStats.from_bytes(c.to_bytes())
    oc.append(c2.update(slots[split:], ts[split:], values[split:]))
    op.append(p2.update(slots[split:], ts[split:], values[split:]))
    for i in range(3):
        np.testing.assert_array_equal(
            np.concatenate([oc[0][i], oc[1][i]]), np.concatenate([op[0][i], op[1][i]])
        )
    assert c2.to_bytes() == p2.to_bytes()
    flags = np.concatenate([oc[0][2], oc[1][2]])
    for bit in (FLAG_ZSCORE, FLAG_ROBUST, FLAG_RATE, FLAG_STUCK, FLAG_THRESHOLD, FLAG_LATE, FLAG_SHIFT):
        assert (flags & bit).any(), bit
    for key in range(13):
        for name in (
            "mean",
            "var",
            "count",
            "min",
            "max",
            "median",
            "mad",
            "ewm_mean",
            "ewm_var",
            "last_ts",
            "tmean",
            "tvar",
            "tcount",
            "cusum",
            "resolution",
            "kind",
        ):
            assert repr(getattr(c2, name)(key)) == repr(getattr(p2, name)(key)), (name, key)
    np.testing.assert_array_equal(c2.silent(int(ts.max()) + 5000), p2.silent(int(ts.max()) + 5000))


def test_loads_stage1_snapshot(impl):
    """A snapshot of the first layout (7 float and 4 int columns, no settings, no sorted windows)."""
    slots, ts, values = stream(9, n=3000, keys=6)
    new = impl.RollingStats(window=12, min_count=4)
    new.update(slots, ts, values)
    raw = _snapshot.load(new.to_bytes(), "RollingStats")[2]
    old_f = ["shift", "mean", "cmean", "ssqdm", "cssq", "sabs", "prev"]
    old_i = ["pos", "nfill", "nobs", "nsame"]
    legacy = _snapshot.dump(
        "RollingStats",
        {"window": 12, "min_count": 4, "z_threshold": 6.0},
        {"fstate": old_f, "istate": old_i},
        {
            "fstate": raw["fstate"][:, [_common.FLOAT_FIELDS.index(n) for n in old_f]],
            "istate": raw["istate"][:, [_common.INT_FIELDS.index(n) for n in old_i]],
            "buf": raw["buf"],
        },
    )
    back = impl.RollingStats.from_bytes(legacy)
    for key in range(6):
        for name in ("mean", "var", "count", "min", "max", "median", "mad"):
            assert repr(getattr(back, name)(key)) == repr(getattr(new, name)(key))
    # the columns it lacks start at their defaults: as the full snapshot with those columns reset
    fs, gs = raw["fstate"].copy(), raw["istate"].copy()
    for j, name in enumerate(_common.FLOAT_FIELDS):
        if name not in old_f:
            fs[:, j] = _common.FLOAT_DEFAULTS[name]
    for j, name in enumerate(_common.INT_FIELDS):
        if name not in old_i:
            gs[:, j] = _common.INT_DEFAULTS[name]
    reset = impl.RollingStats.from_bytes(
        _snapshot.dump(
            "RollingStats",
            {"window": 12, "min_count": 4, "z_threshold": 6.0},
            {"fstate": _common.FLOAT_FIELDS, "istate": _common.INT_FIELDS},
            {"fstate": fs, "istate": gs, "buf": raw["buf"]},
        )
    )
    assert back.resolution(0) == 0.0 < new.resolution(0)
    out1 = back.update(slots, ts + 10**7, values)
    out2 = reset.update(slots, ts + 10**7, values)
    for a, b in zip(out1, out2, strict=True):
        np.testing.assert_array_equal(a, b)
