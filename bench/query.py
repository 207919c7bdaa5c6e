"""Query benchmark: load N synthetic readings straight into the store, then time Query RPCs over gRPC.

    python -m iotstream.bench.query [--rows 100000000] [--devices 1000] [--days 30] [--data sensor|simulator]
                          [--samples 200] [--load-only] [--json]

Readings are the simulator's signal (daily cycle, drift, noise, 0.1% spikes) for `--devices` devices x 3
metrics, evenly spaced over the last `--days` days, loaded in time order as Arrow tables through
Store.insert_readings (the materialized views run as in production); spikes go in as flagged readings
through Store.insert_anomalies. `--data sensor` rounds values to a sensor's resolution (0.01 degC, 0.1 %RH,
0.1 hPa); `--data simulator` keeps them at full float64 precision, as `iotstream simulate` sends them.

Then an EmbeddedServer on the same data answers, over a loopback gRPC channel, `--samples` calls each of
GetDevice, GetHistory (1 hour), Aggregate (1 device, last 24 h, 1-minute buckets), Aggregate (all devices
merged, last 30 days, 1-hour buckets) and ListAnomalies (first page, newest first). Progress goes to stderr;
the result is one JSON object on stdout (also written to bench/results/query.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa

from iotstream.clickhouse import Store, open_backend
from iotstream.client.simulate import METRICS, PROFILES
from iotstream.v1 import query_pb2 as pb
from iotstream.v1 import query_pb2_grpc

DAY_MS, HOUR_MS = 86_400_000, 3_600_000
RESOLUTION = (0.01, 0.1, 0.1)  # per metric, for --data sensor
SPIKE_FRACTION = 0.001
Z_THRESHOLD = 6.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Fleet:
    """The simulator's signal model, vectorised over devices so that a time slice is one array op."""

    def __init__(self, devices: int, rows: int, days: float, end_ms: int, data: str, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.ids = np.array([f"dev-{i:05d}" for i in range(devices)])
        self.points = max(1, rows // (devices * len(METRICS)))  # per (device, metric)
        self.interval = max(1, int(days * DAY_MS) // self.points)
        self.offset = self.rng.integers(0, self.interval, devices)  # devices do not report in lockstep
        self.start = end_ms - self.points * self.interval
        self.phase = self.rng.uniform(0, 2 * math.pi, devices)
        self.scale = self.rng.uniform(0.95, 1.05, devices)
        self.data = data

    def slice(self, first: int, count: int) -> tuple[pa.Table, pa.Table]:
        """Points [first, first + count) of every series: (readings, flagged readings)."""
        n_dev, n_met = len(self.ids), len(METRICS)
        point = np.arange(first, first + count)
        # shape (points, devices, metrics), flattened in time order
        t = self.start + point[:, None] * self.interval + self.offset[None, :]
        t = np.broadcast_to(t[:, :, None], (count, n_dev, n_met))
        prof = np.array(PROFILES)
        days = (t - self.start) / DAY_MS
        v = (
            prof[:, 0] * self.scale[None, :, None]
            + prof[:, 1] * np.sin(2 * math.pi * t / DAY_MS + self.phase[None, :, None])
            + prof[:, 3] * days
            + self.rng.standard_normal(t.shape) * prof[:, 2]
        )
        spikes = self.rng.random(t.shape) < SPIKE_FRACTION
        size = self.rng.uniform(12, 20, t.shape) * self.rng.choice([-1.0, 1.0], t.shape)
        v = np.where(spikes, v + size * prof[:, 2], v)
        if self.data == "sensor":
            res = np.array(RESOLUTION)
            v = np.round(v / res) * res
        dev = np.broadcast_to(np.arange(n_dev, dtype=np.int32)[None, :, None], t.shape).ravel()
        met = np.broadcast_to(np.arange(n_met, dtype=np.int32)[None, None, :], t.shape).ravel()
        readings = table(self.ids, dev, met, t.ravel(), v.ravel())
        sel = np.flatnonzero(spikes.ravel())
        z = np.abs(size.ravel()[sel])
        u = np.log1p(z / Z_THRESHOLD)
        flagged = table(self.ids, dev[sel], met[sel], t.ravel()[sel], v.ravel()[sel])
        flagged = flagged.append_column("kind", pa.array(["zscore"] * len(sel), pa.string()))
        flagged = flagged.append_column("score", pa.array(u / (1 + u), pa.float64()))
        flagged = flagged.append_column("zscore", pa.array(np.sign(size.ravel()[sel]) * z, pa.float64()))
        return readings, flagged


def table(ids, dev, met, t, v) -> pa.Table:
    return pa.table(
        {
            "device_id": pa.DictionaryArray.from_arrays(
                pa.array(dev, pa.int32()), pa.array(ids, pa.string())
            ),
            "metric": pa.DictionaryArray.from_arrays(
                pa.array(met, pa.int32()), pa.array(METRICS, pa.string())
            ),
            "time": pa.array(np.asarray(t, np.int64), pa.timestamp("ms", tz="UTC")),
            "value": pa.array(np.asarray(v, np.float64)),
        }
    )


def load(store: Store, fleet: Fleet, batch_rows: int) -> dict:
    per_slice = max(1, batch_rows // (len(fleet.ids) * len(METRICS)))
    total = fleet.points * len(fleet.ids) * len(METRICS)
    done = flagged = 0
    spent = {"generate": 0.0, "readings": 0.0, "anomalies": 0.0}
    started = last = time.perf_counter()
    for first in range(0, fleet.points, per_slice):
        t = time.perf_counter()
        readings, anomalies = fleet.slice(first, min(per_slice, fleet.points - first))
        spent["generate"] += time.perf_counter() - t
        t = time.perf_counter()
        store.insert_readings(readings, token=f"bench-{first}")
        spent["readings"] += time.perf_counter() - t
        t = time.perf_counter()
        if anomalies.num_rows:
            store.insert_anomalies(anomalies, token=f"bench-{first}:anomalies")
        spent["anomalies"] += time.perf_counter() - t
        done += readings.num_rows
        flagged += anomalies.num_rows
        if time.perf_counter() - last > 5 or done == total:
            last = time.perf_counter()
            rate = done / (last - started)
            log(
                f"  loaded {done:,}/{total:,} readings ({rate:,.0f}/s, {flagged:,} flagged), "
                f"eta {(total - done) / rate:,.0f} s"
            )
    return {
        "rows": done,
        "flagged": flagged,
        "load_s": round(time.perf_counter() - started, 1),
        "load_rows_per_s": round(done / (time.perf_counter() - started)),
        # where the load time went: making the data, inserting readings (and their views), inserting
        # flagged readings (and recomputing their episodes)
        "load_split_s": {k: round(v, 1) for k, v in spent.items()},
    }


def storage(store: Store, optimize: bool) -> dict:
    if optimize:  # steady state: what background merges converge to, without waiting for them
        for table in ("readings", "rollup_1m", "rollup_1h", "rollup_1d", "anomaly_episodes"):
            log(f"  merging {table} parts (OPTIMIZE FINAL) ...")
            store.backend.command(f"OPTIMIZE TABLE {store.db}.{table} FINAL")
    parts = store.backend.query(
        "SELECT table, sum(rows) AS rows, sum(bytes_on_disk) AS bytes, count() AS parts FROM system.parts "
        "WHERE database = {d:String} AND active GROUP BY table ORDER BY table",
        {"d": store.db},
    ).to_pylist()
    cols = store.backend.query(  # compact (small) parts do not report per-column sizes
        "SELECT column AS name, sum(column_data_compressed_bytes) AS c FROM system.parts_columns "
        "WHERE database = {d:String} AND table = 'readings' AND active GROUP BY name",
        {"d": store.db},
    ).to_pylist()
    by_table = {p["table"]: p for p in parts}
    rows = by_table["readings"]["rows"]
    return {
        "bytes_per_reading": round(by_table["readings"]["bytes"] / rows, 3),
        # per column only from wide parts (compact parts, under ~10 MB, do not report column sizes)
        "column_bytes_per_reading": {c["name"]: round(c["c"] / rows, 3) for c in cols if c["c"]},
        "tables": {
            t: {"rows": p["rows"], "bytes": p["bytes"], "parts": p["parts"]} for t, p in by_table.items()
        },
    }


class ServerThread:
    """The embedded server on its own event loop, as `iotstream serve` runs it."""

    def __init__(self, data_dir: str, database: str):
        from iotstream.node import Config, EmbeddedServer

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = EmbeddedServer(Config(port=0, data_dir=data_dir, database=database))
        port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(120)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.query = query_pb2_grpc.QueryStub(self.channel)

    def stop(self) -> None:
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(120)
        self.loop.call_soon_threadsafe(self.loop.stop)


def scenarios(fleet: Fleet, rng: np.random.Generator, now_ms: int) -> dict:
    """Name -> function giving (RPC name, request) for one call."""

    def device():
        return str(fleet.ids[rng.integers(len(fleet.ids))])

    def hour():
        start = int(rng.integers(fleet.start, now_ms - HOUR_MS))
        return pb.GetHistoryRequest(device_id=device(), start_ms=start, end_ms=start + HOUR_MS)

    return {
        "GetDevice": lambda: ("GetDevice", pb.GetDeviceRequest(device_id=device())),
        "GetHistory": lambda: ("GetHistory", hour()),
        "Aggregate_device_day_1m": lambda: (
            "Aggregate",
            pb.AggregateRequest(
                device_ids=[device()], start_ms=now_ms - DAY_MS, end_ms=now_ms, interval_ms=60_000
            ),
        ),
        "Aggregate_fleet_30d_1h": lambda: (
            "Aggregate",
            pb.AggregateRequest(
                start_ms=now_ms - 30 * DAY_MS, end_ms=now_ms, interval_ms=HOUR_MS, merge_devices=True
            ),
        ),
        "ListAnomalies": lambda: ("ListAnomalies", pb.ListAnomaliesRequest()),
    }


def measure(stub, make, samples: int) -> tuple[float, float, object]:
    for _ in range(max(3, samples // 20)):  # warm caches and connections
        method, request = make()
        getattr(stub, method)(request, timeout=60)
    times = []
    reply = None
    for _ in range(samples):
        method, request = make()
        t = time.perf_counter()
        reply = getattr(stub, method)(request, timeout=60)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), reply


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100_000_000, help="readings to load (default 100,000,000)")
    p.add_argument("--devices", type=int, default=1000, help="devices, each with 3 metrics (default 1000)")
    p.add_argument("--days", type=float, default=30.0, help="span of the data, ending now (default 30)")
    p.add_argument(
        "--data",
        choices=["sensor", "simulator"],
        default="sensor",
        help="values at sensor resolution, or full precision as the simulator sends (default sensor)",
    )
    p.add_argument("--batch", type=int, default=1_000_000, help="readings per insert (default 1,000,000)")
    p.add_argument("--samples", type=int, default=200, help="timed calls per RPC (default 200)")
    p.add_argument("--data-dir", default=None, help="chDB folder (default: a new temporary folder)")
    p.add_argument("--load-only", action="store_true", help="load and measure storage, no RPC timings")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="time the RPCs on the data an earlier run left in --data-dir (no load; same other options)",
    )
    p.add_argument("--no-optimize", action="store_true", help="measure bytes without merging parts first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    args = p.parse_args(argv)
    if args.days > 29.5:
        # TTL drops rows past the 30-day retention at insert; stay just inside it.
        args.days = 29.5
        log("  --days capped at 29.5 to stay inside the 30-day retention")

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="iotstream-bench-")
    database = "bench_" + uuid.uuid4().hex[:8]
    if args.reuse:
        if not args.data_dir:
            p.error("--reuse needs the --data-dir of an earlier run")
        found = (
            open_backend(data_dir=data_dir, database="default")
            .query("SELECT name FROM system.databases WHERE startsWith(name, 'bench_')")
            .column("name")
            .to_pylist()
        )
        if len(found) != 1:
            p.error(f"--reuse: expected one bench_ database in {data_dir}, found {found}")
        database = found[0]
    now_ms = time.time_ns() // 1_000_000
    fleet = Fleet(args.devices, args.rows, args.days, now_ms - 60_000, args.data, args.seed)
    store = Store(open_backend(data_dir=data_dir, database=database))
    result = {
        "rows": 0,
        "data": args.data,
        "devices": args.devices,
        "days": args.days,
        "interval_s": fleet.interval / 1000,
        "cpus": os.cpu_count(),
        "loadavg_1m_before": round(os.getloadavg()[0], 2),
    }
    if args.reuse:
        log(f"timing the data already in {data_dir} ({database})")
        result["reused"] = True
    else:
        log(
            f"loading {fleet.points * args.devices * len(METRICS):,} readings ({args.devices} devices x "
            f"{len(METRICS)} metrics, one every {fleet.interval / 1000:.1f} s) into {data_dir} ({database})"
        )
        store.migrate()
        result.update(load(store, fleet, args.batch))
    result.update(storage(store, not args.no_optimize and not args.reuse))
    result["rows"] = result["tables"]["readings"]["rows"]
    log(f"  {result['bytes_per_reading']} bytes/reading on disk")

    if not args.load_only:
        srv = ServerThread(data_dir, database)
        try:
            rng = np.random.default_rng(args.seed + 1)
            result["p50_ms"], result["p99_ms"], result["replies"] = {}, {}, {}
            for name, make in scenarios(fleet, rng, time.time_ns() // 1_000_000).items():
                p50, p99, reply = measure(srv.query, make, args.samples)
                result["p50_ms"][name], result["p99_ms"][name] = round(p50, 2), round(p99, 2)
                result["replies"][name] = summary(reply)
                log(f"  {name:<26} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms   ({result['replies'][name]})")
        finally:
            srv.stop()
        # Other work on the machine shows here; latencies on a busy machine are not the store's.
        result["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    store.backend.close()

    out = Path(__file__).parent / "results" / "query.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


def summary(reply) -> str:
    """What the last reply held, so that a fast empty answer is visible as such."""
    if isinstance(reply, pb.Device):
        return f"{len(reply.latest)} metrics"
    if isinstance(reply, pb.GetHistoryResponse):
        return f"{sum(len(s.values) for s in reply.series)} readings"
    if isinstance(reply, pb.AggregateResponse):
        return f"{sum(len(s.bucket_start_ms) for s in reply.series)} buckets from {'+'.join(reply.sources)}"
    if isinstance(reply, pb.ListAnomaliesResponse):
        return f"{len(reply.anomalies)} anomalies"
    return type(reply).__name__


if __name__ == "__main__":
    sys.exit(main())
