"""How the product reaches ClickHouse: clickhouse-connect, over HTTP to a server or in-process to chDB.

Three calls (`command`, `query`, `insert`), parameters bound on the server (`{name:Type}` placeholders),
results as Arrow tables, so Store's SQL runs unchanged on either.
"""

from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager, nullcontext
from urllib.parse import parse_qsl, urlencode, urlparse

import pyarrow as pa

_TOKEN = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ENGINE_PATH: str | None = None  # the data folder of this process's chDB engine (one per process), once opened


_CODE = re.compile(r"\bCode:\s*(\d+)")
# ClickHouse error codes that pass by themselves: a busy or restarting server, the network, too many parts
# waiting for merges. A repeated insert carries the same deduplication token, so retrying is safe. Every
# other error (schema, types, disk full, read-only, ...) needs an operator and is not retried.
TRANSIENT_CODES = frozenset(
    {
        3,
        32,  # UNEXPECTED_END_OF_FILE, ATTEMPT_TO_READ_AFTER_EOF: the connection broke
        159,
        209,
        210,
        1000,  # TIMEOUT_EXCEEDED, SOCKET_TIMEOUT, NETWORK_ERROR, POCO_EXCEPTION
        202,
        236,
        241,
        394,  # TOO_MANY_SIMULTANEOUS_QUERIES, ABORTED, MEMORY_LIMIT_EXCEEDED, QUERY_WAS_CANCELLED
        225,
        242,
        319,
        999,  # NO_ZOOKEEPER, TABLE_IS_READ_ONLY (replica lost Keeper), UNKNOWN_STATUS_OF_INSERT, KEEPER
        252,  # TOO_MANY_PARTS
    }
)


class StorageError(RuntimeError):
    """ClickHouse refused or failed a statement. `code` is ClickHouse's error code when the message has one;
    `transient` says whether retrying the same statement later can succeed."""

    def __init__(self, message: str, transient: bool | None = None):
        super().__init__(message)
        found = _CODE.search(message)
        self.code = int(found.group(1)) if found else None
        self.transient = self.code in TRANSIENT_CODES if transient is None else transient


# Settings for a cluster: rows of a device live on one shard (Distributed by device_id), so joins and IN
# subqueries over distributed tables can run shard-locally; inserts reach the shards before they return,
# so an acknowledged write is stored and its deduplication token applies there.
CLUSTER_SETTINGS = {"distributed_product_mode": "local", "distributed_foreground_insert": 1}


# Every insert: the materialized views fed by the table (device_metrics and the three rollups) run in
# parallel threads rather than one after another. An insert into readings then holds the embedded engine,
# which every query waits for, about half as long for the same CPU (measured: 50,000 readings, median
# 254-373 -> 121-185 ms; see docs/benchmarks.md).
INSERT_SETTINGS = {"parallel_view_processing": 1}


class ReadsFirst:
    """Order of statements on the embedded engine, which runs one statement at a time (one lock per chDB
    connection, shared by every client of the process): a write (an insert, or a command: DDL, INSERT ...
    SELECT) waits until the reads that came before it have run. A plain lock lets the thread that just
    released it take it again first, and the processor writes readings, anomalies and episodes back to
    back, so a query could wait for several writes; now it waits for at most the statement in progress
    and those queued before it. Reads that come after a write wait for it, so a stream of queries cannot
    stall ingestion."""

    def __init__(self):
        self._next = 0  # ticket of the next read
        self._pending: set[int] = set()  # tickets of reads not finished yet
        self._changed = threading.Condition()

    @contextmanager
    def read(self):
        with self._changed:
            ticket = self._next
            self._next += 1
            self._pending.add(ticket)
        try:
            yield
        finally:
            with self._changed:
                self._pending.discard(ticket)
                self._changed.notify_all()

    def before_write(self) -> None:
        with self._changed:
            ahead = self._next
            self._changed.wait_for(lambda: not self._pending or min(self._pending) >= ahead)


_GATES: dict[str, ReadsFirst] = {}  # chDB data folder -> its gate (one engine per folder and process)
_GATES_LOCK = threading.Lock()


class Backend:
    """ClickHouse through clickhouse-connect, one client code path for both modes:

    - a server over HTTP(S), e.g. `http://user:pass@host:8123/iotstream`; with `?cluster=NAME` a cluster,
      for which Store.migrate creates the Replicated/Distributed schema (clickhouse.cluster);
    - the embedded engine, `chdb://DATA_DIR` (chDB registers itself as a clickhouse-connect transport;
      one data folder per process, shared by every client of the process).
    """

    def __init__(self, dsn: str, database: str = "iotstream", cluster: str | None = None):
        import clickhouse_connect

        if not _IDENT.fullmatch(database) or (cluster is not None and not _IDENT.fullmatch(cluster)):
            raise ValueError(f"bad database or cluster name: {database!r}, {cluster!r}")
        self.database = database
        self.cluster = cluster
        self.embedded = dsn.startswith("chdb://")
        settings = CLUSTER_SETTINGS if cluster else None
        self.gate: ReadsFirst | None = None  # embedded only: a server runs statements concurrently
        if self.embedded:
            with _GATES_LOCK:
                self.gate = _GATES.setdefault(dsn, ReadsFirst())
        self._client = self._call(clickhouse_connect.get_client, dsn=dsn, settings=settings)
        on_cluster = f" ON CLUSTER {cluster}" if cluster else ""
        self.command(f"CREATE DATABASE IF NOT EXISTS {database}{on_cluster}")

    def command(self, sql: str, params: dict | None = None) -> None:
        if self.gate:  # DDL and INSERT ... SELECT (episodes): writes, after the reads queued before them
            self.gate.before_write()
        self._call(self._client.command, sql, parameters=_bindable(params))

    def query(self, sql: str, params: dict | None = None) -> pa.Table:
        with self.gate.read() if self.gate else nullcontext():
            return self._call(self._client.query_arrow, sql, parameters=_bindable(params))

    def insert(self, table: str, data: pa.Table, token: str | None = None) -> None:
        if token is not None and not _TOKEN.fullmatch(
            token
        ):  # tokens are built internally; guard all the same
            raise ValueError(f"bad insert_deduplication_token {token!r}")
        settings: dict[str, object] = dict(INSERT_SETTINGS)
        if token:
            settings["insert_deduplication_token"] = token
        database, _, name = table.rpartition(".")
        if self.gate:
            self.gate.before_write()
        self._call(self._client.insert_arrow, name, data, database=database or None, settings=settings)

    def close(self) -> None:
        self._client.close()

    def _call(self, fn, *args, **kwargs):
        from clickhouse_connect.driver.exceptions import Error, OperationalError

        try:
            return fn(*args, **kwargs)
        except OperationalError as exc:  # the server could not be reached or answered garbage
            self._flush()
            raise StorageError(
                str(exc), transient=True if getattr(exc, "code", None) is None else None
            ) from exc
        except (Error, RuntimeError) as exc:  # the chDB transport lets the engine's RuntimeError through
            self._flush()
            raise StorageError(str(exc)) from exc

    def _flush(self) -> None:
        """chDB: a query that fails mid-output (a read or time limit) leaves output behind that the next
        query on the client would read as its own; a throw-away query takes it."""
        if self.embedded:
            try:
                self._client.command("SELECT 1")
            except Exception:  # noqa: BLE001 - what it returns or raises is the leftover, not news
                pass


def _bindable(params: dict | None) -> dict:
    # clickhouse-connect sends a bool as "True", which no numeric ClickHouse type parses.
    return {k: int(v) if isinstance(v, bool) else v for k, v in (params or {}).items()}


def open_backend(
    data_dir: str | None = None, clickhouse_url: str | None = None, database: str = "iotstream"
) -> Backend:
    """The server when a URL is given (its path names the database), else the embedded engine on
    `data_dir`."""
    if not clickhouse_url:
        global ENGINE_PATH
        path = os.path.realpath(data_dir or "./iotstream-data")
        backend = Backend(f"chdb://{path}", database)
        ENGINE_PATH = ENGINE_PATH or path
        return backend
    parts = urlparse(clickhouse_url)
    query = dict(parse_qsl(parts.query))
    cluster = query.pop("cluster", None)
    dsn = parts._replace(path="/", query=urlencode(query)).geturl()
    return Backend(dsn, parts.path.strip("/") or "iotstream", cluster)
