"""Rollups and Aggregate on the real engine, against buckets computed here with numpy: every mix of rollup
and raw pieces, late readings, and a replayed insert that must not count twice."""

import time
import uuid

import numpy as np
import pyarrow as pa
import pytest

from iotstream.clickhouse import Store, open_backend
from iotstream.clickhouse.rollups import FUNCS

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
DAY0 = (time.time_ns() // 1_000_000 // DAY - 3) * DAY  # a UTC midnight three days back, inside retention
DEVICES, METRICS = ("d-1", "d-2", "d-3"), ("temp", "hum")


def readings(device, metric, times, values) -> pa.Table:
    n = len(times)
    return pa.table(
        {
            "device_id": pa.array([device] * n),
            "metric": pa.array([metric] * n),
            "time": pa.array(np.asarray(times, np.int64), pa.timestamp("ms", tz="UTC")),
            "value": pa.array(np.asarray(values, np.float64)),
        }
    )


def make_data(seed=7):
    """Irregular readings from DAY0 - 3 h to DAY0 + 2 d + 5 h for each (device, metric)."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in DEVICES:
        for m in METRICS:
            t = DAY0 - 3 * HOUR + np.cumsum(rng.integers(1_000, 120_000, 4_000))
            t = t[t < DAY0 + 2 * DAY + 5 * HOUR]
            rows += [(d, m, int(ti), float(v)) for ti, v in zip(t, rng.normal(20, 5, len(t)), strict=True)]
    return rows


@pytest.fixture(scope="module")
def store(chdb_dir):
    s = Store(open_backend(data_dir=chdb_dir, database="t_rollups_" + uuid.uuid4().hex[:8]))
    s.migrate()
    rows = make_data()
    order = np.random.default_rng(1).permutation(len(rows))  # arrival order unrelated to reading time
    for chunk in np.array_split(order, 9):
        part = [rows[i] for i in chunk]
        s.insert_readings(
            pa.table(
                {
                    "device_id": [r[0] for r in part],
                    "metric": [r[1] for r in part],
                    "time": pa.array([r[2] for r in part], pa.timestamp("ms", tz="UTC")),
                    "value": [r[3] for r in part],
                }
            ),
            token=f"load-{chunk[0]}",
        )
    s.rows = rows
    yield s
    s.backend.close()


def expected(rows, devices, metrics, start, end, interval, merge):
    groups = {}
    for d, m, t, v in rows:
        if (not devices or d in devices) and (not metrics or m in metrics) and start <= t < end:
            groups.setdefault(("" if merge else d, m, t // interval * interval), []).append(v)
    return {k: np.array(v) for k, v in sorted(groups.items())}


def check(store, devices, metrics, start, end, interval, merge=False, funcs=FUNCS):
    table, sources = store.aggregate(list(devices), list(metrics), start, end, interval, list(funcs), merge)
    got = table.to_pylist()
    want = expected(store.rows, devices, metrics, start, end, interval, merge)
    assert [(r["dev"], r["metric"], r["bucket_ms"]) for r in got] == list(want)
    for r in got:
        vals = np.sort(want[(r["dev"], r["metric"], r["bucket_ms"])])
        r = {k: v for k, v in r.items() if k.upper() in funcs or k in ("dev", "metric", "bucket_ms")}
        if "count" in r:
            assert r["count"] == len(vals)
        if "min" in r:
            assert (r["min"], r["max"]) == (vals[0], vals[-1])
        if "sum" in r:
            assert r["sum"] == pytest.approx(vals.sum(), rel=1e-9)
        if "avg" in r:
            assert r["avg"] == pytest.approx(vals.mean(), rel=1e-9)
        if "stddev" in r and len(vals) > 1:
            assert r["stddev"] == pytest.approx(vals.std(ddof=1), rel=1e-6)
        elif "stddev" in r:
            assert np.isnan(r["stddev"])
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            if name not in r:
                continue
            # t-digest: an estimate between the exact quantiles a few ranks either side, kept in float32
            lo = vals[max(0, int(np.floor((q - 0.05) * (len(vals) - 1))))]
            hi = vals[min(len(vals) - 1, int(np.ceil((q + 0.05) * (len(vals) - 1))))]
            assert lo - 1e-6 * abs(lo) <= r[name] <= hi + 1e-6 * abs(hi), (name, r, vals)
    return sources


def test_aligned_days_read_the_daily_rollup(store):
    assert check(store, [], [], DAY0, DAY0 + 2 * DAY, DAY) == ["rollup_1d"]


def test_aligned_hours_read_the_hourly_rollup(store):
    assert check(store, ["d-2"], ["temp"], DAY0 + 5 * HOUR, DAY0 + 29 * HOUR, 2 * HOUR) == ["rollup_1h"]


def test_ragged_range_mixes_rollups_and_raw(store):
    start, end = DAY0 - 2 * HOUR - 17 * MIN - 1234, DAY0 + DAY + 3 * HOUR + 5 * MIN + 999
    sources = check(store, ["d-1", "d-3"], [], start, end, DAY)
    assert sources == ["readings", "rollup_1m", "rollup_1h", "rollup_1d"]


def test_minute_buckets_merged_over_devices(store):
    start = DAY0 + 7 * HOUR + 30_000
    assert check(store, [], ["hum"], start, start + 3 * HOUR, 5 * MIN, merge=True) == [
        "readings",
        "rollup_1m",
    ]


def test_interval_no_rollup_divides_reads_raw(store):
    assert check(store, ["d-1"], [], DAY0, DAY0 + 6 * HOUR, 90_000) == ["readings"]


def test_late_reading_lands_in_its_bucket(store):
    late_t = DAY0 + 3 * HOUR + 17  # long after newer readings of the same series were stored
    store.insert_readings(readings("d-late", "temp", [late_t, DAY0 + DAY + 5], [1.5, 2.5]))
    for interval, source in ((MIN, "rollup_1m"), (HOUR, "rollup_1h"), (DAY, "rollup_1d")):
        table, sources = store.aggregate(
            ["d-late"], [], DAY0, DAY0 + 2 * DAY, interval, ["COUNT", "SUM"], False
        )
        assert sources == [source]
        assert [(r["bucket_ms"], r["count"], r["sum"]) for r in table.to_pylist()] == [
            (late_t // interval * interval, 1, 1.5),
            ((DAY0 + DAY + 5) // interval * interval, 1, 2.5),
        ]


def test_replayed_insert_counts_once(store):
    batch = readings("d-replay", "temp", [DAY0 + i * 1000 for i in range(100)], np.arange(100.0))
    store.insert_readings(batch, token="replay-1")
    store.insert_readings(batch, token="replay-1")  # e.g. a retry after a lost acknowledgement
    for interval in (MIN, HOUR, DAY):  # each rollup, then raw
        table, _ = store.aggregate(["d-replay"], [], DAY0, DAY0 + DAY, interval, ["COUNT", "SUM"], True)
        assert sum(table.column("count").to_pylist()) == 100
        assert sum(table.column("sum").to_pylist()) == sum(range(100))
    table, sources = store.aggregate(["d-replay"], [], DAY0, DAY0 + DAY, 1000, ["COUNT"], True)
    assert sources == ["readings"] and sum(table.column("count").to_pylist()) == 100
    store.insert_readings(batch, token="replay-2")  # a new token is new data
    table, _ = store.aggregate(["d-replay"], [], DAY0, DAY0 + DAY, DAY, ["COUNT"], True)
    assert table.column("count").to_pylist() == [200]


def test_retention_follows_the_config(chdb_dir):
    from iotstream.clickhouse.store import StoreConfig

    db = "t_ttl_" + uuid.uuid4().hex[:8]
    s = Store(
        open_backend(data_dir=chdb_dir, database=db), StoreConfig(retention_days=30, long_retention_days=400)
    )
    s.migrate()
    assert s.apply_retention() == []  # already as configured
    s2 = Store(
        open_backend(data_dir=chdb_dir, database=db), StoreConfig(retention_days=7, long_retention_days=400)
    )
    assert sorted(s2.apply_retention()) == ["anomalies", "readings", "rollup_1m"]
    ddl = (
        s2.backend.query(
            "SELECT create_table_query AS q FROM system.tables WHERE database = {d:String} "
            "AND name = 'readings'",
            {"d": db},
        )
        .column("q")[0]
        .as_py()
    )
    assert "toIntervalDay(7)" in ddl
    # A reading 10 days old is now past retention, one 5 days old is not: TTL (applied at the latest by a
    # merge) keeps only the second.
    s2.insert_readings(
        readings("old", "temp", [time.time_ns() // 1_000_000 - d * DAY for d in (10, 5)], [1.0, 2.0])
    )
    s2.backend.command(f"OPTIMIZE TABLE {db}.readings FINAL")
    assert s2.backend.query(f"SELECT value FROM {db}.readings").column("value").to_pylist() == [2.0]
    s.backend.close()


def test_fleet_queries_read_the_projection_and_stay_exact_after_merges(store):
    from iotstream.clickhouse import rollups

    start, end, only = DAY0 - 30 * MIN, DAY0 + DAY + 7 * HOUR, ["hum"]  # other tests add "temp" readings
    sql, params = rollups.aggregate_sql(
        rollups.plan(start, end, HOUR),
        ["AVG", "MIN", "MAX", "COUNT"],
        merge_devices=True,
        by_device=False,
        by_metric=True,
    )
    params.update(iv=HOUR, metrics=only)
    plan = store.backend.query("EXPLAIN " + store._sql(sql), params).column(0).to_pylist()
    assert sum("ReadFromMergeTree (fleet)" in line for line in plan) == 2  # rollup_1m and rollup_1h pieces
    four = ["AVG", "MIN", "MAX", "COUNT", "SUM"]
    check(store, [], only, start, end, HOUR, merge=True, funcs=four)
    for table in ("rollup_1m", "rollup_1h", "rollup_1d"):  # merges rebuild the projection
        store.backend.command(f"OPTIMIZE TABLE {store.db}.{table} FINAL")
    check(store, [], only, start, end, HOUR, merge=True, funcs=four)
    check(store, [], only, DAY0, DAY0 + 2 * DAY, DAY, merge=True)  # every function: states, no projection
