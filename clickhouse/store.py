"""Every SQL statement the product runs, over either backend.

Values always travel as server-side parameters (`{name:Type}`); the only text formatted into SQL is
table names and fragments chosen from fixed sets in this file.
"""

from __future__ import annotations

import re
import string
import threading
from dataclasses import dataclass
from importlib import resources

import pyarrow as pa

from . import episodes, rollups

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
    # Hourly and daily rollups, anomaly episodes and acknowledgements outlive the raw data.
    long_retention_days: int = 730
    # Flagged readings of one (device, metric, kind) at most this far apart form one anomaly episode,
    # which closes once this much time has passed after its newest flagged reading.
    episode_quiet_ms: int = 60_000
    # WatchAnomalies reports episode versions only once they are this old. 0 is exact when one process
    # writes episodes (embedded); with several processors writing to one server, give their inserts time
    # to land in version order (a few seconds).
    watch_settle_ms: int = 0


# table -> (TTL time expression, StoreConfig field with its days); see Store.apply_retention
RETENTION = {
    "readings": ("toDateTime(time)", "retention_days"),
    "anomalies": ("toDateTime(time)", "retention_days"),
    "rollup_1m": ("bucket", "retention_days"),
    "rollup_1h": ("bucket", "long_retention_days"),
    "rollup_1d": ("bucket", "long_retention_days"),
    "anomaly_episodes": ("toDateTime(updated)", "long_retention_days"),
}
# Statements that run after a migration file is applied, to fill what it created from stored data.
AFTER_MIGRATION = {"007_anomaly_episodes.sql": "rebuild_episodes"}
EPISODE_KEYS_PER_STATEMENT = 2_000
# Queries of one or a few devices read a few granules: a second thread costs more than it saves
# (measured ~3.8 -> ~2.9 ms for a device-day of rollup_1m on 2 cores).
ONE_THREAD = " SETTINGS max_threads = 1"
FEW_DEVICES = 16
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
        # Episode rows are versioned by write time; one writer at a time in this process keeps versions in
        # commit order, which WatchAnomalies relies on.
        self._episode_lock = threading.Lock()

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
        """Apply the numbered schema files not applied yet; returns their names. On a cluster, create the
        Replicated/Distributed schema generated from the same files (clickhouse.cluster) instead."""
        if getattr(self.backend, "cluster", None):
            from .cluster import cluster_schema

            for statement in cluster_schema(self.db, self.backend.cluster, self.config):
                self.backend.command(statement)
            return []
        self._command(MIGRATIONS_TABLE)
        done = set(self._query("SELECT name FROM $db.schema_migrations").column("name").to_pylist())
        applied = []
        for name, text in schema_files():
            if name in done:
                continue
            for statement in split_statements(text):
                self._command(statement)
            if name in AFTER_MIGRATION:
                getattr(self, AFTER_MIGRATION[name])()
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
        """Flagged readings (device_id, metric, time, value, kind, detectors, score, zscore; one row per
        reading, `kind` its dominant detector), then the anomaly episodes they open, extend or join. A replay with the same token
        stores nothing twice and leaves the episodes as they are."""
        if data.num_rows == 0:
            return
        self.backend.insert(f"{self.db}.anomalies", data, token)
        self.update_episodes(episode_keys(data))

    def update_episodes(self, keys: list[tuple[str, str, str, int]]) -> None:
        """Recompute the episodes of these (device_id, metric, kind, earliest new flagged reading ms)."""
        with self._episode_lock:
            for i in range(0, len(keys), EPISODE_KEYS_PER_STATEMENT):
                chunk = keys[i:i + EPISODE_KEYS_PER_STATEMENT]
                self._command(episodes.RECOMPUTE, {
                    "kd": [k[0] for k in chunk], "km": [k[1] for k in chunk], "kk": [k[2] for k in chunk],
                    "kt": [int(k[3]) for k in chunk], "q": int(self.config.episode_quiet_ms)})

    def rebuild_episodes(self) -> None:
        """Episodes of every flagged reading stored (after the migration that adds them)."""
        rows = self._query("SELECT device_id, metric, kind, toUnixTimestamp64Milli(min(time)) AS t "
                           "FROM $db.anomalies GROUP BY device_id, metric, kind").to_pylist()
        self.update_episodes([(r["device_id"], r["metric"], r["kind"], r["t"]) for r in rows])

    # ---- reads ----------------------------------------------------------------------------------

    def counts(self, online_since_ms: int, now_ms: int) -> dict:
        row = self._query(
            f"""
            SELECT
                (SELECT count() FROM $db.readings) AS readings,
                (SELECT count() FROM $db.anomaly_episodes FINAL) AS anomalies,
                (SELECT count() FROM $db.anomaly_episodes FINAL WHERE closes > {_MS % "now"}) AS open_anomalies,
                (SELECT uniqExact(device_id) FROM $db.device_metrics) AS devices,
                (SELECT count() FROM (SELECT device_id FROM $db.device_metrics GROUP BY device_id
                                      HAVING max(last_stored) >= {_MS % "since"})) AS devices_online,
                (SELECT toUnixTimestamp64Milli(max(last_stored)) FROM $db.device_metrics) AS last_stored_ms
            """,
            {"since": online_since_ms, "now": now_ms},
        ).to_pylist()[0]
        return row

    def table_sizes(self) -> list:
        """Rows and bytes on disk of each table with data (active parts; row versions not yet merged away
        count too)."""
        return self._query("SELECT table, sum(rows) AS rows, sum(bytes_on_disk) AS bytes FROM system.parts "
                           "WHERE database = {d:String} AND active GROUP BY table ORDER BY table",
                           {"d": self.db}).to_pylist()

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

    def device_summary(self, device_id: str, now_ms: int) -> list:
        """GetDevice in one round trip: per metric its newest value by reading time, readings, first
        reading time and last stored time, each row also carrying the device's episode counts."""
        return self._query(
            f"""
            WITH (SELECT tuple(count(), countIf(closes > {_MS % 'now'})) FROM $db.anomaly_episodes FINAL
                  WHERE device_id = {{d:String}}) AS episodes
            SELECT metric, toUnixTimestamp64Milli(max(last_time)) AS time_ms, argMaxMerge(last_value) AS value,
                   sum(readings) AS stored_readings, toUnixTimestamp64Milli(min(first_time)) AS first_ms,
                   toUnixTimestamp64Milli(max(last_stored)) AS stored_ms,
                   tupleElement(episodes, 1) AS anomalies, tupleElement(episodes, 2) AS open_anomalies
            FROM $db.device_metrics WHERE device_id = {{d:String}}
            GROUP BY metric HAVING sum(readings) > 0 ORDER BY metric
            """ + ONE_THREAD,
            {"d": device_id, "now": now_ms},
        ).to_pylist()

    def device_anomalies(self, device_id: str, now_ms: int) -> tuple[int, int]:
        """(episodes, open episodes) of one device."""
        row = self._query(f"SELECT count() AS n, countIf(closes > {_MS % 'now'}) AS open "
                          "FROM $db.anomaly_episodes FINAL WHERE device_id = {d:String}",
                          {"d": device_id, "now": now_ms}).to_pylist()[0]
        return row["n"], row["open"]

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
            """ + ONE_THREAD,
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
        if 0 < len(device_ids) <= FEW_DEVICES:
            sql += ONE_THREAD
        params.update(devices=device_ids, metrics=metrics, iv=interval_ms)
        sources = list(dict.fromkeys(table for table, _, _ in pieces))
        return self._query(sql, params), sources

    # ---- anomaly episodes (SQL in episodes.py) -------------------------------------------------------

    def anomalies(self, device_id: str, metric: str, kind: str, min_severity: int, state: int, acked: int,
                  start_ms: int, end_ms: int, now_ms: int, after: tuple | None, limit: int) -> list:
        """Episodes newest first by (opened, device_id, metric, kind) descending; `after` is the previous
        page's last (opened_ms, device_id, metric, kind), exclusive. state: 0 any, 1 open, 2 closed;
        acked: 0 any, 1 acknowledged, 2 not."""
        at, ad, am, ak = after or (0, "", "", "")
        return self._query(episodes.list_sql(after is not None, acked), {
            "d": device_id, "m": metric, "k": kind, "sev": min_severity, "state": state, "start": start_ms,
            "end": end_ms, "now": now_ms, "at": at, "ad": ad, "am": am, "ak": ak, "limit": limit}).to_pylist()

    def anomaly(self, device_id: str, metric: str, kind: str, opened_ms: int) -> dict | None:
        rows = self._query(episodes.GET, {"d": device_id, "m": metric, "k": kind, "o": opened_ms}).to_pylist()
        return rows[0] if rows else None

    def acknowledge(self, device_id: str, metric: str, kind: str, opened_ms: int, by: str,
                    at_ms: int) -> dict | None:
        """Acknowledge an episode (the first acknowledgement stands); None if there is no such episode."""
        if self.anomaly(device_id, metric, kind, opened_ms) is None:
            return None
        self._command(episodes.ACKNOWLEDGE, {"d": device_id, "m": metric, "k": kind, "o": opened_ms,
                                             "by": by, "at": at_ms})
        return self.anomaly(device_id, metric, kind, opened_ms)

    def episode_version(self) -> int:
        """Newest episode version (Unix microseconds), 0 if none: where a new watcher starts."""
        return self._query("SELECT toUnixTimestamp64Micro(max(version)) AS v FROM $db.anomaly_episodes"
                           ).column("v")[0].as_py() or 0

    def episode_changes(self, after: tuple, now_ms: int, limit: int) -> list:
        """Newest version of each episode written after `after` = (version_us, device_id, metric, kind,
        opened_ms), oldest first, at most `limit`; versions younger than watch_settle_ms wait."""
        v, vd, vm, vk, vo = after
        upto = (now_ms - int(self.config.watch_settle_ms)) * 1000 + 999
        return self._query(episodes.CHANGES, {"v": v, "vd": vd, "vm": vm, "vk": vk, "vo": vo, "upto": upto,
                                              "limit": limit}).to_pylist()

    def episode_closures(self, seen: tuple, after: tuple, now_ms: int, limit: int) -> list:
        """Episodes whose current version is at or before `seen` = (version_us, device_id, metric, kind,
        opened_ms) and whose closes time is after `after` = (closes_ms, device_id, metric, kind, opened_ms)
        and not after now_ms, by closes time."""
        v, vd, vm, vk, vo = seen
        c, cd, cm, ck, co = after
        return self._query(episodes.CLOSURES, {"v": v, "vd": vd, "vm": vm, "vk": vk, "vo": vo, "c": c, "cd": cd,
                                               "cm": cm, "ck": ck, "co": co, "now": now_ms, "limit": limit}
                           ).to_pylist()


def episode_keys(data: pa.Table) -> list[tuple[str, str, str, int]]:
    """Distinct (device_id, metric, kind) of flagged readings, each with its earliest reading time in ms."""
    cols = {}
    for name in ("device_id", "metric", "kind"):
        col = data.column(name)
        cols[name] = col.cast(pa.string()) if pa.types.is_dictionary(col.type) else col
    cols["t"] = data.column("time").cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())
    grouped = pa.table(cols).group_by(["device_id", "metric", "kind"]).aggregate([("t", "min")])
    return list(zip(*(grouped.column(n).to_pylist() for n in ("device_id", "metric", "kind", "t_min")), strict=True))
