"""The calibrated score: one fleet-wide threshold gives comparable alarm rates on keys of different kinds,
and the mapping from a key's tail to its score is the documented one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from iotstream.ext import RollingStats, _common, load_pure
from iotstream.ext._common import CAL_LEVELS, FLOAT_DEFAULTS, SCORE_DECADES, score_for_tail

N, WARM = 60_000, 20_000  # readings per key, and those left out while its shares are learnt

pure = load_pure()  # ext/rolling.py run uncompiled: the reference


def normal_keys(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {
        "gaussian": rng.normal(20.0, 1.0, n),
        "student-t3": 20.0 + rng.standard_t(3, n),
        "quantized 0.1": np.round((20.0 + rng.normal(0.0, 0.05, n)) * 10.0) / 10.0,
        "binary 1 %": (rng.random(n) < 0.01).astype(np.float64),
    }


def test_one_threshold_gives_comparable_alarm_rates():
    """At the score for a tail share p no key alarms on more than ~p of its readings, and where the shares
    are learnt (p = 1 %) the keys whose evidence is continuous or one rare event (the door) alarm on about
    p; the quantized key's evidence comes in steps (one step is common, two are rare), so it alarms less.
    At one threshold on the raw evidence (|z| > 3) the t key alarms 5 times as often as the Gaussian one
    and the door never."""
    rates, raw = {}, {}
    for name, x in normal_keys(N).items():
        stats = RollingStats()
        z, score, _ = stats.update(np.zeros(N, np.int64), np.arange(N, dtype=np.int64) * 1000, x)
        rates[name] = [float((score[WARM:] > score_for_tail(p)).mean()) for p in (1e-2, 1e-3, 1e-4)]
        raw[name] = float((np.abs(z[WARM:]) > 3.0).mean())
    for name, (r2, r3, r4) in rates.items():
        assert r2 <= 2e-2 and r3 <= 2e-3 and r4 <= 2e-4, (name, rates)
    for name in ("gaussian", "student-t3", "binary 1 %"):
        assert 1e-2 / 3 <= rates[name][0], (name, rates)
    assert raw["student-t3"] > 4 * raw["gaussian"] and raw["binary 1 %"] == 0.0, raw


def test_score_is_the_tail_in_decades():
    """score = u / (1 + u), u = -log10(tail) / SCORE_DECADES; at a level the tail is that level's share
    (less the tie-breaking term); 0.5 is a tail of 10**-4."""
    q = [FLOAT_DEFAULTS[f"cal{k}"] for k in range(CAL_LEVELS)]  # a new key: shares 1/2, 1/4, ...
    lt = pure.tail_log(1.0, q, 0)  # the level 1 is the fifth: share 1/32
    assert lt == pytest.approx(math.log(1 / 32) - _common.TIE_WEIGHT, rel=1e-12)
    u = -lt / math.log(10) / SCORE_DECADES
    assert pure.calc_score(lt) == pytest.approx(u / (1 + u), rel=1e-12)
    assert score_for_tail(1e-4) == pytest.approx(0.5) == pure.calc_score(math.log(1e-4))
    assert pure.calc_score(0.0) == 0.0


@pytest.mark.parametrize("shares", ["new", "flat", "learnt"])
def test_rarer_evidence_scores_higher_and_never_reaches_one(shares):
    """Strictly increasing in the evidence, equal shares included (ties broken by magnitude), and below 1
    even for infinite evidence."""
    q = {
        "new": [FLOAT_DEFAULTS[f"cal{k}"] for k in range(CAL_LEVELS)],
        "flat": [0.01] * 3 + [0.0] * (CAL_LEVELS - 3),  # a binary key: every event is the same evidence
        "learnt": [0.3, 0.1, 0.01, 0.002, 0.0, 0.0, 0.0, 0.0],
    }[shares]
    e = np.concatenate([[0.0], np.geomspace(1e-3, 1e300, 400), [math.inf]])
    s = np.array([pure.calc_score(pure.tail_log(float(v), q, 0)) for v in e])
    assert s[0] == 0.0 and np.all(np.diff(s) > 0) and s[-1] < 1.0


def test_twins_agree_on_the_calibrated_score():
    x = normal_keys(3000)
    for v in x.values():  # young keys with spikes: the young-key factor on z and robust z evidence
        v[500::400] += 15.0
    slots = np.repeat(np.arange(len(x), dtype=np.int64), 3000)
    values = np.concatenate(list(x.values()))
    ts = np.tile(np.arange(3000, dtype=np.int64) * 1000, len(x))
    out = [impl(capacity=4).update(slots, ts, values) for impl in (RollingStats, pure.RollingStats)]
    assert np.array_equal(out[0][1], out[1][1])


def spiked(n_hist: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``n_hist`` Gaussian readings (sd 1), then one 12 sd spike (robust z about 12: over 8, evidence 1.5)."""
    x = np.random.default_rng(seed).normal(20.0, 1.0, n_hist + 1)
    x[-1] = 32.0
    return x, np.arange(n_hist + 1, dtype=np.int64) * 1000


@pytest.mark.parametrize("impl", [RollingStats, pure.RollingStats])
def test_young_keys_obvious_spike_scores_high(impl, monkeypatch):
    """A young key's shares are mostly its prior, which takes a 12 sd spike for once in ~100 readings
    (score ~0.4); beyond the threshold the Gaussian factor, fading with the key's age, makes it HIGH. A key
    older than CAL_N readings is scored by its own shares alone, as before."""
    young = []
    for n_hist in (200, 1000, 3000):
        x, ts = spiked(n_hist)
        young.append(float(impl().update(np.zeros(len(x), np.int64), ts, x)[1][-1]))
    assert min(young) >= 0.7 and young == sorted(young, reverse=True), young  # fades with age
    x, ts = spiked(_common.CAL_N + 500)
    mature = float(impl().update(np.zeros(len(x), np.int64), ts, x)[1][-1])
    monkeypatch.setattr(pure, "young_tail", lambda e, thr, n: 0.0)
    without = float(pure.RollingStats().update(np.zeros(len(x), np.int64), ts, x)[1][-1])
    assert mature == without < 0.7, (mature, without)
