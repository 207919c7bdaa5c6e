"""What every part of the store shares: its configuration, the backend and the $db-qualified SQL runner."""

from __future__ import annotations

import math
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from .backend import Backend

_MS = "fromUnixTimestamp64Milli({%s:Int64}, 'UTC')"
# Queries of one or a few devices read a few granules: a second thread costs more than it saves
# (measured ~3.8 -> ~2.9 ms for a device-day of rollup_1m on 2 cores).
ONE_THREAD = " SETTINGS max_threads = 1"
FEW_DEVICES = 16


@dataclass(frozen=True)
class ReadCap:
    """Work one query may do, enforced by ClickHouse itself (so a query the caller gave up on stops too):
    rows read (TOO_MANY_ROWS when passed) and seconds (TIMEOUT_EXCEEDED). 0: no cap."""

    rows: int = 0
    seconds: float = 0.0

    def settings(self, one_thread: bool = False) -> str:
        items = ["max_threads = 1"] if one_thread else []
        if self.rows:
            items.append(f"max_rows_to_read = {int(self.rows)}, read_overflow_mode = 'throw'")
        if self.seconds:
            seconds = max(0.001, float(self.seconds))
            items.append(f"max_execution_time = {seconds:.3f}, timeout_overflow_mode = 'throw'")
        return " SETTINGS " + ", ".join(items) if items else ""


NO_CAP = ReadCap()


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


class Tables:
    """The database of one deployment; the Store's parts (schema, reads, episodes) act on it."""

    def __init__(
        self,
        backend: Backend,
        config: StoreConfig | None = None,
        on_insert: Callable[[str, float, pa.Table], None] | None = None,
        on_episodes: Callable[[], None] | None = None,
    ):
        self.backend = backend
        self.config = config or StoreConfig()
        self.db = backend.database
        self.on_insert = on_insert  # hears of every insert that succeeded: (table, seconds, data)
        self.on_episodes = on_episodes  # hears of every episode write, once it is done (wakes watchers)
        # Episode rows are versioned by write time; one writer at a time in this process keeps versions in
        # commit order, which WatchAnomalies relies on.
        self._episode_lock = threading.Lock()
        self.written_at = -math.inf  # monotonic end of this process's last write (GetStats' shared figures)

    def _sql(self, text: str) -> str:
        # Table names are qualified with the database ($db): sessions of one chDB engine share `USE`.
        return string.Template(text).substitute(
            db=self.db,
            retention_days=int(self.config.retention_days),
            long_retention_days=int(self.config.long_retention_days),
        )

    def _query(self, sql: str, params: dict | None = None) -> pa.Table:
        return self.backend.query(self._sql(sql), params)

    def _command(self, sql: str, params: dict | None = None) -> None:
        self.backend.command(self._sql(sql), params)
        self.written_at = time.monotonic()
