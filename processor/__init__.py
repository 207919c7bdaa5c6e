"""Processor: decode queued batches to columns, update rolling state through ext/, store, then ack/commit."""

from .decode import Columns, decode_batches, to_columns
from .processor import Prepared, Processor
from .state import PartitionState

__all__ = ["Columns", "PartitionState", "Prepared", "Processor", "decode_batches", "to_columns"]
