"""End to end: simulated devices -> ingest -> queue (local or Kafka) -> processor -> ClickHouse -> Query.

    python -m iotstream.bench.e2e [--kafka BOOTSTRAP] [--duration 20] [--rate READINGS/S] [--queries N]
                                  [--json]

Starts `iotstream serve` (embedded, or `--kafka BOOTSTRAP`) in its own process and drives it with
bench/loadgen.py in another (devices on long-lived Ingest/Stream calls, batches of --batch readings,
closed loop, or open loop at --rate). Meanwhile this process:

- samples the readings stored (Query/GetStats every second); `readings_per_s` is the growth of that count
  over the measured interval, i.e. counted where rows became queryable, not where they were acked, divided
  by the time between the stores the two samples saw last (GetStats' `last_stored_ms`; its stored figures
  may be up to 1 s old under load, and each sample's count and time come from one statement);
- sends a marker reading every --marker-every seconds (Ingest/Send, its own device, a unique time) and
  polls Query/GetHistory for it every --poll-ms; `queryable_p50_ms`/`queryable_p99_ms` are send-to-visible;
- measures CPU seconds per component: the server process (and its threads grouped by OS thread name, e.g.
  Python vs ClickHouse's pools vs gRPC's), the load generator process, this process (markers and polling),
  and the Kafka broker when one listens on the bootstrap port;
- with --queries N, calls what a dashboard calls while the load runs, one call at a time in turn, N of each
  spread over the measured interval: GetDevice (a loaded device), Aggregate (a loaded device, the last
  10 minutes in 1-minute buckets) and GetStats; `queries` gives each one's p50/p99 over gRPC.

`ack_p50_ms`/`ack_p99_ms` are the load generator's send-to-Ack latencies of its batches. Prints one JSON
object (with --json, only that) and writes bench/results/e2e.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from iotstream.bench.harness import (
    PYTHON,
    ROOT,
    ServerProcess,
    cpu_seconds,
    load_shape,
    loadgen_cmd,
    machine,
    pct,
    self_cpu_seconds,
    write_result,
)

MARKER_DEVICE = "e2e-marker"


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per OS thread name of a process (/proc/PID/task/*/comm)."""
    import psutil

    out: collections.Counter[str] = collections.Counter()
    for t in psutil.Process(pid).threads():
        try:
            name = Path(f"/proc/{pid}/task/{t.id}/comm").read_text().strip()
        except OSError:
            name = "?"
        out[name] += t.user_time + t.system_time
    return dict(out)


def broker_pid(bootstrap: str | None) -> int | None:
    """The process listening on the bootstrap's port on this machine, if any (the local Kafka broker)."""
    if not bootstrap:
        return None
    import psutil

    port = int(bootstrap.split(",")[0].rsplit(":", 1)[1])
    try:
        for c in psutil.net_connections("tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return c.pid
    except psutil.AccessDenied:
        return None
    return None


class Probe:
    """Markers and stored-row samples, on a gRPC channel of its own, in a thread with its own event loop.

    One poller looks for every outstanding marker with a single GetHistory per tick, so the query load
    stays at 1000 / poll_ms per second however far the markers lag (polls share chDB with the inserts)."""

    def __init__(
        self, target: str, marker_every: float, poll_ms: float, give_up_s: float = 60.0, queries=None
    ):
        self.target, self.marker_every, self.poll_s, self.give_up_s = (
            target,
            marker_every,
            poll_ms / 1000,
            give_up_s,
        )
        self.queries = queries  # QueryLoad or None
        self.samples: list[tuple[float, int, int]] = []  # (perf_counter, readings stored, last_stored_ms)
        self.markers: list[dict] = []
        self.waiting: dict[int, dict] = {}  # seq -> marker record, acked and not yet visible
        self.poll_errors = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.main()), daemon=True)

    async def main(self) -> None:
        import grpc

        from iotstream.v1 import ingest_pb2_grpc, query_pb2_grpc

        async with grpc.aio.insecure_channel(self.target) as ch:
            self.ingest, self.query = ingest_pb2_grpc.IngestStub(ch), query_pb2_grpc.QueryStub(ch)
            self.sends: list[asyncio.Task] = []
            sampler = asyncio.create_task(self.sample_loop())
            marker = asyncio.create_task(self.marker_loop())
            poller = asyncio.create_task(self.poll_loop())
            if self.queries is not None:
                dashboard = asyncio.create_task(self.queries.run(self.query))
            while not self.stop.is_set():
                await asyncio.sleep(0.05)
            sampler.cancel()
            marker.cancel()
            await asyncio.gather(sampler, marker, *self.sends, return_exceptions=True)
            if self.queries is not None:
                dashboard.cancel()
                await asyncio.gather(dashboard, return_exceptions=True)
            # Let the poller find the markers still in flight (each gives up after give_up_s).
            while (
                self.waiting
                and time.perf_counter() < min(m["sent"] for m in self.waiting.values()) + self.give_up_s
            ):
                await asyncio.sleep(0.05)
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)

    async def sample_loop(self) -> None:
        from iotstream.v1 import query_pb2 as qpb

        while True:
            try:
                stats = await self.query.GetStats(qpb.GetStatsRequest(), timeout=10)
                self.samples.append((time.perf_counter(), stats.readings, stats.last_stored_ms))
            except Exception:
                self.poll_errors += 1
            await asyncio.sleep(1.0)

    async def marker_loop(self) -> None:
        seq = 0
        while True:
            seq += 1
            self.sends.append(asyncio.create_task(self.send_marker(seq)))
            await asyncio.sleep(self.marker_every)

    async def send_marker(self, seq: int) -> None:
        from iotstream.v1 import ingest_pb2 as pb

        t_ms = time.time_ns() // 1_000_000
        batch = pb.ReadingBatch(
            device_id=MARKER_DEVICE,
            seq=seq,
            base_time_ms=t_ms,
            time_offset_ms=[0],
            metric_names=["marker"],
            metric_index=[0],
            values=[float(seq)],
        )
        rec = {"seq": seq, "sent": time.perf_counter(), "time_ms": t_ms}
        self.markers.append(rec)
        try:
            await self.ingest.Send(batch, timeout=60)
            rec["acked"] = time.perf_counter()
            self.waiting[seq] = rec
        except Exception as exc:
            rec["error"] = str(exc)[:200]

    async def poll_loop(self) -> None:
        from iotstream.v1 import query_pb2 as qpb

        while True:
            await asyncio.sleep(self.poll_s)
            now = time.perf_counter()
            for seq in [s for s, m in self.waiting.items() if now - m["sent"] > self.give_up_s]:
                del self.waiting[seq]
            if not self.waiting:
                continue
            times = [m["time_ms"] for m in self.waiting.values()]
            req = qpb.GetHistoryRequest(
                device_id=MARKER_DEVICE,
                metrics=["marker"],
                start_ms=min(times),
                end_ms=max(times) + 1,
                page_size=10_000,
            )
            try:
                reply = await self.query.GetHistory(req, timeout=10)
            except Exception:
                self.poll_errors += 1
                continue
            seen = time.perf_counter()
            for series in reply.series:
                for value in series.values:
                    rec = self.waiting.pop(int(value), None)
                    if rec is not None:
                        rec["visible"] = seen


class QueryLoad:
    """--queries: a dashboard's calls during the measured interval [t0, t1) (perf_counter), one at a time in
    turn (GetDevice, Aggregate, GetStats), `calls` of each, evenly spaced; latencies per call name."""

    def __init__(self, calls: int, t0: float, t1: float, devices: list[str]):
        self.calls, self.t0, self.t1, self.devices = calls, t0, t1, devices
        self.ms: dict[str, list[float]] = {"GetDevice": [], "Aggregate_10m_1m": [], "GetStats": []}
        self.errors: collections.Counter[str] = collections.Counter()

    async def run(self, query) -> None:
        from iotstream.v1 import query_pb2 as qpb

        def request(name: str, i: int):
            device = self.devices[i % len(self.devices)]
            if name == "GetDevice":
                return query.GetDevice(qpb.GetDeviceRequest(device_id=device), timeout=10)
            if name == "GetStats":
                return query.GetStats(qpb.GetStatsRequest(), timeout=10)
            now = time.time_ns() // 1_000_000
            return query.Aggregate(
                qpb.AggregateRequest(
                    device_ids=[device], start_ms=now - 600_000, end_ms=now, interval_ms=60_000
                ),
                timeout=10,
            )

        names = list(self.ms)
        step = (self.t1 - self.t0) / (self.calls * len(names))
        for k in range(self.calls * len(names)):
            await asyncio.sleep(max(0.0, self.t0 + k * step - time.perf_counter()))
            name = names[k % len(names)]
            t = time.perf_counter()
            try:
                await request(name, k // len(names))
                self.ms[name].append((time.perf_counter() - t) * 1000)
            except Exception as exc:
                self.errors[f"{name}: {str(exc)[:120]}"] += 1

    def result(self) -> dict:
        out: dict = {
            name: {"calls": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99), "max_ms": pct(v, 100)}
            for name, v in self.ms.items()
        }
        out["errors"] = dict(self.errors)
        return out


def rate_between(samples: list[tuple[float, int, int]], t0: float, t1: float) -> tuple[float | None, int]:
    """Readings/s stored between the first and last samples taken in [t0, t1]: their counts' growth over the
    time between the stores each counted last (interpolation-free); samples from before the first store
    (no `last_stored_ms` yet) do not count."""
    inside = [s for s in samples if t0 <= s[0] <= t1 and s[2] > 0]
    if len(inside) < 2 or inside[-1][2] <= inside[0][2]:
        return None, 0
    (_, a_n, a_ms), (_, b_n, b_ms) = inside[0], inside[-1]
    return (b_n - a_n) / ((b_ms - a_ms) / 1000), b_n - a_n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kafka", metavar="BOOTSTRAP", help="run `iotstream serve --kafka BOOTSTRAP`")
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds (default 20)")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first (default 3)")
    ap.add_argument("--batch", type=int, default=1000, help="readings per batch (default 1000)")
    ap.add_argument("--streams", type=int, default=16, help="devices, one stream each (default 16)")
    ap.add_argument("--window", type=int, default=8, help="batches in flight per stream (default 8)")
    ap.add_argument("--rate", type=float, help="offered readings/s (default: closed loop, as fast as acked)")
    ap.add_argument("--marker-every", type=float, default=0.5, help="seconds between markers (default 0.5)")
    ap.add_argument("--poll-ms", type=float, default=25.0, help="marker poll interval (default 25)")
    ap.add_argument("--server-cpus", help="taskset CPUs for the server (default: unpinned)")
    ap.add_argument("--loadgen-cpus", help="taskset CPUs for the load generator (default: unpinned)")
    ap.add_argument(
        "--queries", type=int, default=0, help="dashboard calls of each kind while loading (default 0: none)"
    )
    ap.add_argument("--out", help="JSON path (default bench/results/e2e.json)")
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    args = ap.parse_args(argv)

    server = ServerProcess(kafka=args.kafka, cpus=args.server_cpus).start()
    lg = None
    try:
        broker = broker_pid(args.kafka)
        cmd = loadgen_cmd(
            server.target,
            args.loadgen_cpus,
            **load_shape(args),
            duration=args.duration,
            prefix="e2e",
            rate=args.rate / args.batch if args.rate else None,
        )
        t_start = time.perf_counter()
        m0 = t_start + args.warmup
        m1 = m0 + args.duration
        devices = [f"e2e-{i:05d}" for i in range(args.streams)]  # loadgen's names, see --prefix above
        queries = QueryLoad(args.queries, m0, m1, devices) if args.queries else None
        probe = Probe(server.target, args.marker_every, args.poll_ms, queries=queries)
        probe.thread.start()
        lg = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # CPU over the measured interval only.
        time.sleep(max(0.0, m0 - time.perf_counter()))
        cpu = {"server": server.cpu_seconds(), "probe": self_cpu_seconds()}
        threads0 = thread_cpu(server.proc.pid)
        if broker:
            cpu["kafka_broker"] = cpu_seconds(broker)
        time.sleep(max(0.0, m1 - time.perf_counter()))
        cpu1 = {"server": server.cpu_seconds(), "probe": self_cpu_seconds()}
        threads1 = thread_cpu(server.proc.pid)
        if broker:
            cpu1["kafka_broker"] = cpu_seconds(broker)
        out, err = lg.communicate(timeout=args.duration + 120)
        time.sleep(1.5)  # one more stored-rows sample after the load stopped
        probe.stop.set()
        probe.thread.join(probe.give_up_s + 15)
    finally:  # on success, error and Ctrl-C alike: end what this run started
        if lg is not None and lg.poll() is None:
            lg.kill()
            lg.wait()
        server.stop()
    if not out.strip():
        raise SystemExit(f"load generator failed: {err.strip()[-2000:]}")
    load = json.loads(out.strip().splitlines()[-1])
    stored_rate, stored = rate_between(probe.samples, m0 - 0.5, m1 + 0.5)
    in_window = [m for m in probe.markers if m0 <= m["sent"] < m1]
    acked = [(m["acked"] - m["sent"]) * 1000 for m in in_window if "acked" in m]
    visible = [(m["visible"] - m["sent"]) * 1000 for m in in_window if "visible" in m]
    cpu_s = {k: round(cpu1[k] - cpu[k], 2) for k in cpu1}
    cpu_s["load_generator"] = load["loadgen_cpu_s"]  # its whole run, warm-up included
    threads = {k: round(threads1.get(k, 0) - threads0.get(k, 0), 2) for k in threads1}
    result = {
        "benchmark": "e2e",
        "mode": "kafka" if args.kafka else "embedded",
        "duration_s": args.duration,
        "batch_readings": args.batch,
        "streams": args.streams,
        "window": args.window,
        "offered_readings_per_s": args.rate,
        "readings_per_s": round(stored_rate, 1) if stored_rate else None,
        "readings_stored_in_window": stored,
        "acked_readings_per_s": load["readings_per_s"],
        "ack_p50_ms": load["ack_p50_ms"],
        "ack_p99_ms": load["ack_p99_ms"],
        "queryable_p50_ms": pct(visible, 50),
        "queryable_p99_ms": pct(visible, 99),
        "markers": len(in_window),
        "markers_visible": len(visible),
        "marker_ack_p50_ms": pct(acked, 50),
        "marker_ack_p99_ms": pct(acked, 99),
        "queries": queries.result() if queries else None,
        "poll_errors": probe.poll_errors,
        "load_errors": load["errors"],
        "load_error_samples": load["error_samples"],
        "cpu_s": cpu_s,
        "cpu_cores": {k: round(v / args.duration, 2) for k, v in cpu_s.items() if k != "load_generator"},
        "server_threads_cpu_s": dict(sorted(threads.items(), key=lambda kv: -kv[1])),
        "load_command": " ".join(cmd[cmd.index(PYTHON) :]).replace(PYTHON, "python"),
        "machine": machine(),
    }
    path = write_result("e2e", result, args.out)
    if not args.json:
        print(
            f"stored {result['readings_per_s'] or 0:,.0f} readings/s (acked "
            f"{load['readings_per_s']:,.0f}/s); "
            f"ack p50 {result['ack_p50_ms']} ms p99 {result['ack_p99_ms']} ms; queryable p50 "
            f"{result['queryable_p50_ms']} ms p99 {result['queryable_p99_ms']} ms; cpu {cpu_s}",
            file=sys.stderr,
        )
        for name, q in (result["queries"] or {}).items():
            print(f"  {name}: {q}", file=sys.stderr)
        print(f"wrote {path}", file=sys.stderr)
    print(json.dumps(result))
    return 0 if result["readings_per_s"] else 1


if __name__ == "__main__":
    sys.exit(main())
