"""ClickHouse storage: schema migrations, the two backends, and every SQL statement the product runs."""

from .backend import ChdbBackend, RemoteBackend, StorageError, open_backend
from .store import Store

__all__ = ["ChdbBackend", "RemoteBackend", "Store", "StorageError", "open_backend"]
