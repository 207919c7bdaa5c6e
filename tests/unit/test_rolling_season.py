"""The time-of-day comparison: a daily cycle is normal, a night as warm as noon is not, short-lived keys
are left alone; the twins agree and a snapshot continues exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from iotstream.ext import RollingStats, load_pure
from iotstream.ext._common import DAY_MS, FLAG_SHIFT

ANOMALY = 63  # every anomaly flag bit

pure = load_pure()  # ext/rolling.py run uncompiled: the reference


def cycle(days: float, interval_s: int, warm_night: bool, seed: int = 3):
    """20 ± 3 °C, coldest at midnight (UTC), noise 0.2; with ``warm_night`` the value stays at its noon
    level from noon of day 3 to noon of day 4 (and rejoins the cycle there without a step)."""
    n = int(days * 86_400 / interval_s)
    ts = np.arange(n, dtype=np.int64) * interval_s * 1000
    rng = np.random.default_rng(seed)
    x = 20.0 + 3.0 * np.sin(2 * math.pi * (ts % DAY_MS) / DAY_MS - math.pi / 2) + rng.normal(0, 0.2, n)
    night = (ts >= 3 * DAY_MS + DAY_MS // 2) & (ts < 4 * DAY_MS + DAY_MS // 2)
    if warm_night:
        x[night] = 23.0 + rng.normal(0, 0.2, int(night.sum()))
    return ts, x, night


@pytest.mark.parametrize("interval_s", [1, 10, 60])
def test_a_night_as_warm_as_noon_is_flagged_and_the_cycle_is_not(interval_s):
    for warm in (False, True):
        ts, x, night = cycle(5, interval_s, warm)
        _, _, flags = RollingStats().update(np.zeros(len(x), np.int64), ts, x)
        flagged = np.flatnonzero(flags & ANOMALY)
        if not warm:
            assert len(flagged) == 0, ts[flagged] / 3.6e6
        else:  # once, in the warm night, by the change detector's flag, before midnight
            assert len(flagged) == 1 and night[flagged[0]] and flags[flagged[0]] == FLAG_SHIFT
            assert ts[flagged[0]] < 4 * DAY_MS


def test_a_key_younger_than_two_days_is_not_compared():
    """The same warm night, but the key started a day and a half before it: no time-of-day flag."""
    ts, x, night = cycle(5, 60, True)
    start = np.searchsorted(ts, 2 * DAY_MS)
    _, _, flags = RollingStats().update(np.zeros(len(x) - start, np.int64), ts[start:], x[start:])
    assert not (flags & ANOMALY)[: np.flatnonzero(night[start:])[-1]].any()


def test_twins_agree_and_a_snapshot_continues_exactly():
    ts, x, _ = cycle(5, 60, True)
    slots = np.zeros(len(x), np.int64)
    one = RollingStats().update(slots, ts, x)
    assert all(
        np.array_equal(a, b, equal_nan=True)
        for a, b in zip(one, pure.RollingStats().update(slots, ts, x), strict=True)
    )
    cut = len(x) // 2 + 17
    first = RollingStats()
    head = first.update(slots[:cut], ts[:cut], x[:cut])
    tail = RollingStats.from_bytes(first.to_bytes()).update(slots[cut:], ts[cut:], x[cut:])
    for a, b, c in zip(one, head, tail, strict=True):
        assert np.array_equal(a, np.concatenate([b, c]), equal_nan=True)


def test_a_snapshot_without_the_new_columns_loads_and_continues():
    """A snapshot of the layout before calibrated scores and the time-of-day profile (main at 185740b):
    it loads with the prior shares and an unlearnt profile; z and flags continue exactly (on a key younger
    than two days neither depends on the new columns), the score stays in [0, 1)."""
    from iotstream.ext import _common, _snapshot

    ts, x, _ = cycle(1, 60, False)
    slots = np.zeros(len(x), np.int64)
    cut = len(x) // 2
    stats = RollingStats()
    stats.update(slots[:cut], ts[:cut], x[:cut])
    params, fields, arrays = _snapshot.load(stats.to_bytes(), "RollingStats")
    nf, ni = _common.FLOAT_FIELDS.index("cal0"), _common.INT_FIELDS.index("first_ts")
    old = _snapshot.dump(
        "RollingStats",
        params,
        {"fstate": fields["fstate"][:nf], "istate": fields["istate"][:ni], "pstate": fields["pstate"]},
        {**arrays, "fstate": arrays["fstate"][:, :nf], "istate": arrays["istate"][:, :ni]},
    )
    want = stats.update(slots[cut:], ts[cut:], x[cut:])
    got = RollingStats.from_bytes(old).update(slots[cut:], ts[cut:], x[cut:])
    assert np.array_equal(want[0], got[0], equal_nan=True) and np.array_equal(want[2], got[2])
    assert np.all((got[1] >= 0.0) & (got[1] < 1.0))
