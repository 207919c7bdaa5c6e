"""Node assembly: one process running any of the roles (ingest, process, query) over the local log or
Kafka."""

from .assembly import (
    ALL_ROLES,
    INGEST,
    PROCESS,
    QUERY,
    QUERY_SERVICE,
    SERVER_OPTIONS,
    Config,
    EmbeddedServer,
    Node,
    server_options,
)

__all__ = [
    "ALL_ROLES",
    "INGEST",
    "PROCESS",
    "QUERY",
    "QUERY_SERVICE",
    "SERVER_OPTIONS",
    "Config",
    "EmbeddedServer",
    "Node",
    "server_options",
]
