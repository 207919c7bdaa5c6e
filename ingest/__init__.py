"""Ingest: the gRPC service devices stream readings to."""

from .server import Counters, IngestService, add_to_server
from .validate import Limits, validate

__all__ = ["Counters", "IngestService", "Limits", "add_to_server", "validate"]
