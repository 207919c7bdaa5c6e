"""Upgrading a store that already holds readings: the migrations that add rollups and the device registry
fill them from what is stored, so answers do not depend on when a reading arrived relative to an upgrade."""

import time
import uuid

import pyarrow as pa

from iotstream.clickhouse import Store, open_backend
from iotstream.clickhouse import migrations as store_module

HOUR = 3_600_000


def test_upgrade_backfills_rollups_and_devices(chdb_dir, monkeypatch):
    files = store_module.schema_files()
    old = [f for f in files if f[0] < "004"]
    assert len(old) == 3 and len(files) > len(old)
    t0 = (time.time_ns() // 1_000_000 // HOUR - 5) * HOUR
    rows = [
        ("a", "temp", t0 + 1_000, 1.0),
        ("a", "temp", t0 + 2 * HOUR, 3.0),
        ("a", "hum", t0 + 10, 7.0),
        ("b", "temp", t0 + HOUR + 5, 2.0),
    ]
    table = pa.table(
        {
            "device_id": [r[0] for r in rows],
            "metric": [r[1] for r in rows],
            "time": pa.array([r[2] for r in rows], pa.timestamp("ms", tz="UTC")),
            "value": [r[3] for r in rows],
        }
    )

    s = Store(open_backend(data_dir=chdb_dir, database="t_upgrade_" + uuid.uuid4().hex[:8]))
    monkeypatch.setattr(store_module, "schema_files", lambda: old)
    assert [name for name, _ in old] == s.migrate()
    s.insert_readings(table)  # stored by the old schema: no rollups, no first reading time
    monkeypatch.setattr(store_module, "schema_files", lambda: files)
    assert s.migrate() == [name for name, _ in files[3:]]
    assert s.migrate() == []

    agg, sources = s.aggregate([], ["temp"], t0, t0 + 3 * HOUR, HOUR, ["COUNT", "SUM"], True)
    assert sources == ["rollup_1h"]
    assert [(r["bucket_ms"], r["count"], r["sum"]) for r in agg.to_pylist()] == [
        (t0, 1, 1.0),
        (t0 + HOUR, 1, 2.0),
        (t0 + 2 * HOUR, 1, 3.0),
    ]
    a = s.list_devices("a", 0, 0, "", 1)[0]
    assert (a["first_seen_ms"], a["last_seen_ms"], a["readings"]) == (t0 + 10, t0 + 2 * HOUR, 3)
    assert {r["metric"]: (r["time_ms"], r["value"]) for r in s.device_summary("a", 0)} == {
        "temp": (t0 + 2 * HOUR, 3.0),
        "hum": (t0 + 10, 7.0),
    }
    # New readings after the upgrade go through the new views and merge with the backfilled rows.
    s.insert_readings(
        pa.table(
            {
                "device_id": ["a"],
                "metric": ["temp"],
                "time": pa.array([t0 - 1], pa.timestamp("ms", tz="UTC")),
                "value": [0.5],
            }
        )
    )
    a = s.list_devices("a", 0, 0, "", 1)[0]
    assert (a["first_seen_ms"], a["readings"]) == (t0 - 1, 4) and a["last_stored_ms"] > t0 + 4 * HOUR
    s.backend.close()
