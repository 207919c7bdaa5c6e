"""Ingest: the gRPC service devices stream readings to."""

from .limits import DeviceLimiter, RateLimited, TokenBucket, TooManyStreams
from .server import Counters, IngestService, add_to_server
from .validate import Limits, validate

__all__ = [
    "Counters",
    "DeviceLimiter",
    "IngestService",
    "Limits",
    "RateLimited",
    "TokenBucket",
    "TooManyStreams",
    "add_to_server",
    "validate",
]
