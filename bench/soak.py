#!/usr/bin/env python3
"""Soak: hold `iotstream serve` at half its measured ceiling for a long time and record every process's RSS.

    python -m iotstream.bench.soak [--minutes 30] [--rate READINGS/S] [--every 10] [--kafka BOOTSTRAP]

The offered rate defaults to half of `ceiling_readings_per_s` in bench/results/ceiling.json
(bench/ceiling.py),
with that run's batch size, streams and window. The server is its own process (bench/harness.py
ServerProcess) and the load comes open-loop from bench/loadgen.py in another; each is sampled every
`--every` seconds for RSS and CPU. Writes bench/results/soak.json (samples, RSS at start/end/max per
process, the load generator's figures) and bench/results/soak.png (RSS over time). It asserts nothing:
read the slope.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from iotstream.bench.harness import RESULTS, ROOT, ServerProcess, loadgen_cmd, machine, write_result

MB = 1024 * 1024


def ceiling() -> dict:
    path = RESULTS / "ceiling.json"
    if not path.exists():
        raise SystemExit(f"{path} missing: run bench/ceiling.py first, or pass --rate")
    return json.loads(path.read_text())


def sample(proc) -> tuple[float, float]:
    """(RSS MB, CPU seconds) of a psutil.Process, children included (none expected)."""
    import psutil

    try:
        rss = proc.memory_info().rss
        t = proc.cpu_times()
        return rss / MB, t.user + t.system
    except psutil.Error:
        return float("nan"), float("nan")


def plot(samples: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    minutes = [s["t_s"] / 60 for s in samples]
    for name in ("server", "loadgen"):
        ax.plot(minutes, [s[f"{name}_rss_mb"] for s in samples], label=f"{name} RSS")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MB)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    import psutil

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="how long to hold the load (default 30)")
    ap.add_argument("--rate", type=float, help="offered readings/s (default: half the measured ceiling)")
    ap.add_argument("--batch", type=int, help="readings per message (default: the ceiling run's)")
    ap.add_argument("--streams", type=int, help="streams (default: the ceiling run's)")
    ap.add_argument("--window", type=int, help="messages in flight per stream (default: the ceiling run's)")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples (default 10)")
    ap.add_argument("--kafka", help="run `serve --kafka BOOTSTRAP` instead of the in-process queue")
    ap.add_argument("--out", help="result JSON (default bench/results/soak.json; the PNG goes beside it)")
    args = ap.parse_args(argv)

    ceil = ceiling() if args.rate is None or not (args.batch and args.streams and args.window) else {}
    rate = args.rate or ceil["ceiling_readings_per_s"] / 2
    batch = args.batch or ceil.get("batch_readings", 1000)
    streams = args.streams or ceil.get("streams", 16)
    window = args.window or ceil.get("window", 16)
    seconds = args.minutes * 60

    server = ServerProcess(kafka=args.kafka).start()
    started = time.monotonic()
    try:
        cmd = loadgen_cmd(
            server.target,
            readings=batch,
            streams=streams,
            window=window,
            rate=rate / batch,
            duration=seconds,
            warmup=0,
            prefix="soak",
        )
        loadgen = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs = {"server": psutil.Process(server.proc.pid), "loadgen": psutil.Process(loadgen.pid)}
        samples = []
        print(
            f"soak: {rate:,.0f} readings/s ({rate / batch:,.1f} msg/s of {batch}) over {streams} streams for "
            f"{args.minutes:g} min; server pid {server.proc.pid}",
            file=sys.stderr,
            flush=True,
        )
        while loadgen.poll() is None:
            row = {"t_s": round(time.monotonic() - started, 1)}
            for name, p in procs.items():
                row[f"{name}_rss_mb"], row[f"{name}_cpu_s"] = (round(v, 2) for v in sample(p))
            if loadgen.poll() is None:
                samples.append(row)
                print(
                    f"  {row['t_s']:>7.0f} s  server {row['server_rss_mb']:.0f} MB  "
                    f"loadgen {row['loadgen_rss_mb']:.0f} MB",
                    file=sys.stderr,
                    flush=True,
                )
            deadline = time.monotonic() + args.every
            while time.monotonic() < deadline and loadgen.poll() is None:
                time.sleep(0.2)
        out, err = loadgen.communicate()
        load = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err[-2000:]}
        server_alive = server.proc.poll() is None
    finally:
        server.stop()

    def rss(name):
        """RSS at the first sample (idle, before load), after one minute of load, at the end, and the max."""
        values = [s[f"{name}_rss_mb"] for s in samples]
        if not values:
            return {}
        warm = next((s[f"{name}_rss_mb"] for s in samples if s["t_s"] >= 60), values[-1])
        return {
            "start_mb": values[0],
            "warm_mb": warm,
            "end_mb": values[-1],
            "max_mb": max(values),
            "growth_mb": round(values[-1] - values[0], 2),
            "growth_after_warmup_mb": round(values[-1] - warm, 2),
        }

    result = {
        "benchmark": "soak",
        "mode": "kafka" if args.kafka else "embedded",
        "minutes": args.minutes,
        "offered_readings_per_s": rate,
        "ceiling_readings_per_s": ceil.get("ceiling_readings_per_s"),
        "batch_readings": batch,
        "streams": streams,
        "window": window,
        "sample_every_s": args.every,
        "rss": {"server": rss("server"), "loadgen": rss("loadgen")},
        "achieved_readings_per_s": load.get("readings_per_s"),
        "ack_p50_ms": load.get("ack_p50_ms"),
        "ack_p99_ms": load.get("ack_p99_ms"),
        "errors": load.get("errors"),
        "server_alive_at_end": server_alive,
        "machine": machine(),
        "loadgen": load,
        "samples": samples,
    }
    path = write_result("soak", result, args.out)
    if samples:
        plot(
            samples,
            path.with_suffix(".png"),
            f"soak: {rate:,.0f} readings/s for {args.minutes:g} min ({result['mode']})",
        )
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "offered_readings_per_s",
                    "achieved_readings_per_s",
                    "ack_p99_ms",
                    "errors",
                    "rss",
                    "server_alive_at_end",
                )
            },
            indent=2,
        )
    )
    print(f"wrote {path} and {path.with_suffix('.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
