"""Our ingest beside the transport limit and the usual alternative, under the same load in the same run.

    python -m iotstream.bench.compare [--json] [--duration 5] [--sizes 1 1000] [--kafka BOOTSTRAP]
                            [--server-cpus 0 --loadgen-cpus 1] [--streams 8 --window 8]

Four servers, one at a time, each in its own process on a free loopback port:

  raw_grpc  bench/echo_server.py: a plain grpc.aio Ingest servicer that acks each ReadingBatch at once (the
            ceiling: what the transport and protobuf cost in Python, with nothing else done)
  ingest    `iotstream serve`: validate, queue, process, store in ClickHouse, ack when durable
  fastapi   bench/fastapi_peer.py: FastAPI/uvicorn POST /ingest of row JSON (pydantic per reading),
            enriched and handed to the same queue/processor/store, answered when durable
  ingest_front  bench/ingest_front.py: our IngestService over a queue that is durable at once (no
            processor, no store): splits the distance to raw_grpc into handler cost and storage wait

The same load generator (bench/loadgen.py, its own process) drives them all with the same readings:
for each size in --sizes (readings per message), `streams` devices with `window` messages outstanding each
(gRPC streams pipeline; HTTP uses streams x window keep-alive connections), closed loop. By default the
server is pinned to CPU 0 and the load generator to CPU 1, so each side has one core whatever the other does.

Prints (with --json, only) one JSON object: `ratio_vs_raw_grpc` and `ratio_vs_fastapi` per size ("1",
"1000": readings per message; ingest readings/s over the peer's readings/s), and under `results` each
server's absolute figures per size (messages/s, readings/s, ack p50/p99, server and load generator CPU
seconds). Also written to bench/results/compare.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from iotstream.bench.harness import PYTHON, ROOT, ServerProcess, machine, taskset, write_result

SERVERS = {
    "raw_grpc": {"module": "iotstream.bench.echo_server", "http": False},
    "ingest": {"module": None, "http": False},
    "ingest_front": {"module": "iotstream.bench.ingest_front", "http": False},
    "fastapi": {"module": "iotstream.bench.fastapi_peer", "http": True},
}


def loadgen(target: str, size: int, args) -> dict:
    cmd = [
        *taskset(args.loadgen_cpus),
        PYTHON,
        "-m",
        "iotstream.bench.loadgen",
        "--target",
        target,
        "--readings",
        str(size),
        "--streams",
        str(args.streams),
        "--window",
        str(args.window),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--prefix",
        f"cmp{size}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.duration + 120)
    if not done.stdout.strip():
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["command"] = " ".join(cmd[cmd.index(PYTHON) :]).replace(PYTHON, "python")
    return result


def measure(name: str, args) -> dict:
    spec = SERVERS[name]
    extra = []
    if (
        args.kafka and spec["module"] == "iotstream.bench.fastapi_peer"
    ):  # own topics: no backlog of earlier runs
        extra = ["--kafka", args.kafka, "--namespace", f"benchfastapi{os.getpid()}x{int(time.time())}"]
    server = ServerProcess(
        kafka=args.kafka if name == "ingest" else None,
        cpus=args.server_cpus,
        module=spec["module"],
        http=spec["http"],
        extra_args=extra,
    )
    out = {}
    with server:
        target = f"http://{server.target}/ingest" if spec["http"] else f"grpc://{server.target}"
        for size in args.sizes:
            cpu0 = server.cpu_seconds()
            t0 = time.perf_counter()
            r = loadgen(target, size, args)
            wall = time.perf_counter() - t0
            r["server_cpu_s"] = round(server.cpu_seconds() - cpu0, 2)
            r["server_cpu_share"] = round(r["server_cpu_s"] / wall, 2)  # cores busy, whole run incl. warm-up
            r["server_rss_mb"] = round(server.rss_bytes() / 2**20, 1)
            out[str(size)] = r
            print(
                f"{name:<9} {size:>5} readings/msg: {r['messages_per_s']:>9,.0f} msg/s "
                f"{r['readings_per_s']:>12,.0f} "
                f"readings/s  ack p50 {r['ack_p50_ms']} ms p99 {r['ack_p99_ms']} ms  errors {r['errors']}  "
                f"server {r['server_cpu_share']} cores",
                file=sys.stderr,
                flush=True,
            )
    return out


def ratio(a: dict, b: dict, size: str) -> float | None:
    x, y = a.get(size, {}).get("readings_per_s"), b.get(size, {}).get("readings_per_s")
    return round(x / y, 3) if x and y else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    ap.add_argument(
        "--duration", type=float, default=5.0, help="measured seconds per server and size (default 5)"
    )
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first (default 1)")
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=[1, 1000], help="readings per message (default 1 1000)"
    )
    ap.add_argument("--streams", type=int, default=8, help="devices/streams (default 8)")
    ap.add_argument("--window", type=int, default=8, help="messages outstanding per stream (default 8)")
    ap.add_argument(
        "--servers",
        nargs="+",
        choices=list(SERVERS),
        default=list(SERVERS),
        help="which servers (default all four)",
    )
    ap.add_argument("--kafka", metavar="BOOTSTRAP", help="ingest and the FastAPI peer hand over to Kafka")
    ap.add_argument(
        "--server-cpus", default="0", help="taskset CPUs for the servers (default 0; '' unpinned)"
    )
    ap.add_argument("--loadgen-cpus", default="1", help="taskset CPUs for the load generator (default 1)")
    ap.add_argument("--out", help="JSON path (default bench/results/compare.json)")
    args = ap.parse_args(argv)

    results = {name: measure(name, args) for name in args.servers}
    sizes = [str(s) for s in args.sizes]
    ingest = results.get("ingest", {})
    summary = {
        "benchmark": "compare",
        "mode": "kafka" if args.kafka else "embedded",
        "ratio_vs_raw_grpc": {s: ratio(ingest, results.get("raw_grpc", {}), s) for s in sizes},
        "ratio_vs_fastapi": {s: ratio(ingest, results.get("fastapi", {}), s) for s in sizes},
        "ratio_ingest_front_vs_raw_grpc": {
            s: ratio(results.get("ingest_front", {}), results.get("raw_grpc", {}), s) for s in sizes
        },
        "readings_per_s": {name: {s: r[s]["readings_per_s"] for s in sizes} for name, r in results.items()},
        "load": {
            "streams": args.streams,
            "window": args.window,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "server_cpus": args.server_cpus,
            "loadgen_cpus": args.loadgen_cpus,
        },
        "machine": machine(),
        "results": results,
    }
    path = write_result("compare", summary, args.out)
    print(
        json.dumps(summary)
        if args.json
        else json.dumps(
            {
                k: summary[k]
                for k in (
                    "ratio_vs_raw_grpc",
                    "ratio_vs_fastapi",
                    "ratio_ingest_front_vs_raw_grpc",
                    "readings_per_s",
                )
            },
            indent=2,
        )
    )
    if not args.json:
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
