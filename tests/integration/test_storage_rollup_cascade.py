"""The cascaded rollups (011_rollup_cascade.sql): rollup_1h fed from rollup_1m's inserted rows and rollup_1d
from rollup_1h's. A database created at 010 keeps its rows readable and merges them with rows written
through the chain, and a replayed insert counts once at every level of it."""

import time
import uuid

import numpy as np
import pyarrow as pa

from iotstream.clickhouse import Store, open_backend
from iotstream.clickhouse import migrations as store_module

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
DAY0 = (time.time_ns() // 1_000_000 // DAY - 2) * DAY


def readings(rows) -> pa.Table:
    return pa.table(
        {
            "device_id": [r[0] for r in rows],
            "metric": [r[1] for r in rows],
            "time": pa.array([r[2] for r in rows], pa.timestamp("ms", tz="UTC")),
            "value": [float(r[3]) for r in rows],
        }
    )


def totals(store: Store) -> dict[str, tuple[int, float]]:
    """(sum of n, sum of total) over the stored rows of each rollup table, merged or not."""
    out = {}
    for table in ("rollup_1m", "rollup_1h", "rollup_1d"):
        sql = f"SELECT sum(n) AS n, sum(total) AS t FROM {store.db}.{table}"
        row = store.backend.query(sql).to_pylist()[0]
        out[table] = (row["n"], row["t"])
    return out


def view_sources(store: Store) -> dict[str, list[str]]:
    rows = store.backend.query(
        "SELECT name, arraySort(dependencies_table) AS deps FROM system.tables "
        "WHERE database = {d:String} AND name LIKE 'rollup_%' AND engine NOT LIKE '%View'",
        {"d": store.db},
    ).to_pylist()
    return {r["name"]: r["deps"] for r in rows}


def test_upgrade_from_010_keeps_old_rollups_and_cascades_new_ones(chdb_dir, monkeypatch):
    files = store_module.schema_files()
    old = [f for f in files if f[0] < "011"]
    s = Store(open_backend(data_dir=chdb_dir, database="t_cascade_" + uuid.uuid4().hex[:8]))
    monkeypatch.setattr(store_module, "schema_files", lambda: old)
    s.migrate()
    before = [("a", "temp", DAY0 + 5 * MIN + i * 1000, i) for i in range(50)]
    s.insert_readings(readings(before), token="before")  # rolled up by the three views of 005
    monkeypatch.setattr(store_module, "schema_files", lambda: files)
    assert "011_rollup_cascade.sql" in s.migrate()
    # Each rollup table now feeds the next one; readings feed device_metrics and rollup_1m only.
    assert view_sources(s) == {"rollup_1m": ["rollup_1h_mv"], "rollup_1h": ["rollup_1d_mv"], "rollup_1d": []}

    after = [("a", "temp", DAY0 + 5 * MIN + 30_500 + i * 1000, 100 + i) for i in range(50)]
    after += [("a", "temp", DAY0 + 2 * HOUR + i, -i) for i in range(7)]
    s.insert_readings(readings(after), token="after")
    values = np.array([r[3] for r in before + after], np.float64)
    times = np.array([r[2] for r in before + after])
    for interval in (MIN, HOUR, DAY):
        table, sources = s.aggregate(
            ["a"], ["temp"], DAY0, DAY0 + DAY, interval, ["COUNT", "SUM", "MIN", "MAX", "STDDEV"], False
        )
        assert len(sources) == 1 and sources[0].startswith("rollup_")
        got = {r["bucket_ms"]: r for r in table.to_pylist()}
        assert sorted(got) == sorted(set((times // interval * interval).tolist()))
        for bucket, r in got.items():
            v = values[times // interval * interval == bucket]
            assert (r["count"], r["sum"], r["min"], r["max"]) == (len(v), v.sum(), v.min(), v.max())
            assert abs(r["stddev"] - v.std(ddof=1)) <= 1e-9 * v.std(ddof=1)
    s.backend.close()


def test_replay_counts_once_at_every_level_of_the_chain(chdb_dir):
    s = Store(open_backend(data_dir=chdb_dir, database="t_cascade_" + uuid.uuid4().hex[:8]))
    s.migrate()
    batch = readings([(f"d{i % 3}", "temp", DAY0 + i * 7_000, i) for i in range(300)])
    s.insert_readings(batch, token="p0-0-299")
    once = totals(s)
    assert once == {t: (300, float(sum(range(300)))) for t in once}
    s.insert_readings(batch, token="p0-0-299")  # replay after a crash: same offsets, same token
    assert totals(s) == once
    s.insert_readings(batch, token="p0-300-599")  # same values under a new token are new readings
    assert totals(s) == {t: (600, 2.0 * sum(range(300))) for t in once}
    s.backend.close()
