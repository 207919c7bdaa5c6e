"""Processor: decode queued batches to columns, update rolling state through ext/, store, then ack/commit."""

from .decode import Columns, decode_batches
from .processor import Processor

__all__ = ["Columns", "Processor", "decode_batches"]
