"""Runs the ghz scenarios of bench/ghz/*.json against a server it starts, and summarises them.

    python -m iotstream.bench.ghz.run [--kafka BOOTSTRAP] [--duration 10s] [--only ingest-stream-1000 ...]
                            [--descriptors auto|reflection|proto] [--server-cpus 0 --ghz-cpus 1] [--json]

Starts `iotstream serve` (embedded, or with `--kafka BOOTSTRAP`) in its own process on a free loopback
port, seeds ten devices (bench-00000..bench-00009) for the Query scenarios, runs each scenario with ghz,
and writes bench/results/ghz/<scenario>.json (ghz's own JSON report) and bench/results/ghz/summary.json.

One ghz "request" on Ingest/Stream is a whole stream: open, send stream-call-count messages, half-close,
read every Ack. So ghz's rps counts streams, and its latencies are whole-stream times; the summary turns
them into messages/s (OK streams x stream-call-count / elapsed) and readings/s (x readings per message).
For unary calls (Send, Query) a request is one message and the latencies are per call.

Descriptors: the configs carry no proto paths, so ghz asks the server's reflection service. `auto` probes
reflection with grpcurl first and falls back to `--proto proto/iotstream/v1/*.proto -i proto` if the server
cannot resolve method symbols (the summary says which source was used, and why).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from iotstream.bench.harness import (
    RESULTS,
    ROOT,
    ServerProcess,
    children_cpu_seconds,
    machine,
    taskset,
    tool,
    write_result,
)

HERE = Path(__file__).resolve().parent
PROTOS = {
    "iotstream.v1.Ingest": "proto/iotstream/v1/ingest.proto",
    "iotstream.v1.Query": "proto/iotstream/v1/query.proto",
}
SEED_DEVICES, SEED_READINGS = 10, 600


def scenarios(only: list[str] | None) -> list[Path]:
    paths = sorted(HERE.glob("*.json"), key=lambda p: (not p.stem.startswith("ingest"), p.stem))
    if only:
        paths = [p for p in paths if p.stem in only]
        missing = set(only) - {p.stem for p in paths}
        if missing:
            raise SystemExit(f"no such scenario: {', '.join(sorted(missing))} (see bench/ghz/*.json)")
    return paths


def seed(target: str) -> None:
    """Ten devices with readings over the last 10 minutes, so GetDevice/Aggregate have something to read."""
    from iotstream.client.simulate import run_fleet

    summary, _ = asyncio.run(
        run_fleet(target, SEED_DEVICES, SEED_READINGS, batch=300, prefix="bench", anomalies=0.0)
    )
    if summary["acked"] != SEED_DEVICES * SEED_READINGS:
        raise RuntimeError(f"seeding failed: {summary}")


def reflection_problem(target: str) -> str | None:
    """None if reflection resolves method symbols (what ghz asks for), else grpcurl's complaint."""
    out = subprocess.run(
        [tool("grpcurl"), "-plaintext", "-max-time", "10", target, "describe", "iotstream.v1.Ingest.Stream"],
        capture_output=True,
        text=True,
    )
    return None if out.returncode == 0 else (out.stderr or out.stdout).strip()


def run_scenario(
    path: Path,
    target: str,
    out_dir: Path,
    use_proto: bool,
    duration: str | None,
    ghz_cpus: str | None,
    server: ServerProcess | None,
) -> dict:
    config = json.loads(path.read_text())
    service = config["call"].rsplit("/", 1)[0]
    report = out_dir / f"{path.stem}.json"
    cmd = [*taskset(ghz_cpus), tool("ghz"), "--config", str(path), "-O", "json", "-o", str(report)]
    if ghz_cpus:
        cmd += ["--cpus", str(len(ghz_cpus.split(",")))]
    if duration:
        cmd += ["-z", duration]
    if use_proto:
        cmd += ["--proto", PROTOS[service], "-i", "proto"]
    cmd.append(target)
    cpu0 = server.cpu_seconds() if server else None
    ghz0, t0 = children_cpu_seconds(), time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0 and not report.exists():
        raise RuntimeError(f"ghz failed on {path.name} ({done.returncode}): {done.stderr.strip()}")
    result = summarize(config, json.loads(report.read_text()))
    result.update(
        wall_s=round(wall, 2),
        ghz_cpu_s=round(children_cpu_seconds() - ghz0, 2),
        command=" ".join(cmd[cmd.index(tool("ghz")) :]).replace(str(ROOT) + "/", ""),
    )
    if server:
        result["server_cpu_s"] = round(server.cpu_seconds() - cpu0, 2)
    return result


def summarize(config: dict, report: dict) -> dict:
    """One scenario's figures from ghz's JSON report (durations there are nanoseconds)."""
    readings = int(config.get("tags", {}).get("readings_per_message", "0") or 0)
    per_call = int(config.get("stream-call-count", 0) or 1) if config["call"].endswith("/Stream") else 1
    total_s = report["total"] / 1e9
    ok = int(report.get("statusCodeDistribution", {}).get("OK", 0))
    lat = {d["percentage"]: d["latency"] / 1e6 for d in report.get("latencyDistribution") or []}
    messages_per_s = ok * per_call / total_s if total_s else 0.0
    return {
        "scenario": config["name"],
        "call": config["call"],
        "readings_per_message": readings,
        "messages_per_call": per_call,
        "concurrency": config.get("concurrency"),
        "connections": config.get("connections"),
        "calls": report["count"],
        "ok": ok,
        "errors": report["count"] - ok,
        "status": report.get("statusCodeDistribution", {}),
        "error_distribution": report.get("errorDistribution") or {},
        "elapsed_s": round(total_s, 2),
        "rps": round(report["rps"], 1),
        "messages_per_s": round(messages_per_s, 1),
        "readings_per_s": round(messages_per_s * readings, 1) if readings else None,
        "p50_ms": round(lat[50], 2) if 50 in lat else None,
        "p99_ms": round(lat[99], 2) if 99 in lat else None,
        "latency_is": "whole stream" if per_call > 1 else "per call",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--kafka", metavar="BOOTSTRAP", help="run the server as `iotstream serve --kafka BOOTSTRAP`"
    )
    ap.add_argument(
        "--target", help="use this already running server instead of starting one (no seeding, no server CPU)"
    )
    ap.add_argument(
        "--duration", help="override every scenario's duration, e.g. 3s or 60s (default: the configs' 10s)"
    )
    ap.add_argument("--only", nargs="+", metavar="SCENARIO", help="run only these (file names without .json)")
    ap.add_argument(
        "--descriptors",
        choices=["auto", "reflection", "proto"],
        default="auto",
        help="where ghz gets the message types (default auto: reflection if it works)",
    )
    ap.add_argument("--server-cpus", help="taskset CPU list for the server, e.g. 0 (default: unpinned)")
    ap.add_argument("--ghz-cpus", help="taskset CPU list for ghz, e.g. 1 (default: unpinned)")
    ap.add_argument(
        "--out-dir", default=str(RESULTS / "ghz"), help="where reports go (default bench/results/ghz)"
    )
    ap.add_argument("--json", action="store_true", help="print only the summary JSON on stdout")
    args = ap.parse_args(argv)

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = scenarios(args.only)
    server = None if args.target else ServerProcess(kafka=args.kafka, cpus=args.server_cpus).start()
    target = args.target or server.target
    try:
        if server:
            seed(target)
        problem = (
            reflection_problem(target) if args.descriptors != "proto" else "not tried (--descriptors proto)"
        )
        if args.descriptors == "reflection" and problem:
            raise SystemExit(f"server reflection cannot resolve method symbols: {problem}")
        use_proto = problem is not None
        results = []
        for path in paths:
            r = run_scenario(path, target, out_dir, use_proto, args.duration, args.ghz_cpus, server)
            results.append(r)
            print(
                f"{r['scenario']:<20} {r['ok']:>7} ok {r['errors']:>4} err  {r['messages_per_s']:>10,.0f} "
                "msg/s  "
                f"{r['readings_per_s'] or 0:>12,.0f} readings/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms "
                f"({r['latency_is']})",
                file=sys.stderr,
                flush=True,
            )
    finally:
        if server:
            server.stop()
    summary = {
        "benchmark": "ghz",
        "mode": "kafka" if args.kafka else "embedded",
        "descriptors": "proto files" if use_proto else "server reflection",
        "reflection_problem": problem if use_proto else None,
        "server_cpus": args.server_cpus,
        "ghz_cpus": args.ghz_cpus,
        "machine": machine(),
        "scenarios": results,
    }
    path = write_result("ghz/summary", summary, str(out_dir / "summary.json"))
    print(json.dumps(summary) if args.json else f"wrote {path}", flush=True)
    return 0 if all(r["ok"] > 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
