"""Reads of devices, readings and aggregates (the Query service's answers)."""

from __future__ import annotations

import pyarrow as pa

from . import rollups
from .tables import _MS, FEW_DEVICES, NO_CAP, ONE_THREAD, ReadCap, Tables

_DEVICE_COLUMNS = """toUnixTimestamp64Milli(min(first_time)) AS first_seen_ms,
    toUnixTimestamp64Milli(max(last_time)) AS last_seen_ms,
    toUnixTimestamp64Milli(max(last_stored)) AS last_stored_ms, sum(readings) AS readings"""


class Reads(Tables):
    def stats(self, online_since_ms: int, now_ms: int) -> dict:
        """GetStats' stored figures in one statement (every statement of the embedded engine waits for the
        insert in progress, so one wait instead of several): readings, anomaly episodes (open ones: not
        closed by `now_ms`), devices (online: stored since `online_since_ms`), the last store time, and
        rows and bytes on disk of each table with data (active parts; row versions not yet merged away
        count too)."""
        row = self._query(
            f"""
            WITH
                (SELECT tuple(count(), countIf(closes > {_MS % "now"})) FROM $db.anomaly_episodes FINAL)
                    AS episodes,
                (SELECT tuple(count(), countIf(stored >= {_MS % "since"}), max(stored))
                 FROM (SELECT max(last_stored) AS stored FROM $db.device_metrics GROUP BY device_id))
                    AS devs,
                (SELECT tuple(groupArray(table), groupArray(rows), groupArray(bytes))
                 FROM (SELECT table, sum(rows) AS rows, sum(bytes_on_disk) AS bytes FROM system.parts
                       WHERE database = {{d:String}} AND active GROUP BY table ORDER BY table)) AS parts
            SELECT (SELECT count() FROM $db.readings) AS readings,
                   episodes.1 AS anomalies, episodes.2 AS open_anomalies,
                   devs.1 AS devices, devs.2 AS devices_online,
                   toUnixTimestamp64Milli(devs.3) AS last_stored_ms,
                   parts.1 AS tables, parts.2 AS table_rows, parts.3 AS table_bytes
            """,
            {"since": online_since_ms, "now": now_ms, "d": self.db},
        ).to_pylist()[0]
        tables = row.pop("tables")
        row["table_rows"] = dict(zip(tables, row["table_rows"], strict=True))
        row["table_bytes"] = dict(zip(tables, row["table_bytes"], strict=True))
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

    def device_summary(self, device_id: str, now_ms: int) -> list:
        """GetDevice in one round trip (every statement of the embedded engine waits for the insert in
        progress): per metric its newest value by reading time, readings, first reading time and last
        stored time, each row also carrying the device's episode counts and configuration versions
        (desired, reported and when; 0 when none; see device_config.py)."""
        return self._query(
            f"""
            WITH (SELECT tuple(count(), countIf(closes > {_MS % "now"})) FROM $db.anomaly_episodes FINAL
                  WHERE device_id = {{d:String}}) AS episodes,
                 (SELECT max(version) FROM $db.device_config WHERE device_id = {{d:String}}) AS desired,
                 (SELECT tuple(argMax(version, time), toUnixTimestamp64Milli(max(time)))
                  FROM $db.device_config_reports WHERE device_id = {{d:String}}) AS reported
            SELECT metric, toUnixTimestamp64Milli(max(last_time)) AS time_ms, argMaxMerge(last_value) AS
            value,
                   sum(readings) AS stored_readings, toUnixTimestamp64Milli(min(first_time)) AS first_ms,
                   toUnixTimestamp64Milli(max(last_stored)) AS stored_ms,
                   tupleElement(episodes, 1) AS anomalies, tupleElement(episodes, 2) AS open_anomalies,
                   desired AS config_version, tupleElement(reported, 1) AS config_reported_version,
                   tupleElement(reported, 2) AS config_reported_ms
            FROM $db.device_metrics WHERE device_id = {{d:String}}
            GROUP BY metric HAVING sum(readings) > 0 ORDER BY metric
            """
            + ONE_THREAD,
            {"d": device_id, "now": now_ms},
        ).to_pylist()

    def history(
        self,
        device_id: str,
        metrics: list[str],
        start_ms: int,
        end_ms: int,
        after: tuple | None,
        limit: int,
        cap: ReadCap = NO_CAP,
    ) -> pa.Table:
        """Readings ordered by (metric, time, value), from the cursor `after` = (metric, time_ms, value)
        inclusive; the caller drops the rows of the cursor it already returned."""
        metric, time_ms, value = after or ("", start_ms, 0.0)
        cursor = (
            "1"
            if after is None
            else f"(metric, time, value) >= ({{am:String}}, {_MS % 'at'}, {{av:Float64}})"
        )
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
            """
            + cap.settings(one_thread=True),
            {
                "d": device_id,
                "metrics": metrics,
                "start": start_ms,
                "end": end_ms,
                "am": metric,
                "at": time_ms,
                "av": value,
                "limit": limit,
            },
        )

    def aggregate(
        self,
        device_ids: list[str],
        metrics: list[str],
        start_ms: int,
        end_ms: int,
        interval_ms: int,
        funcs: list[str],
        merge_devices: bool,
        cap: ReadCap = NO_CAP,
    ) -> tuple[pa.Table, list[str]]:
        """Buckets of `interval_ms` over [start_ms, end_ms), and the tables read (see rollups.plan)."""
        pieces = rollups.plan(start_ms, end_ms, interval_ms)
        if not pieces:
            pieces = [(rollups.RAW, start_ms, end_ms)]
        sql, params = rollups.aggregate_sql(pieces, funcs, merge_devices, bool(device_ids), bool(metrics))
        sql += cap.settings(one_thread=0 < len(device_ids) <= FEW_DEVICES)
        params.update(devices=device_ids, metrics=metrics, iv=interval_ms)
        sources = list(dict.fromkeys(table for table, _, _ in pieces))
        return self._query(sql, params), sources
