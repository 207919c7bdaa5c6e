"""Rolling statistics kernels (iotstream.ext): numpy oracle, Cython-vs-twin parity, snapshots, growth.

The oracle recomputes every window from scratch in long double (80-bit on x86), so it is exact enough to
judge the float64 kernels even for values around 1e12 with tiny variance or at 1e-300 scale.
"""

from __future__ import annotations

import importlib
import math
import os
import pickle
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from iotstream.ext import FLAG_ZSCORE, load_pure, rolling

pure = load_pure()  # ext/rolling.py run uncompiled: the reference
compiled = rolling if rolling.COMPILED else None
needs_cython = pytest.mark.skipif(compiled is None, reason="iotstream.ext.rolling is not compiled")
IMPLS = [pytest.param("cython", marks=needs_cython), "python"]


def impl_module(name: str):
    return compiled if name == "cython" else pure


@pytest.fixture(params=IMPLS)
def impl(request):
    return impl_module(request.param)


# ----------------------------------------------------------------------
# Oracle


def resolution_before(slots: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per reading: the smallest non-zero |step| between consecutive real readings of its slot before
    it (0 when there is none), by a running minimum over numpy diffs."""
    res = np.zeros(len(values))
    for key in np.unique(slots):
        idx = np.flatnonzero(slots == key)
        real = idx[~np.isnan(values[idx])]
        step = np.abs(np.diff(values[real]))
        step[step == 0] = np.inf
        best = np.minimum.accumulate(np.concatenate([[np.inf], step]))  # after each real reading
        seen = np.searchsorted(real, idx, side="left")  # real readings strictly before each reading
        r = np.where(seen > 0, best[np.maximum(seen - 1, 0)], np.inf)
        res[idx] = np.where(np.isinf(r), 0.0, r)
    return res


def oracle(slots: np.ndarray, values: np.ndarray, window: int, minp: int):
    """Per reading: count, mean, var (ddof=1) of the slot's last ``window`` readings before it, and z
    with the sd floored at the slot's resolution so far."""
    res_all = resolution_before(slots, values).astype(np.longdouble)
    n = len(values)
    cnt = np.zeros(n, dtype=np.int64)
    mean = np.full(n, np.nan, dtype=np.longdouble)
    var = np.full(n, np.nan, dtype=np.longdouble)
    z = np.full(n, np.nan, dtype=np.longdouble)
    for key in np.unique(slots):
        idx = np.flatnonzero(slots == key)
        v = values[idx].astype(np.longdouble)
        # shift by a typical value first: a plain long-double sum of 1e12-scale values loses ~1e-5
        finite = values[idx][np.isfinite(values[idx])]
        shift = np.longdouble(np.median(finite)) if len(finite) else np.longdouble(0)
        v = v - shift
        padded = np.concatenate([np.full(window, np.nan, dtype=np.longdouble), v])
        w = sliding_window_view(padded, window)[: len(v)]
        ok = ~np.isnan(w)
        c = ok.sum(axis=1)
        res = res_all[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            m = np.where(ok, w, 0).sum(axis=1) / c
            ss = np.where(ok, (w - m[:, None]) ** 2, 0).sum(axis=1)
            vr = np.where(c >= 2, ss / (c - 1), np.nan)
            zz = (v - m) / np.maximum(np.sqrt(vr), res)
        # a constant window: 0 for the same value, else steps of the resolution (+-inf without one)
        const = vr == 0
        safe = np.where(res[const] > 0, res[const], 1)
        zz[const] = np.where(
            v[const] == m[const],
            0.0,
            np.where(res[const] > 0, (v[const] - m[const]) / safe, np.copysign(np.inf, v[const] - m[const])),
        )
        zz[(c < minp) | np.isnan(v)] = np.nan
        cnt[idx], mean[idx], var[idx], z[idx] = c, m + shift, vr, zz
    return cnt, mean, var, z


def frac_sqrt(r: Fraction) -> float:
    """sqrt of a non-negative rational as a float, without overflowing on the way."""
    e = max(0, r.numerator.bit_length() - r.denominator.bit_length() - 1000) // 2 * 2
    try:
        return math.ldexp(math.sqrt(float(r / 2**e)), e // 2)
    except OverflowError:
        return math.inf


def exact_float(q: Fraction) -> float:
    """q rounded to a double; past the largest double, infinity (as float division gives)."""
    try:
        return float(q)
    except OverflowError:
        return math.inf if q > 0 else -math.inf


def exact_oracle(slots, values, window: int, minp: int) -> list[float]:
    """z per reading in exact rational arithmetic (for short streams); rounds once at the end."""
    hist: dict[int, list[float]] = {}
    out = []
    for key, x in zip(slots.tolist(), values.tolist(), strict=True):
        everything = hist.setdefault(key, [])
        w = everything[-window:]
        real = [Fraction(v) for v in w if not math.isnan(v)]
        seen = [v for v in everything if not math.isnan(v)]
        steps = [abs(b - a) for a, b in zip(seen, seen[1:], strict=False) if a != b]
        res = min(steps) if steps else 0.0  # the step as the kernel rounds it, then exact from here
        if len(real) < minp or math.isnan(x):
            out.append(math.nan)
        else:
            m = sum(real) / len(real)
            var = sum((v - m) ** 2 for v in real) / (len(real) - 1)
            dev = Fraction(x) - m
            if dev == 0:
                out.append(0.0)
            elif res > 0 and Fraction(res) ** 2 >= var:
                out.append(exact_float(dev / Fraction(res)))
            elif var == 0:
                out.append(math.copysign(math.inf, dev))
            else:
                out.append(math.copysign(frac_sqrt(dev * dev / var), dev))
        everything.append(x)
    return out


def window_tail(slots, values, key, upto, window):
    """The slot's last ``window`` readings among the first ``upto`` (NaNs included)."""
    v = values[:upto][slots[:upto] == key]
    return v[-window:]


# ----------------------------------------------------------------------
# Streams

N_READINGS = 50_000
N_KEYS = 50


def make_stream(kind: str, seed: int = 0, n: int = N_READINGS, keys: int = N_KEYS):
    rng = np.random.default_rng(seed)
    slots = rng.integers(0, keys, n).astype(np.int64)
    ts = np.cumsum(rng.integers(1, 1000, n)).astype(np.int64)
    if kind == "mixed":
        # per-key level and scale, NaN dropouts, constant runs, spikes and level shifts
        level = rng.normal(0, 100, keys)[slots]
        scale = 10.0 ** rng.uniform(-3, 3, keys)[slots]
        values = level + scale * rng.standard_normal(n)
        values[rng.random(n) < 0.03] = np.nan
        for _ in range(40):
            key = rng.integers(keys)
            idx = np.flatnonzero(slots == key)
            a = rng.integers(len(idx))
            values[idx[a : a + rng.integers(5, 300)]] = round(float(rng.normal(0, 50)), 1)
        spikes = rng.random(n) < 0.002
        values[spikes] += 50 * scale[spikes]
    elif kind == "big_tiny_var":
        # around 1e12 with a spread of a few ulps to a few thousand ulps
        values = (
            1e12
            + rng.normal(0, 1, keys)[slots] * 1e6
            + rng.standard_normal(n) * 1e-3 * (1 + 100 * (slots % 3 == 0))
        )
    elif kind == "tiny_scale":
        values = 1e-300 * (1 + rng.standard_normal(n) * 0.1) * (1 + slots)
    elif kind == "huge":
        values = 1e150 * (1 + rng.standard_normal(n)) * (1 + slots)
    elif kind == "jumps":
        # variance collapses by many orders of magnitude when the loud readings leave the window
        values = rng.standard_normal(n) * np.where((np.arange(n) // 3000) % 2 == 0, 1e6, 1e-6)
        values += 1e3 * (slots % 5)
    else:
        raise AssertionError(kind)
    return slots, ts, values


STREAMS = ["mixed", "big_tiny_var", "tiny_scale", "huge", "jumps"]


def run_chunked(stats, slots, ts, values, chunk):
    zs, scores, flags = [], [], []
    for a in range(0, len(values), chunk):
        z, s, f = stats.update(slots[a : a + chunk], ts[a : a + chunk], values[a : a + chunk])
        zs.append(z)
        scores.append(s)
        flags.append(f)
    return np.concatenate(zs), np.concatenate(scores), np.concatenate(flags)


# ----------------------------------------------------------------------
# Against the oracle


@pytest.mark.parametrize("kind", STREAMS)
def test_z_matches_oracle(impl, kind):
    window, minp = 100, 20
    slots, ts, values = make_stream(kind, seed=STREAMS.index(kind))
    stats = impl.RollingStats(window=window, min_count=minp, z_threshold=6.0, capacity=16)
    z, score, flags = stats.update(slots, ts, values)
    cnt, _, var, zref = oracle(slots, values, window, minp)
    zref = zref.astype(np.float64)

    assert np.array_equal(np.isnan(z), (cnt < minp) | np.isnan(values))
    const = (var == 0) & ~np.isnan(z)
    np.testing.assert_allclose(z[const], zref[const], rtol=1e-12, atol=0)
    live = ~np.isnan(z) & ~const
    assert live.sum() > len(z) // 2
    np.testing.assert_allclose(z[live], zref[live], rtol=1e-8, atol=1e-9)
    assert np.array_equal(flags & FLAG_ZSCORE != 0, np.abs(z) > 6.0)
    assert np.all((score >= 0) & (score < 1))


@pytest.mark.parametrize("kind", STREAMS)
def test_mean_var_count_match_oracle(impl, kind):
    window, minp = 64, 8
    slots, ts, values = make_stream(kind, seed=10 + STREAMS.index(kind), n=20_000, keys=20)
    stats = impl.RollingStats(window=window, min_count=minp)
    chunk = 997  # odd size: batch boundaries fall anywhere
    for a in range(0, len(values), chunk):
        stats.update(slots[a : a + chunk], ts[a : a + chunk], values[a : a + chunk])
        upto = min(a + chunk, len(values))
        for key in range(20):
            w = window_tail(slots, values, key, upto, window)
            real = w[~np.isnan(w)].astype(np.longdouble)
            assert stats.count(key) == len(real)
            if len(real) == 0:
                assert math.isnan(stats.mean(key))
                continue
            shift = real[0]
            m = (real - shift).mean() + shift
            scale = float(np.abs(real).max())
            assert abs(stats.mean(key) - float(m)) <= 1e-12 * scale + 1e-300
            if len(real) < 2:
                assert math.isnan(stats.var(key))
                continue
            d = (real - shift) - (real - shift).mean()
            v = float((d**2).sum() / (len(real) - 1))
            if np.all(real == real[0]):
                assert stats.var(key) == 0.0 and stats.mean(key) == real[0]
            else:
                assert stats.var(key) == pytest.approx(v, rel=1e-9, abs=1e-300)


def test_pandas_like_nan_positions(impl):
    """NaN readings take a window position but are not counted (pandas rolling(window, min_periods))."""
    stats = impl.RollingStats(window=4, min_count=2)
    vals = [1.0, np.nan, 3.0, np.nan, np.nan, 5.0]
    z, _, _ = stats.update(np.zeros(6, np.int64), np.arange(6), vals)
    assert stats.count(0) == 2 and stats.mean(0) == 4.0 and stats.var(0) == 2.0
    # before the last reading the window is [nan, 3, nan, nan]: one real value, below min_count
    assert np.isnan(z).all()
    stats.update([0, 0], [6, 7], [7.0, 9.0])
    assert stats.count(0) == 3 and stats.mean(0) == 7.0 and stats.var(0) == 4.0


def test_min_count_pins_first_z(impl):
    stats = impl.RollingStats(window=10, min_count=5)
    z, _, _ = stats.update(np.zeros(8, np.int64), np.arange(8), [1.0, 2.0, 4.0, 8.0, 16.0, 1.0, 2.0, 3.0])
    assert np.isnan(z[:5]).all() and not np.isnan(z[5:]).any()
    assert z[5] == pytest.approx((1.0 - 6.2) / np.std([1, 2, 4, 8, 16], ddof=1))


def test_constant_window_is_exact(impl):
    stats = impl.RollingStats(window=5, min_count=3, z_threshold=4.0)
    seq = [0.1, 0.7, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3000000000000001, 0.3, 0.2]
    z, score, flags = stats.update(np.zeros(len(seq), np.int64), np.arange(len(seq)), seq)
    # window [0.3]*5 before index 9: the same value is 0, a one-ulp change is one ulp over the smallest
    # step seen (0.7 - 0.3), not infinitely unusual
    assert z[8] == 0.0 and z[9] == (0.3000000000000001 - 0.3) / (0.7 - 0.3) and not flags[9] & FLAG_ZSCORE
    # a slot that never moved has no scale: its first one-ulp move is +inf
    seq = [0.3] * 6 + [0.3000000000000001]
    z, score, flags = stats.update(np.ones(len(seq), np.int64), np.arange(len(seq)), seq)
    assert z[5] == 0.0 and z[6] == math.inf and flags[6] & FLAG_ZSCORE
    assert 0.5 < score[6] < 1.0
    stats2 = impl.RollingStats(window=3, min_count=2)
    stats2.update(np.zeros(6, np.int64), np.arange(6), [9.0, -4.0, 2.5, 2.5, 2.5, 2.5])
    assert stats2.var(0) == 0.0 and stats2.mean(0) == 2.5


def test_score_shape(impl):
    stats = impl.RollingStats(window=50, min_count=10, z_threshold=6.0, robust_threshold=math.inf)
    rng = np.random.default_rng(3)
    base = rng.standard_normal(40)
    mu, sd = base.mean(), base.std(ddof=1)
    stats.update(np.zeros(40, np.int64), np.arange(40), base)
    zs = np.array([0.0, 0.5, 1, 3, 5.999, 6.0, 6.001, 10, 100, 1e6, 1e15, 1e200])
    out = []
    for zt in zs:  # one reading at a time against a fresh copy of the same window
        s = impl.RollingStats.from_bytes(stats.to_bytes())
        z, score, flags = s.update([0], [99], [mu + zt * sd])
        out.append((z[0], score[0], flags[0]))
    z, score, flags = map(np.array, zip(*out, strict=True))
    np.testing.assert_allclose(z, zs, rtol=1e-9, atol=1e-9)
    assert np.all(np.diff(score) > 0) and score[0] == 0.0 and np.all(score < 1.0)
    assert list(flags) == [0] * 6 + [FLAG_ZSCORE] * 6
    # NaN (too few values, NaN reading) scores 0; an infinite z stays below 1
    s = impl.RollingStats(window=4, min_count=2)
    z, score, _ = s.update([0, 0, 0, 0], [0, 1, 2, 3], [1.0, 1.0, np.nan, 2.0])
    assert score[0] == score[2] == 0.0 and z[3] == math.inf and score[3] < 1.0


def test_extreme_values_do_not_poison_state(impl):
    """float_info.max overflows the sums; once it leaves the window the statistics are exact again."""
    stats = impl.RollingStats(window=8, min_count=2)
    big = sys.float_info.max
    seq = [1.0, 2.0, big, -big, sys.float_info.min, 3.0] + [float(i) for i in range(20)]
    z, score, flags = stats.update(np.zeros(len(seq), np.int64), np.arange(len(seq)), seq)
    assert np.all((score >= 0) & (score < 1))
    assert stats.count(0) == 8 and stats.mean(0) == 15.5
    assert stats.var(0) == pytest.approx(np.var(np.arange(12, 20), ddof=1), rel=1e-14)


# ----------------------------------------------------------------------
# Property tests

values_st = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from([0.0, 1.0, -1.0, 1e12, 1e12 + 1e-3, 1e-300, 2e-300, np.nan, 3.25]),
    st.floats(1e12 - 1.0, 1e12 + 1.0),
)
stream_st = st.lists(st.tuples(st.integers(0, 3), values_st), min_size=1, max_size=120)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=stream_st, window=st.integers(2, 9), minp=st.integers(0, 9), zthr=st.floats(0.5, 20))
def test_property_twin_vs_oracle(stream, window, minp, zthr):
    minp = min(minp, window)
    slots = np.array([s for s, _ in stream], dtype=np.int64)
    values = np.array([v for _, v in stream], dtype=np.float64)
    stats = pure.RollingStats(window=window, min_count=minp, z_threshold=zthr, capacity=1)
    z, score, flags = stats.update(slots, np.zeros_like(slots), values)
    zref = np.array(exact_oracle(slots, values, window, max(minp, 2)))
    assert np.array_equal(np.isnan(z), np.isnan(zref))
    inf = np.isinf(zref)
    np.testing.assert_array_equal(z[inf], zref[inf])
    np.testing.assert_allclose(z[~inf], zref[~inf], rtol=1e-7, atol=1e-9)
    assert np.array_equal(flags & FLAG_ZSCORE != 0, np.abs(z) > zthr)
    assert np.all((score >= 0) & (score < 1)) and np.all(score[np.isnan(values)] == 0)


@needs_cython
@settings(max_examples=150, deadline=None)
@given(
    stream=stream_st,
    window=st.integers(2, 9),
    minp=st.integers(0, 9),
    split=st.integers(0, 120),
    span=st.integers(0, 6),
)
def test_property_parity_and_snapshot(stream, window, minp, split, span):
    minp = min(minp, window)
    slots = np.array([s for s, _ in stream], dtype=np.int64)
    values = np.array([v for _, v in stream], dtype=np.float64)
    ts = np.arange(len(values), dtype=np.int64)
    c = compiled.RollingStats(window=window, min_count=minp, capacity=2, time_window_ms=span)
    p = pure.RollingStats(window=window, min_count=minp, capacity=2, time_window_ms=span)
    oc = c.update(slots, ts, values)
    op = p.update(slots, ts, values)
    for a, b in zip(oc, op, strict=True):
        np.testing.assert_array_equal(a, b)
    assert c.to_bytes() == p.to_bytes()
    # split, snapshot through the other twin, continue: same as uninterrupted
    c2 = compiled.RollingStats(window=window, min_count=minp, capacity=2, time_window_ms=span)
    first = c2.update(slots[:split], ts[:split], values[:split])
    p2 = pure.RollingStats.from_bytes(c2.to_bytes())
    second = p2.update(slots[split:], ts[split:], values[split:])
    for a, b1, b2 in zip(oc, first, second, strict=True):
        np.testing.assert_array_equal(a, np.concatenate([b1, b2]))
    assert p2.to_bytes() == c.to_bytes()


# ----------------------------------------------------------------------
# Parity on the long streams


@needs_cython
@pytest.mark.parametrize("kind", STREAMS)
def test_parity_long_streams(kind):
    slots, ts, values = make_stream(kind, seed=100 + STREAMS.index(kind), n=30_000, keys=40)
    c = compiled.RollingStats(window=50, min_count=10, capacity=4)
    p = pure.RollingStats(window=50, min_count=10, capacity=4)
    oc = run_chunked(c, slots, ts, values, 4096)
    op = run_chunked(p, slots, ts, values, 1000)
    for a, b in zip(oc, op, strict=True):
        np.testing.assert_array_equal(a, b)
    assert c.to_bytes() == p.to_bytes()
    for key in range(45):
        for name in ("mean", "var", "count"):
            np.testing.assert_array_equal(getattr(c, name)(key), getattr(p, name)(key))


# ----------------------------------------------------------------------
# Snapshots


@pytest.mark.parametrize("src", IMPLS)
@pytest.mark.parametrize("dst", IMPLS)
def test_snapshot_restore_continue(src, dst):
    slots, ts, values = make_stream("mixed", seed=7, n=12_000, keys=30)
    whole = impl_module(src).RollingStats(window=40, min_count=5, z_threshold=4.5, capacity=8)
    expect = whole.update(slots, ts, values)
    for split in (0, 1, 5_000, 12_000):
        a = impl_module(src).RollingStats(window=40, min_count=5, z_threshold=4.5, capacity=8)
        first = a.update(slots[:split], ts[:split], values[:split])
        b = impl_module(dst).RollingStats.from_bytes(a.to_bytes())
        assert (b.window, b.min_count, b.z_threshold, b.nslots) == (40, 5, 4.5, a.nslots)
        second = b.update(slots[split:], ts[split:], values[split:])
        for e, x, y in zip(expect, first, second, strict=True):
            np.testing.assert_array_equal(e, np.concatenate([x, y]))
        assert b.to_bytes() == whole.to_bytes()


def test_snapshot_rejects_garbage(impl):
    good = impl.RollingStats(window=4).to_bytes()
    with pytest.raises(ValueError, match="not an iotstream"):
        impl.RollingStats.from_bytes(b"garbage" + good)
    future = bytearray(good)
    future[8:10] = (999).to_bytes(2, "little")
    with pytest.raises(ValueError, match="version 999"):
        impl.RollingStats.from_bytes(bytes(future))
    with pytest.raises(ValueError, match="truncated"):
        impl.RollingStats.from_bytes(good[:-8])


def test_pickle_roundtrip(impl):
    stats = impl.RollingStats(window=5, min_count=2)
    stats.update([0, 1, 0, 1, 0], np.arange(5), [1.0, 2.0, 3.0, 4.0, 8.0])
    back = pickle.loads(pickle.dumps(stats))
    assert back.to_bytes() == stats.to_bytes() and back.mean(0) == 4.0


# ----------------------------------------------------------------------
# Slots and arguments


def test_slot_growth(impl):
    slots, ts, values = make_stream("mixed", seed=11, n=5_000, keys=10)
    slots = slots * 997 + 3  # sparse, up to ~9000
    grown = impl.RollingStats(window=20, min_count=3, capacity=1)
    pre = impl.RollingStats(window=20, min_count=3, capacity=10_000)
    og = run_chunked(grown, slots, ts, values, 333)
    op = pre.update(slots, ts, values)
    assert grown.nslots >= slots.max() + 1
    for a, b in zip(og, op, strict=True):
        np.testing.assert_array_equal(a, b)
    for key in np.unique(slots):
        assert grown.mean(key) == pre.mean(key) or math.isnan(pre.mean(key))
        assert grown.count(key) == pre.count(key)
    assert grown.count(10**9) == 0 and math.isnan(grown.mean(10**9)) and math.isnan(grown.var(10**9))
    z, _, _ = grown.update(np.array([], np.int64), np.array([], np.int64), np.array([]))
    assert z.shape == (0,)


def test_bad_arguments(impl):
    stats = impl.RollingStats(window=4)
    with pytest.raises(ValueError, match=r"slots\[1\] = -2"):
        stats.update([0, -2], [0, 0], [1.0, 2.0])
    with pytest.raises(ValueError, match="differ in length"):
        stats.update([0, 1], [0], [1.0, 2.0])
    with pytest.raises(IndexError):
        stats.mean(-1)
    for kwargs in (
        {"window": 1},
        {"window": 4, "min_count": -1},
        {"z_threshold": 0.0},
        {"z_threshold": math.inf},
        {"capacity": 0},
    ):
        with pytest.raises(ValueError):
            impl.RollingStats(**kwargs)


# ----------------------------------------------------------------------
# Picking the implementation


def _which(env: dict) -> str:
    code = (
        "import logging; logging.basicConfig(level=logging.WARNING);"
        "import iotstream.ext as e; print(e.IMPLEMENTATION)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(__file__),
    )
    return out.stdout.strip() + "|" + out.stderr


def test_pure_python_switch():
    assert not pure.COMPILED  # the reference is the source itself, never the extension
    assert _which({"IOTSTREAM_PURE_PYTHON": "1"}).startswith("python|")
    if compiled is not None:
        assert _which({"IOTSTREAM_PURE_PYTHON": "0"}).startswith("cython|")


def test_fallback_logs_warning(monkeypatch, caplog):
    import iotstream.ext as ext

    monkeypatch.setitem(sys.modules, "iotstream.ext.rolling", None)  # makes the import fail
    monkeypatch.delenv("IOTSTREAM_PURE_PYTHON", raising=False)
    try:
        with caplog.at_level("WARNING", logger="iotstream.ext"):
            importlib.reload(ext)
        assert ext.IMPLEMENTATION == "python" and ext.RollingStats is pure.RollingStats
        assert "pure-Python source" in caplog.text
    finally:
        monkeypatch.undo()
        importlib.reload(ext)
