"""Kernel micro-benchmark: rolling statistics + all detectors, compiled vs uncompiled (one source) vs numpy.

    python -m iotstream.bench.kernels --json          # one JSON object on stdout
    python -m iotstream.bench.kernels                 # the same figures as a table

Every figure is updates (readings) per CPU second of the measuring thread (``time.thread_time``: the
machine is shared, and wall-clock figures would measure the neighbours; ``wall`` gives those too),
single-threaded, with every detector on (z, robust z, static limits, rate of change, stuck by count and
time, change at onset) and a time window, count window 100, in steady state: the windows and the change
detector are warm before timing. ``python`` is ``ext/rolling.py`` run uncompiled. ``numpy`` is the
vectorised way one would write the same statistics without a kernel: readings are taken in rounds of at
most one per key, and each round gathers the keys' windows and reduces them with nanmean/nanvar/nanmedian/
nanmin/nanmax, a masked time-window mean and variance, and (as a stand-in of similar cost for the change
detector) the relative entropy of the window's bin counts against a decayed histogram. The uncompiled
source and numpy are measured for a fixed time budget and extrapolated. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from iotstream.ext import load_pure, rolling

compiled = rolling if rolling.COMPILED else None
pure = load_pure()

WINDOW = 100
DETECTORS = {
    "z_threshold": 6.0,
    "robust_threshold": 8.0,
    "lo": -50.0,
    "hi": 50.0,
    "max_rate": 20.0,
    "stuck_count": 30,
    "stuck_ms": 600_000,
    "shift_threshold": 10.0,
    "time_window_ms": 60_000,
}


def signals(keys: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` readings over ``keys`` keys, interleaved at random: noisy sines with dropouts and spikes."""
    rng = np.random.default_rng(seed)
    slots = rng.integers(0, keys, n).astype(np.int64)
    ts = np.arange(n, dtype=np.int64) * max(1, 1_000_000 // max(n, 1)) + 1_700_000_000_000
    phase = rng.uniform(0, 2 * np.pi, keys)[slots]
    values = 10 * np.sin(ts / 60_000 + phase) + rng.standard_normal(n)
    values[rng.random(n) < 0.01] = np.nan
    values[rng.random(n) < 0.001] += 40
    return slots, ts, values


def new_stats(module, keys: int):
    return module.RollingStats(
        window=WINDOW, min_count=20, capacity=keys, **{k: v for k, v in DETECTORS.items()}
    )


def warm_stats(module, keys: int, warm: bool):
    stats = new_stats(module, keys)
    if warm:  # 2.5 windows per key: full windows, removals, recomputes, a warm shift reference
        ws, wt, wv = signals(keys, keys * WINDOW * 5 // 2, seed=1)
        for a in range(0, len(wv), 1 << 16):
            stats.update(ws[a : a + (1 << 16)], wt[a : a + (1 << 16)] - 10**9, wv[a : a + (1 << 16)])
    return stats


def bench_kernel(module, keys: int, n: int, batch: int, budget_s: float, warm: bool) -> tuple[float, float]:
    """(updates per CPU second, updates per wall second)."""
    stats = warm_stats(module, keys, warm)
    slots, ts, values = signals(keys, n, seed=2)
    done = 0
    c0, t0 = time.thread_time(), time.perf_counter()
    for a in range(0, n, batch):
        stats.update(slots[a : a + batch], ts[a : a + batch], values[a : a + batch])
        done += len(values[a : a + batch])
        if time.thread_time() - c0 > budget_s:
            break
    return done / (time.thread_time() - c0), done / (time.perf_counter() - t0)


def bench_numpy(keys: int, budget_s: float) -> tuple[float, float]:
    """Rounds of one reading per key: gather windows, reduce, score, write the rings."""
    rng = np.random.default_rng(3)
    nb, span_ms = 16, DETECTORS["time_window_ms"]
    buf = rng.standard_normal((keys, WINDOW))
    tsr = np.zeros((keys, WINDOW), dtype=np.int64)
    bins = rng.integers(0, nb, (keys, WINDOW)).astype(np.int64)
    hist = np.full((keys, nb), 1.0 / nb)
    lmean, lvar = np.zeros(keys), np.ones(keys)
    pos = np.zeros(keys, dtype=np.int64)
    prev = np.zeros(keys)
    prev_ts = np.zeros(keys, dtype=np.int64)
    run = np.zeros(keys, dtype=np.int64)
    done = 0
    c0, t0 = time.thread_time(), time.perf_counter()
    r = 0
    while time.thread_time() - c0 < budget_s:
        slots = rng.permutation(keys)  # one reading per key this round
        x = 10 * np.sin(r / 60 + slots) + rng.standard_normal(keys)
        ts = np.full(keys, r * 1000, dtype=np.int64)
        w = buf[slots]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.nanmean(w, axis=1)
            std = np.nanstd(w, axis=1, ddof=1)
            z = (x - mean) / std
            med = np.nanmedian(w, axis=1)
            mad = np.nanmedian(np.abs(w - med[:, None]), axis=1)
            rz = (x - med) / (1.4826 * mad)
            _ = np.nanmin(w, axis=1), np.nanmax(w, axis=1)
            rate = (x - prev[slots]) * 1000.0 / (ts - prev_ts[slots])
            live = tsr[slots] > ts[:, None] - span_ms  # time window: mean and variance of the live part
            cnt = live.sum(axis=1)
            tmean = np.where(live, w, 0).sum(axis=1) / cnt
            _ = (np.where(live, w - tmean[:, None], 0) ** 2).sum(axis=1) / (cnt - 1)
            u = (x - lmean[slots]) / np.sqrt(lvar[slots])
            b = np.clip(np.floor(2 * u) + nb // 2, 0, nb - 1).astype(np.int64)
            counts = np.zeros((keys, nb))
            np.add.at(counts, (np.repeat(np.arange(keys), WINDOW), bins[slots].ravel()), 1.0)
            p = counts / WINDOW
            kl = np.where(p > 0, p * np.log(p / hist[slots]), 0).sum(axis=1)
        same = x == prev[slots]
        run[slots] = np.where(same, run[slots] + 1, 1)
        flags = (
            (np.abs(z) > 6) * 1
            | (np.abs(rz) > 8) * 16
            | ((x < -50) | (x > 50)) * 2
            | (np.abs(rate) > 20) * 4
            | (run[slots] >= 30) * 8
            | (kl > 1.0) * 32
        )
        e = np.fmax(np.fmax(np.abs(z) / 6, np.abs(rz) / 8), kl)
        sc = np.log1p((math.e - 1) * np.nan_to_num(e))
        _ = sc / (1 + sc), flags
        hist[slots] *= 1 - 1 / 2000
        hist[slots, b] += 1 / 2000
        lmean[slots] += (x - lmean[slots]) / 1000
        lvar[slots] = (1 - 1 / 1000) * (lvar[slots] + (x - lmean[slots]) ** 2 / 1000)
        buf[slots, pos[slots]] = x
        tsr[slots, pos[slots]] = ts
        bins[slots, pos[slots]] = b
        pos[slots] = (pos[slots] + 1) % WINDOW
        prev[slots], prev_ts[slots] = x, ts
        done += keys
        r += 1
    return done / (time.thread_time() - c0), done / (time.perf_counter() - t0)


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_extension(path: str):
    """A compiled kernel built elsewhere (e.g. main's, in a worktree of its own), to time beside this one.

    It imports against the ``_common`` and ``_snapshot`` beside it when there are (an older commit's state
    layout differs from this one's); this build's modules are put back afterwards."""
    here = Path(path).parent
    helpers = [f"iotstream.ext.{stem}" for stem in ("_common", "_snapshot")]
    saved = {m: sys.modules[m] for m in helpers if m in sys.modules}
    try:
        for m in helpers:
            if (here / f"{m.rsplit('.', 1)[1]}.py").exists():
                _load(m, here / f"{m.rsplit('.', 1)[1]}.py")
        return _load("iotstream.ext." + Path(path).name.split(".")[0], Path(path))
    finally:
        sys.modules.update(saved)


def ab(other_path: str, keys: int, rounds: int) -> dict:
    """Both kernels in this one process, warm, alternating rounds of 1 M readings (the order flips each
    round): the neighbours' load and the memory's state hit both alike. Updates per CPU second."""
    kernels = {"this": compiled, "other": load_extension(other_path)}
    stats = {k: warm_stats(m, keys, True) for k, m in kernels.items()}
    slots, ts, values = signals(keys, 1 << 20, seed=2)
    runs: dict[str, list[float]] = {k: [] for k in kernels}
    for r in range(rounds):
        for k in list(kernels) if r % 2 == 0 else list(kernels)[::-1]:
            c0 = time.thread_time()
            for a in range(0, len(values), 1 << 16):  # each round later in time than the one before
                stats[k].update(
                    slots[a : a + (1 << 16)], ts[a : a + (1 << 16)] + r * 10**7, values[a : a + (1 << 16)]
                )
            runs[k].append(round(len(values) / (time.thread_time() - c0)))
    return {
        "keys": keys,
        "other": other_path,
        "runs": runs,
        "median": {k: sorted(v)[len(v) // 2] for k, v in runs.items()},
    }


def run(quick: bool) -> dict:
    budget = 1.0 if quick else 3.0
    by_keys, wall = {}, {}
    for keys in (1_000, 100_000):
        row = {}
        if compiled is not None:
            n = 2_000_000 if quick else 10_000_000
            row["cython"] = bench_kernel(compiled, keys, n, 1 << 16, budget, warm=True)
        else:
            row["cython"] = (None, None)
        # uncompiled it is ~100x slower: warm windows only where that stays within seconds
        row["python"] = bench_kernel(pure, keys, 200_000, 4096, budget / 2, warm=keys <= 1_000)
        row["numpy"] = bench_numpy(keys, budget)
        by_keys[str(keys)] = {f"{k}_updates_per_s": (round(v[0]) if v[0] else None) for k, v in row.items()}
        wall[str(keys)] = {f"{k}_updates_per_s": (round(v[1]) if v[1] else None) for k, v in row.items()}
    top = by_keys["1000"]
    c, p = top["cython_updates_per_s"], top["python_updates_per_s"]
    return {
        **top,
        "cython_vs_python": round(c / p, 1) if c else None,
        "by_keys": by_keys,
        "wall": wall,
        "config": {
            "window": WINDOW,
            "min_count": 20,
            "detectors": DETECTORS,
            "batch": 1 << 16,
            "threads": 1,
            "steady_state": True,
            "clock": "thread_time (CPU seconds)",
            "python_windows_warm": {"1000": True, "100000": False},
        },
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="shorter runs (about 10 s in all)")
    ap.add_argument(
        "--against", metavar="SO", help="time this compiled kernel beside another build's in one process"
    )
    ap.add_argument("--keys", type=int, default=1_000, help="keys for --against (default 1000)")
    ap.add_argument("--rounds", type=int, default=8, help="alternating rounds for --against (default 8)")
    args = ap.parse_args(argv)
    if args.against:
        print(json.dumps(ab(args.against, args.keys, args.rounds)))
        return 0
    res = run(args.quick)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{'keys':>8} {'cython/s':>14} {'python/s':>12} {'numpy/s':>12}")
    for keys, row in res["by_keys"].items():
        print(
            f"{keys:>8} {row['cython_updates_per_s'] or 0:>14,} {row['python_updates_per_s']:>12,} "
            f"{row['numpy_updates_per_s']:>12,}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
