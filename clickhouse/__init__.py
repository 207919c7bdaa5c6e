"""ClickHouse storage: schema migrations, the clickhouse-connect backend (server or embedded chDB), and every
SQL statement the product runs."""

from .backend import Backend, StorageError, open_backend
from .store import Store

__all__ = ["Backend", "Store", "StorageError", "open_backend"]
