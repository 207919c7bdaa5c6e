"""Per-metric rules (TOML) and anomaly episodes of iotstream.ext."""

from __future__ import annotations

import math

import numpy as np
import pytest

from iotstream.ext import (
    FLAG_RATE,
    FLAG_STUCK,
    FLAG_THRESHOLD,
    FLAG_ZSCORE,
    EpisodeTracker,
    RollingStats,
    Rules,
    load_rules,
    parse_rules,
)

RULES = """
[default]
z_threshold = 5.0
silence_ms = 300000

[metrics.temperature]
lo = -40.0
hi = 85.0
max_rate = 5.0
stuck_count = 30

[metrics."vibration.*"]
robust_threshold = "off"
stuck_ms = 600000
"""


def test_rules_defaults_and_overrides(tmp_path):
    book = parse_rules(RULES)
    t = book.for_metric("temperature")
    assert (t.z_threshold, t.lo, t.hi, t.max_rate, t.stuck_count, t.silence_ms) == (
        5.0,
        -40,
        85,
        5,
        30,
        300000,
    )
    v = book.for_metric("vibration.x")
    assert v.robust_threshold == math.inf and v.stuck_ms == 600000 and v.hi == math.inf
    assert book.for_metric("humidity") == book.default == Rules(z_threshold=5.0, silence_ms=300000)
    assert load_rules(None).default == Rules() == load_rules(tmp_path / "absent.toml").default
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    assert load_rules(path) == book


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[default]\nz_treshold = 3", r"\[default\]: unknown key 'z_treshold'"),
        ("[metrics.temp]\nlo = 5\nhi = 1", "lo must be <= hi"),
        ("[metrics.temp]\nmax_rate = 'fast'", "max_rate must be a number"),
        ("[defaults]\nlo = 1", "unknown top-level table"),
        ("[default\n", "rules.toml"),
    ],
)
def test_rules_errors_name_the_culprit(text, match):
    with pytest.raises(ValueError, match=match):
        parse_rules(text, "rules.toml")


def test_rules_configure_slots():
    book = parse_rules(RULES)
    stats = RollingStats(window=20, min_count=5)
    book.apply(stats, [0, 1], "temperature")
    book.apply(stats, [2], "humidity")
    assert stats.settings(1)["hi"] == 85.0 and stats.settings(2)["hi"] == math.inf
    _, _, flags = stats.update([0, 0, 2], [0, 1000, 0], [20.0, 90.0, 90.0])
    assert list(flags & (FLAG_THRESHOLD | FLAG_RATE)) == [0, FLAG_THRESHOLD | FLAG_RATE, 0]


def test_episodes_group_flagged_readings():
    tr = EpisodeTracker(quiet_ms=10_000)
    ev = tr.update(
        [1, 1, 2, 1],
        [0, 1000, 1000, 2000],
        [0.7, 0.9, 0.6, 0.8],
        [FLAG_ZSCORE, FLAG_ZSCORE, FLAG_STUCK, FLAG_ZSCORE | FLAG_STUCK],
    )
    assert [(e.action, e.episode.slot, e.episode.kind) for e in ev] == [
        ("opened", 1, "zscore"),
        ("opened", 2, "stuck"),
        ("opened", 1, "stuck"),
        ("updated", 1, "zscore"),
    ]
    ep = ev[-1].episode
    assert (ep.start_ms, ep.end_ms, ep.count, ep.severity, ep.id) == (0, 2000, 3, 0.9, "1:zscore:0")
    # unflagged readings and quiet time within quiet_ms keep it open; a flagged one extends it
    assert tr.update([1], [11_000], [0.1], [0]) == []
    ev = tr.update([1], [12_000], [0.95], [FLAG_ZSCORE])
    assert [(e.action, e.episode.slot, e.episode.kind) for e in ev] == [
        ("updated", 1, "zscore"),
        ("closed", 2, "stuck"),
    ]  # slot 1's stuck episode is exactly quiet_ms old
    assert ev[0].episode.count == 4 and ev[0].episode.severity == 0.95
    # a flagged reading after a quiet period closes the old episode and opens a new one
    ev = tr.update([1], [30_000], [0.7], [FLAG_ZSCORE])
    assert [(e.action, e.episode.kind, e.episode.start_ms) for e in ev] == [
        ("closed", "zscore", 0),
        ("opened", "zscore", 30_000),
        ("closed", "stuck", 2000),
    ]
    back = EpisodeTracker.from_bytes(tr.to_bytes())
    assert back.open == tr.open
    assert [e.action for e in back.close_idle(40_001)] == ["closed"] and not back.open


def test_one_incident_one_episode():
    """A level shift flags many readings; the tracker reports one episode per kind and edge, not one per
    row, and with each reading's dominant detector one episode per edge."""
    rng = np.random.default_rng(0)
    vals = np.concatenate([rng.standard_normal(300), 20 + rng.standard_normal(50), rng.standard_normal(300)])
    ts = np.arange(len(vals), dtype=np.int64) * 1000
    stats = RollingStats(window=50, min_count=20, z_threshold=5.0)
    tr, one = EpisodeTracker(quiet_ms=30_000), EpisodeTracker(quiet_ms=30_000, by_key=True)
    events, single = [], []
    for a in range(0, len(vals), 64):
        sl = slice(a, a + 64)
        _, score, flags, dom = stats.update(
            np.zeros(len(vals[sl]), np.int64), ts[sl], vals[sl], dominant=True
        )
        events += tr.update(np.zeros(len(vals[sl]), np.int64), ts[sl], score, flags)
        single += one.update(np.zeros(len(vals[sl]), np.int64), ts[sl], score, flags, dom)
    events += tr.close_idle(10**9)
    single += one.close_idle(10**9)
    opened = [e.episode for e in events if e.action == "opened"]
    # the onset and the return are the two edges: at most one episode per kind and edge
    kinds = [e.kind for e in opened]
    assert 1 <= len(opened) <= 6 and set(kinds) <= {"zscore", "robust", "shift"}
    assert all(kinds.count(k) <= 2 for k in kinds) and kinds.count("shift") == 2
    # z and robust z within 3 readings of each edge; the change detector within 10, once the residuals' short
    # mean has left its usual range (widened for a while by the offset of re-arming at one noisy reading)
    assert all(300_000 <= e.start_ms <= 360_000 for e in opened)
    edges = sorted((e.episode.start_ms, e.episode.kind) for e in single if e.action == "opened")
    assert edges == [(300_000, "zscore"), (350_000, "zscore")]
    assert one.from_bytes(one.to_bytes()).by_key
    assert not tr.open and not one.open
