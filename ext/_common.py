"""What both twins share: flag bits, the state layout, and argument checks (all outside the hot loop)."""

from __future__ import annotations

import math

import numpy as np

FLAG_ZSCORE = 1

# Per-slot state columns. The Cython module mirrors this order in a cdef enum and refuses to import
# when the two disagree; snapshots name the columns, so a layout change still loads old snapshots.
FLOAT_FIELDS = ["shift", "mean", "cmean", "ssqdm", "cssq", "sabs", "prev"]
INT_FIELDS = ["pos", "nfill", "nobs", "nsame"]
FLOAT_DEFAULTS = {"shift": 0.0, "mean": 0.0, "cmean": 0.0, "ssqdm": 0.0, "cssq": 0.0, "sabs": 0.0,
                  "prev": math.nan}
INT_DEFAULTS = {"pos": 0, "nfill": 0, "nobs": 0, "nsame": 0}


def new_fstate(n: int) -> np.ndarray:
    """Float state for ``n`` empty slots."""
    a = np.empty((n, len(FLOAT_FIELDS)), dtype=np.float64)
    for j, name in enumerate(FLOAT_FIELDS):
        a[:, j] = FLOAT_DEFAULTS[name]
    return a


def new_istate(n: int) -> np.ndarray:
    """Integer state for ``n`` empty slots."""
    a = np.empty((n, len(INT_FIELDS)), dtype=np.int64)
    for j, name in enumerate(INT_FIELDS):
        a[:, j] = INT_DEFAULTS[name]
    return a


def params_of(stats) -> dict:
    """Constructor arguments that a snapshot must carry."""
    return {"window": int(stats.window), "min_count": int(stats.min_count),
            "z_threshold": float(stats.z_threshold)}


def check_params(window, min_count, z_threshold, capacity) -> tuple[int, int, float, int]:
    """Validate constructor arguments; ``min_count`` is clamped to [2, window] (a variance needs two)."""
    window, min_count, capacity = int(window), int(min_count), int(capacity)
    z_threshold = float(z_threshold)
    if window < 2:
        msg = f"window must be >= 2, got {window}"
        raise ValueError(msg)
    if min_count < 0:
        msg = f"min_count must be >= 0, got {min_count}"
        raise ValueError(msg)
    if not 0.0 < z_threshold < math.inf:
        msg = f"z_threshold must be a positive finite number, got {z_threshold!r}"
        raise ValueError(msg)
    if capacity < 1:
        msg = f"capacity must be >= 1, got {capacity}"
        raise ValueError(msg)
    return window, min(max(min_count, 2), window), z_threshold, capacity


def check_slot(slot) -> int:
    """A slot index for the accessors; negative slots are an error."""
    s = int(slot)
    if s < 0:
        msg = f"slot must be non-negative, got {s}"
        raise IndexError(msg)
    return s


def check_batch(slots, ts_ms, values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contiguous int64/int64/float64 copies of one batch, same length, slots non-negative."""
    sl = np.ascontiguousarray(slots, dtype=np.int64).reshape(-1)
    ts = np.ascontiguousarray(ts_ms, dtype=np.int64).reshape(-1)
    vals = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    if not len(sl) == len(ts) == len(vals):
        msg = f"slots, ts_ms and values differ in length: {len(sl)}, {len(ts)}, {len(vals)}"
        raise ValueError(msg)
    if len(sl) and sl.min() < 0:
        i = int(np.argmin(sl))
        msg = f"slots must be non-negative; slots[{i}] = {int(sl[i])}"
        raise ValueError(msg)
    return sl, ts, vals


def grown_size(nslots: int, need: int) -> int:
    """Slot count once a batch names slot ``need - 1``: doubling, so growth is amortised and the size
    depends only on the largest slot ever seen (not on how the stream was cut into batches)."""
    while nslots < need:
        nslots *= 2
    return nslots


def restore_state(fields: dict[str, list[str]], arrays: dict[str, np.ndarray], window: int):
    """Validated ``(fstate, istate, buf)`` from a loaded snapshot, columns remapped to this layout."""
    from ._snapshot import remap

    fs = np.ascontiguousarray(remap(arrays["fstate"], fields["fstate"], FLOAT_FIELDS, FLOAT_DEFAULTS),
                              dtype=np.float64)
    gs = np.ascontiguousarray(remap(arrays["istate"], fields["istate"], INT_FIELDS, INT_DEFAULTS),
                              dtype=np.int64)
    buf = np.ascontiguousarray(arrays["buf"], dtype=np.float64)
    if not (fs.shape[0] == gs.shape[0] == buf.shape[0] >= 1 and buf.shape[1] == window):
        msg = (f"inconsistent snapshot shapes: fstate {fs.shape}, istate {gs.shape}, buf {buf.shape} "
               f"for window={window}")
        raise ValueError(msg)
    return fs, gs, buf
