"""The SQL of device configuration: desired configurations and applied-version reports
(schema/010_device_config.sql). Rows are dicts; iotstream.auth.device_config turns them into messages."""

from __future__ import annotations

import json
import threading

_DESIRED = """SELECT device_id, version, sample_interval_ms, metrics, settings,
       toUnixTimestamp64Milli(set_time) AS set_ms
FROM $db.device_config FINAL"""
_REPORTS = (
    "SELECT device_id, version, toUnixTimestamp64Milli(time) AS time_ms FROM $db.device_config_reports FINAL"
)
_MS = "fromUnixTimestamp64Milli({%s:Int64}, 'UTC')"


class DeviceConfigs:
    """`backend` is a clickhouse backend (`command` and `query` with server-side parameters)."""

    def __init__(self, backend):
        self.backend = backend
        # Versions are max + 1: two writers at once in one process would pick the same one. (Two admin
        # processes configuring one device in the same instant still can; the later row wins.)
        self._lock = threading.Lock()

    def _sql(self, text: str) -> str:
        return text.replace("$db", self.backend.database)

    def _rows(self, text: str, params: dict) -> list[dict]:
        rows = self.backend.query(self._sql(text), params).to_pylist()
        for r in rows:
            if "settings" in r:
                r["settings"] = json.loads(r["settings"] or "{}")
        return rows

    def set(
        self,
        device_id: str,
        sample_interval_ms: int,
        metrics: list[str],
        settings: dict[str, str],
        now_ms: int,
    ) -> dict:
        """Store a new desired configuration; returns its row (with the new version)."""
        with self._lock:
            current = self.desired(device_id)
            row = {
                "device_id": device_id,
                "version": (current["version"] if current else 0) + 1,
                "sample_interval_ms": sample_interval_ms,
                "metrics": list(metrics),
                "settings": dict(settings),
                "set_ms": now_ms,
            }
            self.backend.command(
                self._sql(
                    "INSERT INTO $db.device_config (device_id, version, sample_interval_ms, metrics, "
                    "settings, set_time) "
                    "VALUES ({d:String}, {v:UInt64}, {i:UInt32}, {m:Array(String)}, {s:String}, "
                    + _MS % "t"
                    + ")"
                ),
                {
                    "d": device_id,
                    "v": row["version"],
                    "i": sample_interval_ms,
                    "m": row["metrics"],
                    "s": json.dumps(row["settings"], sort_keys=True),
                    "t": now_ms,
                },
            )
        return row

    def desired(self, device_id: str) -> dict | None:
        rows = self._rows(_DESIRED + " WHERE device_id = {d:String}", {"d": device_id})
        return rows[0] if rows else None

    def desired_since(self, since_ms: int) -> list[dict]:
        """Desired configurations set at or after `since_ms` (all with 0)."""
        return self._rows(_DESIRED + " WHERE set_time >= " + _MS % "t", {"t": since_ms})

    def report(self, device_id: str, version: int, now_ms: int) -> None:
        self.backend.command(
            self._sql(
                "INSERT INTO $db.device_config_reports (device_id, version, time) "
                "VALUES ({d:String}, {v:UInt64}, " + _MS % "t" + ")"
            ),
            {"d": device_id, "v": version, "t": now_ms},
        )

    def reported(self, device_id: str) -> dict | None:
        rows = self._rows(_REPORTS + " WHERE device_id = {d:String}", {"d": device_id})
        return rows[0] if rows else None

    def reported_since(self, since_ms: int) -> list[dict]:
        return self._rows(_REPORTS + " WHERE time >= " + _MS % "t", {"t": since_ms})
