"""What one insert into `readings` costs, with the schema's materialized views and without them.

    python -m iotstream.bench.profile.store_insert [--rows 1000 10000 100000] [--inserts 20] [--json]

Builds the real schema (Store.migrate) in throwaway chDB databases, then times --inserts inserts of --rows
readings each (1,000 devices x 3 metrics, times within the last minutes, one token per insert like the
embedded processor) for three variants of the same database:
  full      the schema as migrated (readings + device_metrics view + rollup_1m/1h/1d views)
  cascade   rollup_1h and rollup_1d fed from rollup_1m's inserts instead of from readings
  no_quantiles  the three rollup views without their quantilesTDigest state
  no_rollups  the three rollup views dropped
  bare      every materialized view on readings dropped
and reports per variant and size: wall ms per insert, process CPU ms per insert (foreground and
background merge threads together, measured across the run plus a 2 s settle), and CPU ns per reading.
Drops happen only in these temporary databases; the product schema is untouched.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

VARIANTS = {
    "full": [],
    "cascade": ["rollup_1h_mv", "rollup_1d_mv"],  # then re-created on rollup_1m, see CASCADE
    "no_quantiles": ["rollup_1m_mv", "rollup_1h_mv", "rollup_1d_mv"],  # re-created without q, see NO_Q
    "no_rollups": ["rollup_1m_mv", "rollup_1h_mv", "rollup_1d_mv"],
    "bare": None,  # every view that reads from readings
}
# The 1h and 1d rollups fed from rollup_1m's inserted blocks (one row per device, metric and minute) instead
# of from every reading: states merge with -MergeState, sums and extremes with sum/min/max.
CASCADE = """
CREATE MATERIALIZED VIEW {db}.rollup_{unit}_mv TO {db}.rollup_{unit} AS
SELECT device_id, metric, toDateTime(toStartOf{fn}(m.bucket), 'UTC') AS bucket,
       sum(m.n) AS n, sum(m.total) AS total, min(m.lo) AS lo, max(m.hi) AS hi,
       stddevSampStableMergeState(m.sd) AS sd, quantilesTDigestMergeState(0.5, 0.95, 0.99)(m.q) AS q
FROM {db}.rollup_1m AS m
GROUP BY device_id, metric, bucket"""
# The rollup views as migrated, minus the quantilesTDigest state (q keeps its default, an empty state).
NO_Q = """
CREATE MATERIALIZED VIEW {db}.rollup_{unit}_mv TO {db}.rollup_{unit} AS
SELECT device_id, metric, toDateTime(toStartOf{fn}(time), 'UTC') AS bucket,
       count() AS n, sum(value) AS total, min(value) AS lo, max(value) AS hi, stddevSampStableState(value) AS
       sd
FROM {db}.readings
GROUP BY device_id, metric, bucket"""


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def readings(rows: int, k: int) -> pa.Table:
    devices = [f"dev-{i:04d}" for i in range(1000)]
    i = np.arange(rows)
    now = time.time_ns() // 1_000_000
    t = now - 600_000 + (k * rows + i) // 3 * 7 % 600_000
    return pa.table(
        {
            "device_id": pa.DictionaryArray.from_arrays(
                pa.array((i // 3 % 1000).astype(np.int32)), pa.array(devices)
            ),
            "metric": pa.DictionaryArray.from_arrays(
                pa.array((i % 3).astype(np.int32)), pa.array(["temperature", "humidity", "pressure"])
            ),
            "time": pa.array(t, pa.timestamp("ms", tz="UTC")),
            "value": pa.array(np.random.default_rng(k).normal(20, 1, rows)),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--inserts", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from iotstream.clickhouse import Store, open_backend
    from iotstream.clickhouse.store import StoreConfig

    path = tempfile.mkdtemp(prefix="store-insert-")
    results = {}
    for variant, drop in VARIANTS.items():
        for rows in args.rows:
            db = f"p_{variant}_{rows}"
            store = Store(open_backend(data_dir=path, database=db), StoreConfig())
            store.migrate()
            if drop is None:
                views = (
                    store.backend.query(
                        "SELECT name FROM system.tables WHERE database = {db:String} AND engine = "
                        "'MaterializedView'",
                        {"db": db},
                    )
                    .column("name")
                    .to_pylist()
                )
                drop = views
            drop = list(drop)
            for view in drop:
                store.backend.command(f"DROP VIEW IF EXISTS {db}.{view}")
            if variant == "no_quantiles":
                for unit, fn in (("1m", "Minute"), ("1h", "Hour"), ("1d", "Day")):
                    store.backend.command(NO_Q.format(db=db, unit=unit, fn=fn))
            if variant == "cascade":
                for unit, fn in (("1h", "Hour"), ("1d", "Day")):
                    store.backend.command(CASCADE.format(db=db, unit=unit, fn=fn))
            tables = [readings(rows, k) for k in range(args.inserts)]
            c0, t0 = cpu(), time.perf_counter()
            for k, table in enumerate(tables):
                store.insert_readings(table, f"bench-{variant}-{rows}-{k}")
            wall = time.perf_counter() - t0
            time.sleep(2.0)  # let background merges of this run finish and count
            used = cpu() - c0
            parts = (
                store.backend.query(
                    "SELECT count() AS n FROM system.parts WHERE database = {db:String} AND active",
                    {"db": db},
                )
                .column("n")
                .to_pylist()[0]
            )
            results.setdefault(variant, {})[str(rows)] = {
                "wall_ms_per_insert": round(wall / args.inserts * 1000, 1),
                "cpu_ms_per_insert": round(used / args.inserts * 1000, 1),
                "cpu_ns_per_reading": round(used / args.inserts / rows * 1e9),
                "active_parts_after": parts,
                "dropped_views": drop,
            }
            r = results[variant][str(rows)]
            print(
                f"{variant:<11} {rows:>7} rows: {r['wall_ms_per_insert']:>7} ms wall, "
                f"{r['cpu_ms_per_insert']:>7} ms CPU "
                f"per insert, {r['cpu_ns_per_reading']:>6} ns CPU/reading, {parts} active parts",
                file=sys.stderr,
                flush=True,
            )
    out = {"benchmark": "store_insert", "inserts": args.inserts, "results": results}
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/store_insert.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
