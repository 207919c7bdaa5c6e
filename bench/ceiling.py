"""Ceiling ramp: offer more readings/s step by step until the server stops keeping up.

    python -m iotstream.bench.ceiling [--kafka BOOTSTRAP] [--start 50000] [--step 50000] [--max 3000000]
                            [--step-seconds 5] [--slo-ms 1000] [--batch 1000] [--json]

One `iotstream serve` process (embedded, or `--kafka BOOTSTRAP`) takes open-loop load from bench/loadgen.py
(`--rate`: batches are due at a fixed pace whatever the acks do) at each offered rate in turn. A step passes
while achieved (readings acked, i.e. durable, per second) stays at or above 95% of offered and the ack p99
stays within --slo-ms; the ramp stops after the first step that fails. The ceiling is the last passing
step. Writes bench/results/ceiling.json and bench/results/ceiling.png (offered vs achieved, ack p99 on a
second axis), and prints the table. The step nearest half the ceiling is repeated under `at_half_ceiling`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from iotstream.bench.harness import (
    RESULTS,
    ROOT,
    ServerProcess,
    load_shape,
    loadgen_cmd,
    machine,
    write_result,
)

KEEP_UP = 0.95


def step(server: ServerProcess, rate: float, args) -> dict:
    cmd = loadgen_cmd(
        server.target,
        args.loadgen_cpus,
        **load_shape(args),
        duration=args.step_seconds,
        rate=rate / args.batch,
        prefix=f"ceil{int(rate)}",
        drain_timeout=20,
    )
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.step_seconds + 120)
    wall = time.perf_counter() - t0
    if not done.stdout.strip():
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    achieved = r["readings_per_s"]
    p99 = r["ack_p99_ms"]
    ok = achieved >= KEEP_UP * rate and p99 is not None and p99 <= args.slo_ms
    why = (
        None
        if ok
        else ("achieved < 95% of offered" if achieved < KEEP_UP * rate else f"ack p99 > {args.slo_ms} ms")
    )
    return {
        "offered_readings_per_s": rate,
        "achieved_readings_per_s": achieved,
        "achieved_ratio": round(achieved / rate, 3),
        "ack_p50_ms": r["ack_p50_ms"],
        "ack_p99_ms": p99,
        "errors": r["errors"],
        "server_cores": round((server.cpu_seconds() - cpu0) / wall, 2),
        "loadgen_cpu_s": r["loadgen_cpu_s"],
        "passed": ok,
        "failed_because": why,
    }


def plot(steps: list[dict], ceiling: float | None, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offered = [s["offered_readings_per_s"] / 1e3 for s in steps]
    achieved = [s["achieved_readings_per_s"] / 1e3 for s in steps]
    p99 = [s["ack_p99_ms"] or float("nan") for s in steps]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(offered, offered, ls=":", color="grey", label="offered (ideal)")
    ax.plot(offered, achieved, marker="o", color="tab:blue", label="achieved (acked = durable)")
    if ceiling:
        ax.axvline(ceiling / 1e3, color="tab:green", ls="--", lw=1, label=f"ceiling {ceiling / 1e3:,.0f}k/s")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("offered readings/s (thousands)")
    ax.set_ylabel("achieved readings/s (thousands)", color="tab:blue")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(offered, p99, marker="s", color="tab:red", label="ack p99 (ms)")
    ax2.axhline(args.slo_ms, color="tab:red", ls="--", lw=1, alpha=0.5, label=f"SLO {args.slo_ms:g} ms")
    ax2.set_ylabel("ack p99 (ms)", color="tab:red")
    ax2.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="upper left", fontsize=8)
    mode = "Kafka" if args.kafka else "embedded"
    ax.set_title(
        f"iotstream ceiling ({mode}, {args.batch} readings/batch, {args.streams} streams; "
        f"{os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kafka", metavar="BOOTSTRAP", help="run `iotstream serve --kafka BOOTSTRAP`")
    ap.add_argument("--start", type=float, default=50_000, help="first offered readings/s (default 50000)")
    ap.add_argument("--step", type=float, default=50_000, help="increase per step (default 50000)")
    ap.add_argument("--max", type=float, default=3_000_000, help="stop here at the latest (default 3000000)")
    ap.add_argument("--step-seconds", type=float, default=5.0, help="measured seconds per step (default 5)")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per step (default 1)")
    ap.add_argument(
        "--slo-ms", type=float, default=1000.0, help="ack p99 a step may not exceed (default 1000)"
    )
    ap.add_argument("--batch", type=int, default=1000, help="readings per batch (default 1000)")
    ap.add_argument("--streams", type=int, default=16, help="devices, one stream each (default 16)")
    ap.add_argument(
        "--window", type=int, default=16, help="batches in flight per stream at most (default 16)"
    )
    ap.add_argument("--server-cpus", help="taskset CPUs for the server (default: unpinned)")
    ap.add_argument("--loadgen-cpus", help="taskset CPUs for the load generator (default: unpinned)")
    ap.add_argument("--out", default=str(RESULTS / "ceiling.json"), help="JSON path (PNG beside it)")
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    args = ap.parse_args(argv)

    steps: list[dict] = []
    with ServerProcess(kafka=args.kafka, cpus=args.server_cpus) as server:
        rate = args.start
        while rate <= args.max:
            s = step(server, rate, args)
            steps.append(s)
            print(
                f"offered {rate:>11,.0f}/s  achieved {s['achieved_readings_per_s']:>11,.0f}/s "
                f"({s['achieved_ratio']:.0%})  ack p50 {s['ack_p50_ms']} ms p99 {s['ack_p99_ms']} ms  "
                f"server {s['server_cores']} cores  "
                f"{'ok' if s['passed'] else 'FAIL: ' + s['failed_because']}",
                file=sys.stderr,
                flush=True,
            )
            if not s["passed"]:
                break
            rate += args.step
        passed = [s for s in steps if s["passed"]]
        ceiling = passed[-1]["offered_readings_per_s"] if passed else None
        half = None
        if ceiling:
            half_rate = max(args.start, round(ceiling / 2 / args.step) * args.step)
            half = step(server, half_rate, args)
    out = Path(args.out)
    png = out.with_suffix(".png")
    result = {
        "benchmark": "ceiling",
        "mode": "kafka" if args.kafka else "embedded",
        "batch_readings": args.batch,
        "streams": args.streams,
        "window": args.window,
        "step_seconds": args.step_seconds,
        "slo_ack_p99_ms": args.slo_ms,
        "keep_up_ratio": KEEP_UP,
        "ceiling_readings_per_s": ceiling,
        "ceiling_batches_per_s": round(ceiling / args.batch, 1) if ceiling else None,
        "stopped_because": steps[-1]["failed_because"]
        if steps and not steps[-1]["passed"]
        else "reached --max",
        "at_half_ceiling": half,
        "steps": steps,
        "plot": str(png.relative_to(ROOT)) if png.is_relative_to(ROOT) else str(png),
        "machine": machine(),
    }
    plot(steps, ceiling, args, png)
    path = write_result("ceiling", result, str(out))
    if not args.json:
        print(f"ceiling {ceiling or 0:,.0f} readings/s; wrote {path} and {png}", file=sys.stderr)
    print(json.dumps(result))
    return 0 if steps else 1


if __name__ == "__main__":
    sys.exit(main())
