"""Every SQL statement the product runs, over either backend.

Values always travel as server-side parameters (`{name:Type}`); the only text formatted into SQL is
table names and fragments chosen from fixed sets in this file.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from importlib import resources

import pyarrow as pa

from . import rollups

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS $db.schema_migrations (name String, applied DateTime DEFAULT now())
ENGINE = MergeTree ORDER BY name
"""

_MS = "fromUnixTimestamp64Milli({%s:Int64}, 'UTC')"
_DEVICE_COLUMNS = """toUnixTimestamp64Milli(min(first_time)) AS first_seen_ms,
    toUnixTimestamp64Milli(max(last_time)) AS last_seen_ms,
    toUnixTimestamp64Milli(max(last_stored)) AS last_stored_ms, sum(readings) AS readings"""


@dataclass(frozen=True)
class StoreConfig:
    # Raw readings, 1-minute rollups and flagged readings older than this are dropped by TTL, so ingest
    # must not accept older readings.
    retention_days: int = 30
    # Hourly and daily rollups outlive the raw data.
    long_retention_days: int = 730


# table -> (TTL time expression, StoreConfig field with its days); see Store.apply_retention
RETENTION = {
    "readings": ("toDateTime(time)", "retention_days"),
    "anomalies": ("toDateTime(time)", "retention_days"),
    "rollup_1m": ("bucket", "retention_days"),
    "rollup_1h": ("bucket", "long_retention_days"),
    "rollup_1d": ("bucket", "long_retention_days"),
}
_TTL_DAYS = re.compile(r"\bTTL\b.*?toIntervalDay\((\d+)\)", re.S)


def schema_files() -> list[tuple[str, str]]:
    folder = resources.files("iotstream.clickhouse") / "schema"
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(p.name, p.read_text()) for p in files]


def split_statements(text: str) -> list[str]:
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class Store:
    """Readings, anomalies and device state in ClickHouse."""

    def __init__(self, backend, config: StoreConfig | None = None):
        self.backend = backend
        self.config = config or StoreConfig()
        self.db = backend.database

    def _sql(self, text: str) -> str:
        # Table names are qualified with the database ($db): sessions of one chDB engine share `USE`.
        return string.Template(text).substitute(db=self.db, retention_days=int(self.config.retention_days),
                                                long_retention_days=int(self.config.long_retention_days))

    def _query(self, sql: str, params: dict | None = None) -> pa.Table:
        return self.backend.query(self._sql(sql), params)

    def _command(self, sql: str, params: dict | None = None) -> None:
        self.backend.command(self._sql(sql), params)

    # ---- schema ---------------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply the numbered schema files not applied yet; returns their names."""
        self._command(MIGRATIONS_TABLE)
        done = set(self._query("SELECT name FROM $db.schema_migrations").column("name").to_pylist())
        applied = []
        for name, text in schema_files():
            if name in done:
                continue
            for statement in split_statements(text):
                self._command(statement)
            self._command("INSERT INTO $db.schema_migrations (name) VALUES ({n:String})", {"n": name})
            applied.append(name)
        self.apply_retention()
        return applied

    def apply_retention(self) -> list[str]:
        """Bring each table's TTL to the configured days; returns the tables changed. Rows already stored
        past a shorter limit go at the next merge rather than in a rewrite of every part now."""
        rows = self._query("SELECT name, create_table_query AS ddl FROM system.tables WHERE database = {d:String}",
                           {"d": self.db}).to_pylist()
        changed = []
        for row in rows:
            if row["name"] not in RETENTION:
                continue
            expr, field = RETENTION[row["name"]]
            days = int(getattr(self.config, field))
            found = _TTL_DAYS.search(row["ddl"])
            if found and int(found.group(1)) == days:
                continue
            self._command(f"ALTER TABLE $db.{row['name']} MODIFY TTL {expr} + INTERVAL {days} DAY "
                          "SETTINGS materialize_ttl_after_modify = 0")
            changed.append(row["name"])
        return changed

    # ---- writes ---------------------------------------------------------------------------------

    def insert_readings(self, data: pa.Table, token: str | None = None) -> None:
        self.backend.insert(f"{self.db}.readings", data, token)

    def insert_anomalies(self, data: pa.Table, token: str | None = None) -> None:
        self.backend.insert(f"{self.db}.anomalies", data, token)

    # ---- reads ----------------------------------------------------------------------------------

    def counts(self, online_since_ms: int) -> dict:
        row = self._query(
            f"""
            SELECT
                (SELECT count() FROM $db.readings) AS readings,
                (SELECT count() FROM $db.anomalies) AS anomalies,
                (SELECT uniqExact(device_id) FROM $db.device_metrics) AS devices,
                (SELECT count() FROM (SELECT device_id FROM $db.device_metrics GROUP BY device_id
                                      HAVING max(last_stored) >= {_MS % "since"})) AS devices_online
            """,
            {"since": online_since_ms},
        ).to_pylist()[0]
        return row

    def list_devices(self, prefix: str, status: int, online_since_ms: int, after: str, limit: int) -> list:
        """Registry rows by device id after `after`; status: 0 all, 1 online only, 2 offline only
        (DeviceStatus), online meaning stored since `online_since_ms`."""
        return self._query(
            f"""
            SELECT device_id, {_DEVICE_COLUMNS}
            FROM $db.device_metrics
            WHERE startsWith(device_id, {{prefix:String}}) AND device_id > {{after:String}}
            GROUP BY device_id
            HAVING {{status:UInt8}} = 0 OR (({{status:UInt8}} = 1) = (max(last_stored) >= {_MS % "since"}))
            ORDER BY device_id
            LIMIT {{limit:UInt32}}
            """,
            {"prefix": prefix, "after": after, "status": status, "since": online_since_ms, "limit": limit},
        ).to_pylist()

    def device(self, device_id: str) -> dict | None:
        """The registry row of one device, or None if it never sent a reading."""
        rows = self._query(f"SELECT {_DEVICE_COLUMNS} FROM $db.device_metrics WHERE device_id = {{d:String}}",
                           {"d": device_id}).to_pylist()
        return rows[0] if rows and rows[0]["readings"] else None

    def device_metrics(self, device_id: str) -> list:
        """Newest value of each metric by reading time (argMax on time, whatever the arrival order)."""
        return self._query(
            """
            SELECT metric, toUnixTimestamp64Milli(max(last_time)) AS time_ms,
                   argMaxMerge(last_value) AS value, sum(readings) AS readings
            FROM $db.device_metrics WHERE device_id = {d:String}
            GROUP BY metric ORDER BY metric
            """,
            {"d": device_id},
        ).to_pylist()

    def device_anomalies(self, device_id: str) -> int:
        table = self._query("SELECT count() AS n FROM $db.anomalies WHERE device_id = {d:String}",
                                   {"d": device_id})
        return table.column("n")[0].as_py()

    def history(self, device_id: str, metrics: list[str], start_ms: int, end_ms: int,
                after: tuple | None, limit: int) -> pa.Table:
        """Readings ordered by (metric, time, value), from the cursor `after` = (metric, time_ms, value)
        inclusive; the caller drops the rows of the cursor it already returned."""
        metric, time_ms, value = after or ("", start_ms, 0.0)
        cursor = "1" if after is None else f"(metric, time, value) >= ({{am:String}}, {_MS % 'at'}, {{av:Float64}})"
        return self._query(
            f"""
            SELECT metric, toUnixTimestamp64Milli(time) AS time_ms, value
            FROM $db.readings
            WHERE device_id = {{d:String}}
              AND time >= {_MS % "start"} AND time < {_MS % "end"}
              AND (empty({{metrics:Array(String)}}) OR has({{metrics:Array(String)}}, metric))
              AND {cursor}
            ORDER BY metric, time, value
            LIMIT {{limit:UInt32}}
            """,
            {"d": device_id, "metrics": metrics, "start": start_ms, "end": end_ms, "am": metric,
             "at": time_ms, "av": value, "limit": limit},
        )

    def aggregate(self, device_ids: list[str], metrics: list[str], start_ms: int, end_ms: int,
                  interval_ms: int, funcs: list[str], merge_devices: bool) -> tuple[pa.Table, list[str]]:
        """Buckets of `interval_ms` over [start_ms, end_ms), and the tables read (see rollups.plan)."""
        pieces = rollups.plan(start_ms, end_ms, interval_ms)
        if not pieces:
            pieces = [(rollups.RAW, start_ms, end_ms)]
        sql, params = rollups.aggregate_sql(pieces, funcs, merge_devices, bool(device_ids), bool(metrics))
        params.update(devices=device_ids, metrics=metrics, iv=interval_ms)
        sources = list(dict.fromkeys(table for table, _, _ in pieces))
        return self._query(sql, params), sources

    def anomalies(self, device_id: str, metric: str, kind: str, start_ms: int, end_ms: int,
                  after: tuple | None, limit: int) -> list:
        """Newest first, ordered by (time, device_id, metric, kind) descending; `after` is the last
        row's key of the previous page (exclusive)."""
        time_ms, dev, met, knd = after or (end_ms, "", "", "")
        cursor = "1" if after is None else (
            f"(time, device_id, metric, kind) < ({_MS % 'at'}, {{ad:String}}, {{am:String}}, {{ak:String}})")
        return self._query(
            f"""
            SELECT device_id, metric, toUnixTimestamp64Milli(time) AS time_ms, value, kind, score, zscore
            FROM $db.anomalies
            WHERE ({{d:String}} = '' OR device_id = {{d:String}})
              AND ({{m:String}} = '' OR metric = {{m:String}})
              AND ({{k:String}} = '' OR kind = {{k:String}})
              AND time >= {_MS % "start"} AND time < {_MS % "end"}
              AND {cursor}
            ORDER BY time DESC, device_id DESC, metric DESC, kind DESC
            LIMIT {{limit:UInt32}}
            """,
            {"d": device_id, "m": metric, "k": kind, "start": start_ms, "end": end_ms, "at": time_ms,
             "ad": dev, "am": met, "ak": knd, "limit": limit},
        ).to_pylist()
