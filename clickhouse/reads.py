"""Reads of devices, readings and aggregates (the Query service's answers)."""

from __future__ import annotations

import pyarrow as pa

from . import rollups
from .tables import _MS, FEW_DEVICES, NO_CAP, ONE_THREAD, ReadCap, Tables

_DEVICE_COLUMNS = """toUnixTimestamp64Milli(min(first_time)) AS first_seen_ms,
    toUnixTimestamp64Milli(max(last_time)) AS last_seen_ms,
    toUnixTimestamp64Milli(max(last_stored)) AS last_stored_ms, sum(readings) AS readings"""


class Reads(Tables):
    def counts(self, online_since_ms: int, now_ms: int) -> dict:
        row = self._query(
            f"""
            SELECT
                (SELECT count() FROM $db.readings) AS readings,
                (SELECT count() FROM $db.anomaly_episodes FINAL) AS anomalies,
                (SELECT count() FROM $db.anomaly_episodes FINAL WHERE closes > {_MS % "now"}) AS
                open_anomalies,
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
        return self._query(
            "SELECT table, sum(rows) AS rows, sum(bytes_on_disk) AS bytes FROM system.parts "
            "WHERE database = {d:String} AND active GROUP BY table ORDER BY table",
            {"d": self.db},
        ).to_pylist()

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
        """GetDevice in one round trip: per metric its newest value by reading time, readings, first
        reading time and last stored time, each row also carrying the device's episode counts."""
        return self._query(
            f"""
            WITH (SELECT tuple(count(), countIf(closes > {_MS % "now"})) FROM $db.anomaly_episodes FINAL
                  WHERE device_id = {{d:String}}) AS episodes
            SELECT metric, toUnixTimestamp64Milli(max(last_time)) AS time_ms, argMaxMerge(last_value) AS
            value,
                   sum(readings) AS stored_readings, toUnixTimestamp64Milli(min(first_time)) AS first_ms,
                   toUnixTimestamp64Milli(max(last_stored)) AS stored_ms,
                   tupleElement(episodes, 1) AS anomalies, tupleElement(episodes, 2) AS open_anomalies
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
