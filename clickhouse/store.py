"""The Store: every SQL statement the product runs, over either transport, split by concern.

Values always travel as server-side parameters (`{name:Type}`); the only text formatted into SQL is
table names and fragments chosen from fixed sets in these files: migrations.py (schema files, retention),
reads.py (devices, history, aggregates), episodes.py (anomaly episodes); writes are here.
"""

from __future__ import annotations

import time

import pyarrow as pa

from .episodes import Episodes, episode_keys
from .migrations import Schema
from .reads import Reads
from .tables import ReadCap, StoreConfig

__all__ = ["ReadCap", "Store", "StoreConfig"]


class Store(Schema, Reads, Episodes):
    """Readings, anomalies and device state in ClickHouse."""

    def _insert(self, table: str, data: pa.Table, token: str | None) -> None:
        started = time.perf_counter()
        self.backend.insert(f"{self.db}.{table}", data, token)
        self.written_at = time.monotonic()
        if self.on_insert is not None:
            self.on_insert(table, time.perf_counter() - started, data)

    def insert_readings(self, data: pa.Table, token: str | None = None) -> None:
        self._insert("readings", data, token)

    def insert_anomalies(self, data: pa.Table, token: str | None = None) -> None:
        """Flagged readings (device_id, metric, time, value, kind, detectors, score, zscore; one row per
        reading, `kind` its dominant detector), then the anomaly episodes they open, extend or join. A replay
        with the same token
        stores nothing twice and leaves the episodes as they are."""
        if data.num_rows == 0:
            return
        self._insert("anomalies", data, token)
        self.update_episodes(episode_keys(data))
