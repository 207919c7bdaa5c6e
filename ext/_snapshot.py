"""Versioned byte format of the kernel's state, the same compiled or not, so a snapshot taken by one loads in
the other.

Layout::

    magic  b"IOTSRS\\x00\\x00"   8 bytes
    version                      uint16 little-endian
    header length                uint32 little-endian
    header                       UTF-8 JSON: kind, params, field names, and name/dtype/shape per array
    arrays                       raw little-endian C-order bytes, in header order

State arrays are stored whole with the names of their columns, so a later version that adds a column can
load an older snapshot: columns are matched by name and missing ones take their default.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import numpy as np

MAGIC = b"IOTSRS\x00\x00"
VERSION = 1
_HEAD = struct.Struct("<HI")


def dump(kind: str, params: dict, fields: dict[str, list[str]], arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise ``arrays`` (name -> ndarray) with ``params`` and column names into bytes."""
    blobs = []
    meta = []
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        meta.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape)})
        blobs.append(a.reshape(-1).view(np.uint8).data)  # joined below: one copy of the state, not two
    header = json.dumps(
        {"kind": kind, "params": params, "fields": fields, "arrays": meta}, sort_keys=True
    ).encode()
    return b"".join([MAGIC, _HEAD.pack(VERSION, len(header)), header, *blobs])


def load(data: bytes, kind: str) -> tuple[dict, dict[str, list[str]], dict[str, np.ndarray]]:
    """Inverse of :func:`dump`; raises ``ValueError`` naming what is wrong with ``data``."""
    data = bytes(data)
    if data[: len(MAGIC)] != MAGIC:
        msg = f"not an iotstream rolling-state snapshot (magic {data[: len(MAGIC)]!r}, want {MAGIC!r})"
        raise ValueError(msg)
    off = len(MAGIC)
    if len(data) < off + _HEAD.size:
        msg = f"truncated snapshot header ({len(data)} bytes)"
        raise ValueError(msg)
    version, hlen = _HEAD.unpack_from(data, off)
    if version > VERSION:
        msg = f"snapshot version {version} is newer than this build understands ({VERSION})"
        raise ValueError(msg)
    off += _HEAD.size
    header = json.loads(data[off : off + hlen].decode())
    off += hlen
    if header["kind"] != kind:
        msg = f"snapshot holds {header['kind']!r}, not {kind!r}"
        raise ValueError(msg)
    arrays = {}
    for m in header["arrays"]:
        dt = np.dtype(m["dtype"])
        count = int(np.prod(m["shape"], dtype=np.int64))
        nbytes = count * dt.itemsize
        if off + nbytes > len(data):
            msg = f"truncated snapshot: array {m['name']!r} needs {nbytes} bytes at offset {off}"
            raise ValueError(msg)
        a = np.frombuffer(data, dtype=dt, count=count, offset=off).reshape(m["shape"])
        arrays[m["name"]] = a.astype(dt.newbyteorder("="))  # native order, writable copy
        off += nbytes
    return header["params"], header["fields"], arrays


def remap(arr: np.ndarray, saved: list[str], wanted: list[str], defaults: Mapping[str, float]) -> np.ndarray:
    """Reorder the columns of a 2-D state array from ``saved`` names to ``wanted`` names."""
    if saved == wanted:
        return arr
    out = np.empty((arr.shape[0], len(wanted)), dtype=arr.dtype)
    for j, name in enumerate(wanted):
        out[:, j] = arr[:, saved.index(name)] if name in saved else defaults[name]
    return out
