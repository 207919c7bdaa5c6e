"""How the product reaches ClickHouse: clickhouse-connect, over HTTP to a server or in-process to chDB.

Three calls (`command`, `query`, `insert`), parameters bound on the server (`{name:Type}` placeholders),
results as Arrow tables, so Store's SQL runs unchanged on either.
"""

from __future__ import annotations

import os
import queue
import re
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


# Embedded: connections for reads, beside the one for writes (see Backend). Queries that come at once beyond
# this many wait for a free one; the Query service runs at most the default thread pool's workers at once.
READ_CONNECTIONS = 4

# Settings for a cluster: rows of a device live on one shard (Distributed by device_id), so joins and IN
# subqueries over distributed tables can run shard-locally; inserts reach the shards before they return,
# so an acknowledged write is stored and its deduplication token applies there.
CLUSTER_SETTINGS = {"distributed_product_mode": "local", "distributed_foreground_insert": 1}


# Every insert: the materialized views fed by the table (device_metrics and the three rollups) run in
# parallel threads rather than one after another, so an insert into readings takes about half as long for
# the same CPU (measured: 50,000 readings, median 254-373 -> 121-185 ms; see docs/benchmarks.md).
INSERT_SETTINGS = {"parallel_view_processing": 1}


class Backend:
    """ClickHouse through clickhouse-connect, one client code path for both modes:

    - a server over HTTP(S), e.g. `http://user:pass@host:8123/iotstream`; with `?cluster=NAME` a cluster,
      for which Store.migrate creates the Replicated/Distributed schema (clickhouse.cluster);
    - the embedded engine, `chdb://DATA_DIR` (chDB registers itself as a clickhouse-connect transport;
      one data folder per process, shared by every client of the process).

    Embedded, reads run on chDB connections of their own. Statements on one connection run one at a time
    (its lock), but the engine runs statements of different connections side by side, so a query no longer
    waits for the insert in progress (one of 50,000 readings holds its connection ~120-185 ms, a chunk of
    350,000 up to 0.7 s): it is answered from the parts committed before it began. Reads take any free one
    of READ_CONNECTIONS (a slow Aggregate does not hold up a GetDevice); writes (inserts, DDL,
    INSERT ... SELECT) share the write connection, in turn.
    """

    def __init__(self, dsn: str, database: str = "iotstream", cluster: str | None = None):
        import clickhouse_connect

        if not _IDENT.fullmatch(database) or (cluster is not None and not _IDENT.fullmatch(cluster)):
            raise ValueError(f"bad database or cluster name: {database!r}, {cluster!r}")
        self.database = database
        self.cluster = cluster
        self.embedded = dsn.startswith("chdb://")
        settings = CLUSTER_SETTINGS if cluster else None
        self._client = self._call(clickhouse_connect.get_client, dsn=dsn, settings=settings)
        # Embedded: the free read connections. A server answers concurrent requests on one client (a pool of
        # HTTP connections).
        self._reads: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(READ_CONNECTIONS if self.embedded else 0):
            self._reads.put(self._call(clickhouse_connect.get_client, dsn=dsn))
        on_cluster = f" ON CLUSTER {cluster}" if cluster else ""
        self.command(f"CREATE DATABASE IF NOT EXISTS {database}{on_cluster}")

    def command(self, sql: str, params: dict | None = None) -> None:
        self._call(self._client.command, sql, parameters=_bindable(params))

    def query(self, sql: str, params: dict | None = None) -> pa.Table:
        client = self._reads.get() if self.embedded else self._client
        try:
            return self._call(client.query_arrow, sql, parameters=_bindable(params))
        finally:
            if self.embedded:
                self._reads.put(client)

    def insert(self, table: str, data: pa.Table, token: str | None = None) -> None:
        if token is not None and not _TOKEN.fullmatch(
            token
        ):  # tokens are built internally; guard all the same
            raise ValueError(f"bad insert_deduplication_token {token!r}")
        settings: dict[str, object] = dict(INSERT_SETTINGS)
        if token:
            settings["insert_deduplication_token"] = token
        database, _, name = table.rpartition(".")
        self._call(self._client.insert_arrow, name, data, database=database or None, settings=settings)

    def close(self) -> None:
        while not self._reads.empty():
            self._reads.get().close()
        self._client.close()

    def _call(self, fn, *args, **kwargs):
        from clickhouse_connect.driver.exceptions import Error, OperationalError

        try:
            return fn(*args, **kwargs)
        except OperationalError as exc:  # the server could not be reached or answered garbage
            self._flush(fn)
            raise StorageError(
                str(exc), transient=True if getattr(exc, "code", None) is None else None
            ) from exc
        except (Error, RuntimeError) as exc:  # the chDB transport lets the engine's RuntimeError through
            self._flush(fn)
            raise StorageError(str(exc)) from exc

    def _flush(self, failed) -> None:
        """chDB: a query that fails mid-output (a read or time limit) leaves output behind that the next
        query on the client would read as its own; a throw-away query on that client takes it."""
        client = getattr(failed, "__self__", None)  # the client whose method failed (not get_client)
        if self.embedded and client is not None:
            try:
                client.command("SELECT 1")
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
