"""Pure-Python twin of ``_rolling.pyx``: same names, same floating-point operations in the same order.

Python floats are IEEE doubles and ``math.sqrt`` / ``math.log1p`` are the C library's, so every result
and every snapshot is bit-identical to the compiled module. Used when the extension is missing, when
``IOTSTREAM_PURE_PYTHON=1``, and as the reference in parity tests. Per-slot state lives in plain lists
(one row of floats, one row of ints, one ring buffer per slot); the arrays only appear in snapshots.
"""

from __future__ import annotations

import math

import numpy as np

from . import _snapshot
from ._common import (
    FLAG_ZSCORE,
    FLOAT_FIELDS,
    INT_FIELDS,
    check_batch,
    check_params,
    check_slot,
    grown_size,
    new_fstate,
    new_istate,
    params_of,
    restore_state,
)

__all__ = ["FLAG_ZSCORE", "RollingStats"]

F_SHIFT, F_MEAN, F_CMEAN, F_SSQDM, F_CSSQ, F_SABS, F_PREV = range(7)
I_POS, I_NFILL, I_NOBS, I_NSAME = range(4)
assert FLOAT_FIELDS[F_PREV] == "prev" and INT_FIELDS[I_NSAME] == "nsame"

RECOMPUTE_RATIO = 1e4
DRIFT_RATIO = 1e8
TINY_SSQDM = 1e-280
HUGE_SSQDM = 1e280
DBL_MAX = 1.7976931348623157e308
NAN = math.nan
INF = math.inf


# ----------------------------------------------------------------------
# Rolling variance (see _rolling.pyx for the comments; the operations match line by line)

def reset_var(f: list) -> None:
    f[F_MEAN] = 0.0
    f[F_CMEAN] = 0.0
    f[F_SSQDM] = 0.0
    f[F_CSSQ] = 0.0
    f[F_SABS] = 0.0


def add_var(val: float, f: list, g: list) -> None:
    if val != val:
        return
    if g[I_NOBS] == 0:
        reset_var(f)
        f[F_SHIFT] = val
    g[I_NOBS] += 1
    if val == f[F_PREV]:
        g[I_NSAME] += 1
    else:
        g[I_NSAME] = 1
    f[F_PREV] = val
    y = val - f[F_SHIFT]
    m_old = f[F_MEAN] - f[F_CMEAN]
    d = y - m_old
    inc = d / g[I_NOBS]
    t = inc - f[F_CMEAN]
    s = f[F_MEAN] + t
    f[F_CMEAN] = (s - f[F_MEAN]) - t
    f[F_MEAN] = s
    q = d * (y - (f[F_MEAN] - f[F_CMEAN]))
    t = q - f[F_CSSQ]
    s = f[F_SSQDM] + t
    f[F_CSSQ] = (s - f[F_SSQDM]) - t
    f[F_SSQDM] = s
    f[F_SABS] += abs(q)


def remove_var(val: float, f: list, g: list) -> None:
    if val != val:
        return
    g[I_NOBS] -= 1
    if g[I_NOBS] == 0:
        reset_var(f)
        return
    y = val - f[F_SHIFT]
    m_old = f[F_MEAN] - f[F_CMEAN]
    d = y - m_old
    inc = -d / g[I_NOBS]
    t = inc - f[F_CMEAN]
    s = f[F_MEAN] + t
    f[F_CMEAN] = (s - f[F_MEAN]) - t
    f[F_MEAN] = s
    q = -d * (y - (f[F_MEAN] - f[F_CMEAN]))
    t = q - f[F_CSSQ]
    s = f[F_SSQDM] + t
    f[F_CSSQ] = (s - f[F_SSQDM]) - t
    f[F_SSQDM] = s
    f[F_SABS] += abs(q)


def recompute_var(f: list, g: list, b: list) -> None:
    n = 0
    k0 = f[F_PREV]
    s1 = s2 = s3 = 0.0
    for v in b:
        if v == v:
            s1 += v - k0
            n += 1
    if n == 0:
        reset_var(f)
        return
    k = k0 + s1 / n
    for v in b:
        if v == v:
            s2 += v - k
    m = s2 / n
    for v in b:
        if v == v:
            d = (v - k) - m
            s3 += d * d
    f[F_SHIFT] = k
    f[F_MEAN] = m
    f[F_CMEAN] = 0.0
    f[F_SSQDM] = s3
    f[F_CSSQ] = 0.0
    f[F_SABS] = s3


def unstable_var(f: list, g: list) -> bool:
    ssq = f[F_SSQDM]
    m = f[F_MEAN]
    if g[I_NOBS] < 2:
        return False
    return not (f[F_SABS] <= RECOMPUTE_RATIO * ssq) or not (m * m * g[I_NOBS] <= DRIFT_RATIO * ssq)


def calc_mean(f: list, g: list) -> float:
    if g[I_NOBS] == 0:
        return NAN
    if g[I_NSAME] >= g[I_NOBS]:
        return f[F_PREV]
    return f[F_SHIFT] + (f[F_MEAN] - f[F_CMEAN])


def calc_var(f: list, g: list) -> float:
    if g[I_NOBS] < 2:
        return NAN
    if g[I_NSAME] >= g[I_NOBS]:
        return 0.0
    if f[F_SSQDM] <= 0.0:
        return 0.0
    return f[F_SSQDM] / (g[I_NOBS] - 1)


def scaled_z(dev: float, f: list, g: list, b: list) -> float:
    k = f[F_SHIFT]
    m = f[F_MEAN] - f[F_CMEAN]
    s = 0.0
    acc = 0.0
    for v in b:
        if v == v:
            d = abs((v - k) - m)
            if d > s:
                s = d
    if s == 0.0:
        if dev == 0.0:
            return 0.0
        return INF if dev > 0.0 else -INF
    if not (s <= DBL_MAX):
        return NAN
    for v in b:
        if v == v:
            d = ((v - k) - m) / s
            acc += d * d
    return (dev / s) / math.sqrt(acc / (g[I_NOBS] - 1))


def calc_z(val: float, f: list, g: list, b: list, minp: int) -> float:
    if g[I_NOBS] < minp or val != val:
        return NAN
    if g[I_NSAME] >= g[I_NOBS]:
        c = f[F_PREV]
        if val == c:
            return 0.0
        return INF if val > c else -INF
    dev = (val - f[F_SHIFT]) - (f[F_MEAN] - f[F_CMEAN])
    ssq = f[F_SSQDM]
    if TINY_SSQDM <= ssq <= HUGE_SSQDM:
        return dev / math.sqrt(ssq / (g[I_NOBS] - 1))
    return scaled_z(dev, f, g, b)


def calc_score(z: float, k: float) -> float:
    if z != z:
        return 0.0
    a = abs(z) / k
    if a > DBL_MAX:
        a = DBL_MAX
    u = math.log1p(a)
    return u / (1.0 + u)


def step(val: float, f: list, g: list, b: list, window: int) -> None:
    if g[I_NFILL] == window:
        remove_var(b[g[I_POS]], f, g)
    else:
        g[I_NFILL] += 1
    b[g[I_POS]] = val
    g[I_POS] += 1
    if g[I_POS] == window:
        g[I_POS] = 0
    add_var(val, f, g)
    if unstable_var(f, g):
        recompute_var(f, g, b)


# ----------------------------------------------------------------------
# Python face

class RollingStats:
    """Per-slot rolling mean/variance and z-score detector over count windows (see ``_rolling.pyx``)."""

    def __init__(self, window: int = 100, min_count: int = 20, z_threshold: float = 6.0,
                 capacity: int = 1024):
        window, min_count, z_threshold, capacity = check_params(window, min_count, z_threshold, capacity)
        self.window = window
        self.min_count = min_count
        self.z_threshold = z_threshold
        self._k = z_threshold / (math.e - 1.0)
        self._set_state(new_fstate(capacity), new_istate(capacity), np.full((capacity, window), np.nan))

    def _set_state(self, fs: np.ndarray, gs: np.ndarray, buf: np.ndarray) -> None:
        self._f = fs.tolist()
        self._g = gs.tolist()
        self._b = buf.tolist()

    @property
    def nslots(self) -> int:
        return len(self._f)

    def _grow(self, need: int) -> None:
        n = len(self._f)
        extra = grown_size(n, need) - n
        self._f.extend(new_fstate(extra).tolist())
        self._g.extend(new_istate(extra).tolist())
        self._b.extend([NAN] * self.window for _ in range(extra))

    def update(self, slots, ts_ms, values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Score each reading against its slot's window, then add it; returns ``(z, score, flags)``."""
        sl, _ts, vals = check_batch(slots, ts_ms, values)
        n = len(sl)
        if n and sl.max() >= len(self._f):
            self._grow(int(sl.max()) + 1)
        z_out = [0.0] * n
        sc_out = [0.0] * n
        fl_out = [0] * n
        fs, gs, bs = self._f, self._g, self._b
        window, minp, zthr, k = self.window, self.min_count, self.z_threshold, self._k
        for i, (s, val) in enumerate(zip(sl.tolist(), vals.tolist(), strict=True)):
            f = fs[s]
            g = gs[s]
            b = bs[s]
            z = calc_z(val, f, g, b, minp)
            z_out[i] = z
            sc_out[i] = calc_score(z, k)
            if abs(z) > zthr:
                fl_out[i] = FLAG_ZSCORE
            step(val, f, g, b, window)
        return (np.array(z_out, dtype=np.float64), np.array(sc_out, dtype=np.float64),
                np.array(fl_out, dtype=np.uint8))

    def mean(self, slot) -> float:
        """Mean of the real values in the slot's window; NaN when it has none."""
        s = check_slot(slot)
        return calc_mean(self._f[s], self._g[s]) if s < len(self._f) else NAN

    def var(self, slot) -> float:
        """Sample variance (ddof=1) of the slot's window; NaN below 2 real values."""
        s = check_slot(slot)
        return calc_var(self._f[s], self._g[s]) if s < len(self._f) else NAN

    def count(self, slot) -> int:
        """Real (non-NaN) values in the slot's window."""
        s = check_slot(slot)
        return int(self._g[s][I_NOBS]) if s < len(self._f) else 0

    def to_bytes(self) -> bytes:
        """Snapshot of the whole state (versioned; loads in either twin)."""
        return _snapshot.dump(
            "RollingStats", params_of(self), {"fstate": FLOAT_FIELDS, "istate": INT_FIELDS},
            {"fstate": np.array(self._f, dtype=np.float64).reshape(-1, len(FLOAT_FIELDS)),
             "istate": np.array(self._g, dtype=np.int64).reshape(-1, len(INT_FIELDS)),
             "buf": np.array(self._b, dtype=np.float64).reshape(-1, self.window)})

    @classmethod
    def from_bytes(cls, data) -> RollingStats:
        """Restore a snapshot made by ``to_bytes`` of either twin."""
        params, fields, arrays = _snapshot.load(data, "RollingStats")
        self = cls(capacity=1, **params)
        self._set_state(*restore_state(fields, arrays, self.window))
        return self

    def __reduce__(self):
        return (type(self).from_bytes, (self.to_bytes(),))

    def __repr__(self) -> str:
        return (f"RollingStats(window={self.window}, min_count={self.min_count}, "
                f"z_threshold={self.z_threshold!r}, nslots={self.nslots})")
