# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
# distutils: extra_compile_args = -ffp-contract=off
"""Rolling statistics over many keys at once: the compiled twin of ``rolling_py``.

Every reading of a batch is ``(slot, ts_ms, value)``; per slot the kernel keeps a count window of the last
``window`` readings in a ring buffer and the window's Welford state. The loop runs without the GIL and
touches only C scalars and memoryviews; all Python work (validation, growing the state, allocating the
outputs) happens before it. ``rolling_py`` performs the same floating-point operations in the same order,
so both produce bit-identical results and snapshots (``tests/unit/test_rolling.py`` checks this).
``-ffp-contract=off`` keeps the C compiler from fusing multiply-adds, which would break that parity.
"""

import math

import numpy as np

from libc.math cimport INFINITY, NAN, fabs, log1p, sqrt
from libc.stdint cimport int64_t, uint8_t

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

ctypedef double float64_t

# Column layout of the per-slot state (same names and order in rolling_py.FLOAT_FIELDS / INT_FIELDS).
cdef enum:
    F_SHIFT = 0     # K: values are stored relative to it, so 1e12 + tiny noise stays exact
    F_MEAN = 1      # mean of (x - K) over the window
    F_CMEAN = 2     # Kahan compensation of F_MEAN (true mean = F_MEAN - F_CMEAN)
    F_SSQDM = 3     # sum of squared differences from the mean
    F_CSSQ = 4      # Kahan compensation of F_SSQDM
    F_SABS = 5      # sum of |updates| to F_SSQDM since the last recompute: the scale of its rounding error
    F_PREV = 6      # last real value added
    NF = 7
    I_POS = 0       # next ring position to write
    I_NFILL = 1     # ring positions in use (<= window)
    I_NOBS = 2      # real (non-NaN) values in the window
    I_NSAME = 3     # length of the run of identical real values ending at F_PREV (GH#42064 idea)
    NI = 4

cdef enum:
    Z_FLAG = 1      # FLAG_ZSCORE, as a C constant for the nogil loop

if [FLOAT_FIELDS.index(n) for n in ("shift", "mean", "cmean", "ssqdm", "cssq", "sabs", "prev")] != [
        F_SHIFT, F_MEAN, F_CMEAN, F_SSQDM, F_CSSQ, F_SABS, F_PREV] or len(FLOAT_FIELDS) != NF or [
        INT_FIELDS.index(n) for n in ("pos", "nfill", "nobs", "nsame")] != [I_POS, I_NFILL, I_NOBS, I_NSAME] \
        or len(INT_FIELDS) != NI:
    raise ImportError("iotstream.ext._rolling was compiled against a different state layout than _common")
if FLAG_ZSCORE != Z_FLAG:
    raise ImportError("iotstream.ext._rolling was compiled with different flag bits than _common")

# Recompute the window from the ring buffer when the accumulated rounding error of ssqdm may exceed
# ~RECOMPUTE_RATIO * eps relative (pandas' InvCondTol idea), or when the mean drifted more than
# sqrt(DRIFT_RATIO) standard deviations from the shift K (the shifted values stop being small).
cdef double RECOMPUTE_RATIO = 1e4
cdef double DRIFT_RATIO = 1e8
# Below TINY_SSQDM (subnormal territory) or above HUGE_SSQDM (overflow territory) z is computed from the
# ring buffer with the deviations scaled by their maximum, so 1e-300-scale data still gets a true z.
cdef double TINY_SSQDM = 1e-280
cdef double HUGE_SSQDM = 1e280
cdef double DBL_MAX = 1.7976931348623157e308


# ----------------------------------------------------------------------
# Rolling variance: Welford's method with Kahan-compensated mean and ssqdm,
# https://en.wikipedia.org/wiki/Algorithms_for_calculating_variance#Welford's_online_algorithm

cdef inline void reset_var(float64_t *f) noexcept nogil:
    """Empty window: forget the shift and the sums."""
    f[F_MEAN] = 0.0
    f[F_CMEAN] = 0.0
    f[F_SSQDM] = 0.0
    f[F_CSSQ] = 0.0
    f[F_SABS] = 0.0


cdef inline void add_var(float64_t val, float64_t *f, int64_t *g) noexcept nogil:
    """Add a value to the var calc; NaN occupies a ring position elsewhere but is skipped here."""
    cdef float64_t y, m_old, d, inc, t, s, q
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
    f[F_SABS] += fabs(q)


cdef inline void remove_var(float64_t val, float64_t *f, int64_t *g) noexcept nogil:
    """Remove a value from the var calc."""
    cdef float64_t y, m_old, d, inc, t, s, q
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
    f[F_SABS] += fabs(q)


cdef void recompute_var(float64_t *f, int64_t *g, const float64_t *b, int64_t window) noexcept nogil:
    """Exact two-pass recomputation of the window (new shift K = window mean), resets the error scale."""
    cdef:
        int64_t j, n = 0
        float64_t v, k0 = f[F_PREV], s1 = 0.0, s2 = 0.0, s3 = 0.0, k, m, d
    for j in range(window):
        v = b[j]
        if v == v:
            s1 += v - k0
            n += 1
    if n == 0:
        reset_var(f)
        return
    k = k0 + s1 / n
    for j in range(window):
        v = b[j]
        if v == v:
            s2 += v - k
    m = s2 / n
    for j in range(window):
        v = b[j]
        if v == v:
            d = (v - k) - m
            s3 += d * d
    f[F_SHIFT] = k
    f[F_MEAN] = m
    f[F_CMEAN] = 0.0
    f[F_SSQDM] = s3
    f[F_CSSQ] = 0.0
    f[F_SABS] = s3


cdef inline bint unstable_var(const float64_t *f, const int64_t *g) noexcept nogil:
    """True when the running sums can no longer be trusted (also catches NaN after an overflow)."""
    cdef float64_t ssq = f[F_SSQDM], m = f[F_MEAN]
    if g[I_NOBS] < 2:
        return False
    return not (f[F_SABS] <= RECOMPUTE_RATIO * ssq) or not (m * m * g[I_NOBS] <= DRIFT_RATIO * ssq)


cdef inline float64_t calc_mean(const float64_t *f, const int64_t *g) noexcept nogil:
    if g[I_NOBS] == 0:
        return NAN
    if g[I_NSAME] >= g[I_NOBS]:
        return f[F_PREV]
    return f[F_SHIFT] + (f[F_MEAN] - f[F_CMEAN])


cdef inline float64_t calc_var(const float64_t *f, const int64_t *g) noexcept nogil:
    """Sample variance (ddof=1); NaN below 2 real values, exactly 0 for a constant window."""
    if g[I_NOBS] < 2:
        return NAN
    if g[I_NSAME] >= g[I_NOBS]:
        return 0.0
    if f[F_SSQDM] <= 0.0:
        return 0.0
    return f[F_SSQDM] / (g[I_NOBS] - 1)


cdef float64_t scaled_z(float64_t dev, const float64_t *f, const int64_t *g, const float64_t *b,
                        int64_t window) noexcept nogil:
    """z from the ring buffer with deviations divided by their maximum (no under- or overflow)."""
    cdef:
        int64_t j
        float64_t v, k = f[F_SHIFT], m = f[F_MEAN] - f[F_CMEAN], s = 0.0, acc = 0.0, d
    for j in range(window):
        v = b[j]
        if v == v:
            d = fabs((v - k) - m)
            if d > s:
                s = d
    if s == 0.0:
        if dev == 0.0:
            return 0.0
        return INFINITY if dev > 0.0 else -INFINITY
    if not (s <= DBL_MAX):
        return NAN
    for j in range(window):
        v = b[j]
        if v == v:
            d = ((v - k) - m) / s
            acc += d * d
    return (dev / s) / sqrt(acc / (g[I_NOBS] - 1))


cdef inline float64_t calc_z(float64_t val, const float64_t *f, const int64_t *g, const float64_t *b,
                             int64_t window, int64_t minp) noexcept nogil:
    """z of ``val`` against the window before it is added; NaN below ``minp`` real values.

    A constant window gives 0 for the same value and +-inf for any other (a stuck signal that moves).
    """
    cdef float64_t c, dev, ssq
    if g[I_NOBS] < minp or val != val:
        return NAN
    if g[I_NSAME] >= g[I_NOBS]:
        c = f[F_PREV]
        if val == c:
            return 0.0
        return INFINITY if val > c else -INFINITY
    dev = (val - f[F_SHIFT]) - (f[F_MEAN] - f[F_CMEAN])
    ssq = f[F_SSQDM]
    if TINY_SSQDM <= ssq <= HUGE_SSQDM:
        return dev / sqrt(ssq / (g[I_NOBS] - 1))
    return scaled_z(dev, f, g, b, window)


cdef inline float64_t calc_score(float64_t z, float64_t k) noexcept nogil:
    """u / (1 + u) with u = log1p(|z| / k): 0 at z = 0, 0.5 at |z| = z_threshold, < 1 even for inf."""
    cdef float64_t a, u
    if z != z:
        return 0.0
    a = fabs(z) / k
    if a > DBL_MAX:
        a = DBL_MAX
    u = log1p(a)
    return u / (1.0 + u)


cdef inline void step(float64_t val, float64_t *f, int64_t *g, float64_t *b, int64_t window) noexcept nogil:
    """Slide the slot's count window by one reading."""
    cdef float64_t old
    if g[I_NFILL] == window:
        old = b[g[I_POS]]
        remove_var(old, f, g)
    else:
        g[I_NFILL] += 1
    b[g[I_POS]] = val
    g[I_POS] += 1
    if g[I_POS] == window:
        g[I_POS] = 0
    add_var(val, f, g)
    if unstable_var(f, g):
        recompute_var(f, g, b, window)


# ----------------------------------------------------------------------
# Python face

cdef class RollingStats:
    """Per-slot rolling mean/variance and z-score detector over count windows.

    Parameters
    ----------
    window : int
        Readings per count window (NaN readings take a position but are not counted, like pandas
        ``rolling(window, min_periods)``).
    min_count : int
        Real values the window needs before z is defined (clamped to [2, window]).
    z_threshold : float
        ``|z|`` above which FLAG_ZSCORE is set; the score is 0.5 exactly there.
    capacity : int
        Slots allocated up front; the state grows to fit any larger slot.
    """

    cdef readonly int64_t window
    cdef readonly int64_t min_count
    cdef readonly double z_threshold
    cdef double _k
    cdef object _fstate
    cdef object _istate
    cdef object _buf

    def __init__(self, window: int = 100, min_count: int = 20, z_threshold: float = 6.0,
                 capacity: int = 1024):
        window, min_count, z_threshold, capacity = check_params(window, min_count, z_threshold, capacity)
        self.window = window
        self.min_count = min_count
        self.z_threshold = z_threshold
        self._k = z_threshold / (math.e - 1.0)
        self._fstate = new_fstate(capacity)
        self._istate = new_istate(capacity)
        self._buf = np.full((capacity, window), np.nan)

    @property
    def nslots(self) -> int:
        return self._fstate.shape[0]

    def _grow(self, need):
        n = self._fstate.shape[0]
        new = grown_size(n, need)
        self._fstate = np.concatenate([self._fstate, new_fstate(new - n)])
        self._istate = np.concatenate([self._istate, new_istate(new - n)])
        self._buf = np.concatenate([self._buf, np.full((new - n, self.window), np.nan)])

    def update(self, slots, ts_ms, values):
        """Score each reading against its slot's window, then add it; returns ``(z, score, flags)``."""
        sl, ts, vals = check_batch(slots, ts_ms, values)
        cdef Py_ssize_t n = sl.shape[0], i
        if n and sl.max() >= self._fstate.shape[0]:
            self._grow(int(sl.max()) + 1)
        z_out = np.empty(n, dtype=np.float64)
        score_out = np.empty(n, dtype=np.float64)
        flags_out = np.zeros(n, dtype=np.uint8)
        cdef:
            const int64_t[::1] s_v = sl
            const float64_t[::1] x_v = vals
            float64_t[::1] z_v = z_out
            float64_t[::1] sc_v = score_out
            uint8_t[::1] fl_v = flags_out
            float64_t[:, ::1] fs = self._fstate
            int64_t[:, ::1] gs = self._istate
            float64_t[:, ::1] bs = self._buf
            int64_t window = self.window, minp = self.min_count, s
            float64_t zthr = self.z_threshold, k = self._k, val, z
            float64_t *f
            int64_t *g
            float64_t *b
        with nogil:
            for i in range(n):
                s = s_v[i]
                val = x_v[i]
                f = &fs[s, 0]
                g = &gs[s, 0]
                b = &bs[s, 0]
                z = calc_z(val, f, g, b, window, minp)
                z_v[i] = z
                sc_v[i] = calc_score(z, k)
                if fabs(z) > zthr:
                    fl_v[i] = Z_FLAG
                step(val, f, g, b, window)
        return z_out, score_out, flags_out

    def mean(self, slot) -> float:
        """Mean of the real values in the slot's window; NaN when it has none."""
        cdef int64_t s = check_slot(slot)
        if s >= self._fstate.shape[0]:
            return math.nan
        cdef float64_t[:, ::1] fs = self._fstate
        cdef int64_t[:, ::1] gs = self._istate
        return calc_mean(&fs[s, 0], &gs[s, 0])

    def var(self, slot) -> float:
        """Sample variance (ddof=1) of the slot's window; NaN below 2 real values."""
        cdef int64_t s = check_slot(slot)
        if s >= self._fstate.shape[0]:
            return math.nan
        cdef float64_t[:, ::1] fs = self._fstate
        cdef int64_t[:, ::1] gs = self._istate
        return calc_var(&fs[s, 0], &gs[s, 0])

    def count(self, slot) -> int:
        """Real (non-NaN) values in the slot's window."""
        s = check_slot(slot)
        if s >= self._fstate.shape[0]:
            return 0
        return int(self._istate[s, I_NOBS])

    def to_bytes(self) -> bytes:
        """Snapshot of the whole state (versioned; loads in either twin)."""
        return _snapshot.dump("RollingStats", params_of(self), {"fstate": FLOAT_FIELDS, "istate": INT_FIELDS},
                              {"fstate": self._fstate, "istate": self._istate, "buf": self._buf})

    @classmethod
    def from_bytes(cls, data) -> RollingStats:
        """Restore a snapshot made by ``to_bytes`` of either twin."""
        params, fields, arrays = _snapshot.load(data, "RollingStats")
        cdef RollingStats self = cls(capacity=1, **params)
        self._fstate, self._istate, self._buf = restore_state(fields, arrays, self.window)
        return self

    def __reduce__(self):
        return (type(self).from_bytes, (self.to_bytes(),))

    def __repr__(self) -> str:
        return (f"RollingStats(window={self.window}, min_count={self.min_count}, "
                f"z_threshold={self.z_threshold!r}, nslots={self.nslots})")


