"""Server CPU per message of the embedded `serve`, split by thread group, under many small messages.

    python -m iotstream.bench.profile.per_message [--readings 1] [--seconds 10] [--json]

Starts `iotstream serve` pinned to CPU 0 (with its metrics port) and bench/loadgen.py on CPU 1 (8 streams, 8
messages in flight each, closed loop), waits out a warm-up, and over the next --seconds reads the server's
per-thread CPU (/proc, bench.profile.sched), the readings it stored and the inserts it made (its Prometheus
counters). Prints CPU milliseconds per stored message: `python` (event loop with the ingest handler, the log
writer, the processor), `grpc` (grpc's `event_engine` threads) and `chdb` (every other thread: ClickHouse's
insert pipelines and merges), and the messages per insert. Per-message CPU rather than messages/s because it
holds on a shared machine: the load generator's core is the one other work takes first. Used for issue 13
(bench/profile/README.md section 10); `py-spy record --gil --threads --pid PID` beside it splits `python`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import urllib.request

from iotstream.bench.harness import ROOT, ServerProcess, free_port, loadgen_cmd

from .sched import sample


def counters(port: int) -> tuple[float, float]:
    """(readings stored, readings inserts) from the node's metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    stored = re.search(r"^iotstream_stored_readings_total (\S+)$", text, re.M)
    inserts = re.search(r'^iotstream_insert_seconds_count\{table="readings"\} (\S+)$', text, re.M)
    return float(stored.group(1)) if stored else 0.0, float(inserts.group(1)) if inserts else 0.0


def group(thread: str) -> str:
    return {"python": "python", "event_engine": "grpc"}.get(thread, "chdb")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=1, help="readings per message (default 1)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds (default 10)")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first (default 3)")
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    args = ap.parse_args(argv)

    metrics = free_port()
    with ServerProcess(cpus="0", extra_args=["--metrics-port", str(metrics)]) as server:
        pid = server.proc.pid
        load = subprocess.Popen(
            loadgen_cmd(
                server.target,
                "1",
                readings=args.readings,
                duration=args.warmup + args.seconds + 1,
                warmup=0,
                prefix="permsg",
            ),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            time.sleep(args.warmup)  # a fixed window of a steady load, not a wait for a condition
            before, (stored0, inserts0) = sample(pid), counters(metrics)
            time.sleep(args.seconds)
            after, (stored1, inserts1) = sample(pid), counters(metrics)
            loadgen = json.loads(load.communicate(timeout=120)[0].strip().splitlines()[-1])
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
    cpu: dict[str, float] = {"python": 0.0, "grpc": 0.0, "chdb": 0.0}
    for tid, (name, run, _, _) in after.items():
        cpu[group(name)] += (run - before.get(tid, (name, 0, 0, 0))[1]) / 1e9
    messages = (stored1 - stored0) / args.readings
    inserts = inserts1 - inserts0
    result = {
        "readings_per_message": args.readings,
        "seconds": args.seconds,
        "messages_stored": round(messages),
        "inserts": round(inserts),
        "messages_per_insert": round(messages / inserts, 1) if inserts else None,
        "server_cores": round(sum(cpu.values()) / args.seconds, 2),
        "cpu_ms_per_message": round(1000 * sum(cpu.values()) / messages, 3) if messages else None,
        "by_group_ms_per_message": {k: round(1000 * v / messages, 3) for k, v in cpu.items()}
        if messages
        else {},
        "loadgen_messages_per_s": loadgen.get("messages_per_s"),
        "ack_p50_ms": loadgen.get("ack_p50_ms"),
        "ack_p99_ms": loadgen.get("ack_p99_ms"),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    return 0 if messages else 1


if __name__ == "__main__":
    sys.exit(main())
