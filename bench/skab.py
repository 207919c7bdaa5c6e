"""SKAB (Skoltech Anomaly Benchmark) through the kernel with the shipped defaults, scored as its leaderboard.

    python bench/detection.py --skab ../shared/datasets/skab [--json]

Each labelled CSV is one device, each sensor column one metric; all readings are streamed in time order
through ``RollingStats()`` configured by ``RuleBook()`` (what the processor runs without a rules file;
nothing is fitted to SKAB). A row is predicted anomalous when a reading of any of its metrics is flagged
(``row``) or, as an operator sees it, while any of its metrics has an open episode (``episode``: from its
first flagged reading until the last one, episodes ending after ``QUIET_S`` seconds without one).

Scoring follows SOURCE.md (the leaderboard's ``core/metrics.py``): only rows from TRAIN_ROWS on count;
outlier detection is F1 = TP / (TP + (FP + FN) / 2), FAR = FP / (FP + TN), MAR = FN / (FN + TP) over all
files' test rows; the predicted changepoints are the rows where the binary output changes (the first test
row counts if it is 1), scored by NAB (standard profile) with a WINDOW_S window right of each true
changepoint (an overlapping window is cut at the end of the one before), normalised so that the null
detector scores 0 and the perfect one 100. The normal run ``anomaly-free.csv`` gives flagged readings
per metric-hour and episodes per metric-day.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from iotstream.ext import ANOMALY_FLAGS, EpisodeTracker, RollingStats, RuleBook

TRAIN_ROWS = 400
WINDOW_S = 60
QUIET_S = 60
NAB_STANDARD = {"tp": 1.0, "fp": -0.11, "fn": -1.0}
PUBLISHED = {"changepoint_nab": 32.4, "outlier_f1": 0.78}  # best entries (SOURCE.md)


def read(path: Path) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(time_ms, sensor names, values [rows x sensors], anomaly, changepoint) of one SKAB CSV."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh, delimiter=";"))
    head, body = rows[0], rows[1:]
    labels = [c for c in ("anomaly", "changepoint") if c in head]
    sensors = [c for c in head[1:] if c not in labels]
    t = np.array([np.datetime64(r[0].replace(" ", "T"), "ms").astype(np.int64) for r in body], dtype=np.int64)
    cols = {c: i for i, c in enumerate(head)}
    vals = np.array([[float(r[cols[c]]) for c in sensors] for r in body], dtype=np.float64)
    lab = {c: np.array([float(r[cols[c]]) for r in body]) for c in labels}
    zeros = np.zeros(len(body))
    return t, sensors, vals, lab.get("anomaly", zeros), lab.get("changepoint", zeros)


def detect(t: np.ndarray, sensors: list[str], vals: np.ndarray) -> tuple[np.ndarray, np.ndarray, list, int]:
    """Per row: any metric flagged, any metric's episode open; the episodes; the flagged readings."""
    n, m = vals.shape
    stats = RollingStats(capacity=m)
    book = RuleBook()
    for j, name in enumerate(sensors):
        book.apply(stats, np.array([j]), name)
    slots = np.tile(np.arange(m, dtype=np.int64), n)
    ts = np.repeat(t, m)
    _, score, flags, dom = stats.update(slots, ts, vals.ravel(), dominant=True)
    hit = (flags & ANOMALY_FLAGS) != 0
    row = hit.reshape(n, m).any(axis=1)
    tracker = EpisodeTracker(quiet_ms=QUIET_S * 1000, by_key=True)
    events = tracker.update(slots, ts, score, flags, dom) + tracker.close_idle(2**62)
    opened = [e.episode for e in events if e.action == "closed"]
    episode = np.zeros(n, dtype=bool)
    for ep in opened:
        episode |= (t >= ep.start_ms) & (t <= ep.end_ms)
    return row, episode, opened, int(hit.sum())


def changepoints(pred: np.ndarray) -> np.ndarray:
    """Rows where the binary output changes; the first row counts if it is 1."""
    p = pred.astype(np.int8)
    return np.flatnonzero(np.diff(np.concatenate([[0], p])) != 0)


def nab(t: np.ndarray, true_cp: np.ndarray, pred_cp: np.ndarray) -> tuple[float, float, float]:
    """(score, null score, perfect score) of one file, standard profile."""
    wins = [[t[i], t[i] + WINDOW_S * 1000] for i in true_cp]
    for a, b in zip(wins, wins[1:], strict=False):
        if a[1] >= b[0]:
            b[0] = a[1]  # "cut right window"
    times = t[pred_cp]
    score = 0.0
    inside = np.zeros(len(times), dtype=bool)
    for lo, hi in wins:
        sel = (times >= lo) & (times <= hi)
        inside |= sel
        if not sel.any():
            score += NAB_STANDARD["fn"]
            continue
        # the first detection, by its position in the window, through the scaled sigmoid
        x = np.linspace(-math.pi / 2, math.pi / 2, 1000)
        y = (NAB_STANDARD["tp"] - NAB_STANDARD["fp"]) / 2 * (
            -np.tanh(x) / math.tanh(math.pi / 2) + 1
        ) + NAB_STANDARD["fp"]
        pos = min(int((times[sel][0] - lo) / (hi - lo) * 1000), 999) if hi > lo else 999
        score += float(y[pos])
    score += NAB_STANDARD["fp"] * int((~inside).sum())
    return score, NAB_STANDARD["fn"] * len(wins), NAB_STANDARD["tp"] * len(wins)


def outlier(tp: int, tn: int, fp: int, fn: int) -> dict:
    return {
        "f1": round(tp / (tp + (fp + fn) / 2), 4) if tp + fp + fn else 0.0,
        "far_pct": round(100 * fp / (fp + tn), 2) if fp + tn else 0.0,
        "mar_pct": round(100 * fn / (fn + tp), 2) if fn + tp else 0.0,
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
    }


def run(root: Path) -> dict:
    files = sorted(p for p in (root / "data").rglob("*.csv") if p.parent.name != "anomaly-free")
    out = {}
    for mode in ("row", "episode"):
        out[mode] = {"cm": [0, 0, 0, 0], "nab": [0.0, 0.0, 0.0]}
    for path in files:
        t, sensors, vals, anomaly, cp = read(path)
        preds = dict(zip(("row", "episode"), detect(t, sensors, vals)[:2], strict=True))
        test = slice(TRAIN_ROWS, None)
        for mode, pred in preds.items():
            p, y = pred[test], anomaly[test] == 1
            cm = out[mode]["cm"]
            cm[0] += int((p & y).sum())
            cm[1] += int((~p & ~y).sum())
            cm[2] += int((p & ~y).sum())
            cm[3] += int((~p & y).sum())
            s = nab(t[test], np.flatnonzero(cp[test] == 1), changepoints(p))
            out[mode]["nab"] = [a + b for a, b in zip(out[mode]["nab"], s, strict=True)]
    res = {"files": len(files), "published_best": PUBLISHED}
    for mode, r in out.items():
        s, null, perfect = r["nab"]
        res[mode] = {
            "changepoint_nab_standard": round(100 * (s - null) / (perfect - null), 2),
            "outlier": outlier(*r["cm"]),
        }
    res["anomaly_free"] = anomaly_free(root / "data" / "anomaly-free" / "anomaly-free.csv")
    return res


def anomaly_free(path: Path) -> dict:
    t, sensors, vals, _, _ = read(path)
    row, _, opened, hits = detect(t, sensors, vals)
    metric_hours = len(t) * len(sensors) / 3600
    n_flagged = int(row.sum())
    kinds: dict[str, int] = {}
    for ep in opened:
        kinds[ep.kind] = kinds.get(ep.kind, 0) + 1
    return {
        "rows": len(t),
        "metrics": len(sensors),
        "readings_flagged": hits,
        "flagged_per_metric_hour": round(hits / metric_hours, 2),
        "rows_flagged": n_flagged,
        "rows_flagged_pct": round(100 * n_flagged / len(t), 2),
        "episodes": len(opened),
        "episodes_per_metric_day": round(len(opened) / (metric_hours / 24), 2),
        "episodes_by_detector": kinds,
    }
