"""The two ways to reach ClickHouse: the embedded engine (chDB) and a server (clickhouse-connect).

Both expose the same three calls (`command`, `query`, `insert`), take parameters bound on the server
(`{name:Type}` placeholders), and return results as Arrow tables, so Store's SQL runs unchanged on either.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import parse_qsl, urlencode, urlparse

import pyarrow as pa

_TOKEN = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class StorageError(RuntimeError):
    """ClickHouse refused or failed a statement."""


# chDB runs one engine per process, and one statement at a time is all it survives: two parameterised
# queries at once can swap parameters, and a query during an `INSERT ... FROM Python(table)` can hang both
# (found by bench/e2e.py). Every ChdbBackend of the process shares this lock.
_ENGINE_LOCK = threading.RLock()
ENGINE_PATH: str | None = None  # the data path the process's chDB engine was opened with

_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0", "\b": "\\b", "\f": "\\f"}


def bind_text(value) -> str:
    """A parameter value as the text ClickHouse parses for `{name:Type}`: scalars in the escaped (TSV)
    format, arrays as literals of quoted elements. chDB takes this text; clickhouse-connect does its own."""
    if isinstance(value, str):
        return "".join(_ESCAPES.get(c, c) for c in value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_quoted(v) for v in value) + "]"
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value) if isinstance(value, float) else str(value)


def _quoted(value) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return bind_text(value)


def _settings_clause(token: str | None) -> str:
    if token is None:
        return ""
    if not _TOKEN.fullmatch(token):  # tokens are built internally; this guards the one place they meet SQL
        raise ValueError(f"bad insert_deduplication_token {token!r}")
    return f" SETTINGS insert_deduplication_token = '{token}'"


class ChdbBackend:
    """ClickHouse's own engine in this process, data in `path`. chDB allows one path per process."""

    def __init__(self, path: str, database: str = "iotstream"):
        from chdb import session

        if not _IDENT.fullmatch(database):
            raise ValueError(f"bad database name {database!r}")
        self.path = path
        self.database = database
        global ENGINE_PATH
        with _ENGINE_LOCK:
            self._session = session.Session(path)
            ENGINE_PATH = ENGINE_PATH or path
        self._run(f"CREATE DATABASE IF NOT EXISTS {database}", None, "CSV")

    def command(self, sql: str, params: dict | None = None) -> None:
        self._run(sql, params, "CSV")

    def query(self, sql: str, params: dict | None = None) -> pa.Table:
        return self._run(sql, params, "ArrowTable")

    def insert(self, table: str, data: pa.Table, token: str | None = None) -> None:
        columns = ", ".join(data.column_names)
        sql = f"INSERT INTO {table} ({columns}){_settings_clause(token)} SELECT * FROM Python(data)"
        self._run(sql, None, "CSV")

    def close(self) -> None:
        with _ENGINE_LOCK:
            self._session.close()

    def _run(self, sql, params, fmt):
        bound = {k: bind_text(v) for k, v in (params or {}).items()}
        with _ENGINE_LOCK:
            try:
                return self._session.query(sql, fmt, params=bound)
            except Exception as exc:  # chDB raises its own ChdbError; callers see one type
                self._flush()
                raise StorageError(str(exc)) from exc

    def _flush(self) -> None:
        """A query that fails mid-output (a read or time limit) leaves output behind that the session's
        next query would return as its own (chDB): a throw-away query takes it."""
        try:
            self._session.query("SELECT 1", "CSV")
        except Exception:  # what it returns or raises is the leftover, not news
            pass


# Settings for a cluster: rows of a device live on one shard (Distributed by device_id), so joins and IN
# subqueries over distributed tables can run shard-locally; inserts reach the shards before they return,
# so an acknowledged write is stored and its deduplication token applies there.
CLUSTER_SETTINGS = {"distributed_product_mode": "local", "distributed_foreground_insert": 1}


class RemoteBackend:
    """A ClickHouse server over HTTP, e.g. `http://user:pass@host:8123/iotstream`; with `?cluster=NAME`,
    a cluster: Store.migrate then creates the Replicated/Distributed schema (clickhouse.cluster)."""

    def __init__(self, url: str):
        import clickhouse_connect

        parts = urlparse(url)
        query = dict(parse_qsl(parts.query))
        self.cluster = query.pop("cluster", None)
        database = parts.path.strip("/") or "iotstream"
        if not _IDENT.fullmatch(database) or (self.cluster is not None and not _IDENT.fullmatch(self.cluster)):
            raise ValueError(f"bad database or cluster name in {url!r}")
        self.database = database
        dsn = parts._replace(path="/", query=urlencode(query)).geturl()
        settings = CLUSTER_SETTINGS if self.cluster else None
        self._client = clickhouse_connect.get_client(dsn=dsn, settings=settings)
        on_cluster = f" ON CLUSTER {self.cluster}" if self.cluster else ""
        self._client.command(f"CREATE DATABASE IF NOT EXISTS {database}{on_cluster}")

    def command(self, sql: str, params: dict | None = None) -> None:
        self._call(self._client.command, sql, parameters=params or {})

    def query(self, sql: str, params: dict | None = None) -> pa.Table:
        return self._call(self._client.query_arrow, sql, parameters=params or {})

    def insert(self, table: str, data: pa.Table, token: str | None = None) -> None:
        settings = {"insert_deduplication_token": token} if token else None
        database, _, name = table.rpartition(".")
        self._call(self._client.insert_arrow, name, data, database=database or None, settings=settings)

    def close(self) -> None:
        self._client.close()

    @staticmethod
    def _call(fn, *args, **kwargs):
        from clickhouse_connect.driver.exceptions import ClickHouseError

        try:
            return fn(*args, **kwargs)
        except ClickHouseError as exc:
            raise StorageError(str(exc)) from exc


def open_backend(data_dir: str | None = None, clickhouse_url: str | None = None, database: str = "iotstream"):
    """The server backend when a URL is given, else the embedded engine on `data_dir`."""
    if clickhouse_url:
        return RemoteBackend(clickhouse_url)
    return ChdbBackend(data_dir or "./iotstream-data", database)
