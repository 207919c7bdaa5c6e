# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
# distutils: extra_compile_args = -ffp-contract=off
"""Rolling statistics and anomaly detectors over many keys at once: the compiled twin of ``rolling_py``.

Every reading of a batch is ``(slot, ts_ms, value)``. Per slot the kernel keeps a count window of the last
``window`` readings (a ring buffer plus the same values kept sorted), its Welford mean/variance, a time
window over the same ring with its own Welford state, an EWMA and EW variance, a long-run reference for
the distribution-shift detector, and the little history the other detectors need. The loop runs without
the GIL and touches only C scalars and memoryviews; all Python work (validation, growing the state,
allocating the outputs) happens before it. ``rolling_py`` performs the same floating-point operations in
the same order, so both produce bit-identical results and snapshots (``tests/unit/test_rolling*.py`` check
this). ``-ffp-contract=off`` keeps the C compiler from fusing multiply-adds, which would break that parity.

Min and max come from the sorted window rather than from two monotonic deques: the sorted window is
needed anyway for the median and MAD of the robust z-score, and it gives min/max at no extra memory.

The time window holds the ring's readings newer than the slot's newest timestamp minus ``time_window_ms``
(so it is capped at ``window`` readings). Timestamps ride in a second ring; a reading that is late or NaN
gets the NEVER timestamp there, a hole that is skipped, so the counted timestamps only grow along the ring
and expiry pops from the oldest end (pandas' variable windows assume sorted timestamps in the same way).
"""

import math

import numpy as np

from libc.math cimport INFINITY, NAN, fabs, log, log1p, sqrt
from libc.stdint cimport INT64_MIN, int64_t, uint8_t
from libc.string cimport memmove

cdef extern from *:
    """
    #define IOTS_PREFETCH(p) __builtin_prefetch((const void *)(p))
    """
    void prefetch "IOTS_PREFETCH"(const void *p) noexcept nogil

from . import _snapshot
from ._common import (
    CLIP_SD,
    FLAG_LATE,
    FLAG_RATE,
    FLAG_ROBUST,
    FLAG_SHIFT,
    FLAG_STUCK,
    FLAG_THRESHOLD,
    FLAG_ZSCORE,
    FLAGGED_BIN,
    FLOAT_FIELDS,
    HIST_FLOOR,
    HIST_GROWTH,
    HIST_RESCALE,
    INT_FIELDS,
    LONG_ALPHA,
    LONG_N,
    NEVER,
    NO_BIN,
    PARAM_FIELDS,
    PRIOR,
    SHIFT_BIN_WIDTH,
    SHIFT_BINS,
    ANOMALY_FLAGS,
    check_alpha,
    check_batch,
    check_detectors,
    check_params,
    check_slot,
    grown_size,
    log_table,
    lsum,
    new_bins,
    new_fstate,
    new_hist,
    new_istate,
    new_pstate,
    new_sorted,
    new_tsring,
    params_of,
    state_arrays,
    restore_state,
    silent_slots,
    xlogx_table,
)

ctypedef double float64_t

# Column layout of the per-slot state (same names and order as _common.FLOAT_FIELDS / INT_FIELDS /
# PARAM_FIELDS; checked at import).
cdef enum:
    F_SHIFT = 0     # K: values are stored relative to it, so 1e12 + tiny noise stays exact
    F_MEAN = 1      # mean of (x - K) over the window
    F_CMEAN = 2     # Kahan compensation of F_MEAN (true mean = F_MEAN - F_CMEAN)
    F_SSQDM = 3     # sum of squared differences from the mean
    F_CSSQ = 4      # Kahan compensation of F_SSQDM
    F_SABS = 5      # sum of |updates| to F_SSQDM since the last recompute: the scale of its rounding error
    F_PREV = 6      # last real value added
    F_RPREV = 7     # last real value that was not late (rate of change is measured from it)
    F_EWM_MEAN = 8
    F_EWM_VAR = 9
    F_TSHIFT = 10   # F_TSHIFT..F_TPREV: the time window's Welford block, laid out like F_SHIFT..F_PREV
    F_LMEAN = 17    # long-run mean and variance (EW, learned from unflagged readings)
    F_LVAR = 18
    F_HSUM = 19     # total weight of the long-run histogram
    F_HW = 20       # weight the next reading adds to it (grows instead of decaying the others)
    NF = 21
    I_POS = 0       # next ring position to write
    I_NFILL = 1     # ring positions in use (<= window)
    I_NOBS = 2      # real (non-NaN) values in the window
    I_NSAME = 3     # length of the run of identical real values ending at F_PREV (GH#42064 idea)
    I_LAST_TS = 4   # newest timestamp seen (NEVER before the first reading)
    I_PREV_TS = 5   # timestamp of F_RPREV
    I_RUN_TS = 6    # timestamp of the first reading of the current run of identical values
    I_EWM_N = 7     # real values seen by the EWMA
    I_TNOBS = 8     # I_TNOBS, I_TNSAME: the time window's counters, laid out like I_NOBS, I_NSAME
    I_TN = 10       # newest ring positions covered by the time window (holes included)
    I_LN = 11       # readings the long-run mean and variance have learned
    I_HN = 12       # ring entries with a histogram bin
    I_SRUN = 13     # consecutive readings flagged FLAG_SHIFT
    NI = 14
    P_ZTHR = 0
    P_RTHR = 1
    P_LO = 2
    P_HI = 3
    P_MAX_RATE = 4
    P_STUCK_N = 5
    P_STUCK_MS = 6
    P_SILENCE_MS = 7
    P_STHR = 8
    P_TWIN = 9
    NP = 10
    # offsets inside a Welford block and its counters
    V_SHIFT = 0
    V_MEAN = 1
    V_CMEAN = 2
    V_SSQDM = 3
    V_CSSQ = 4
    V_SABS = 5
    V_PREV = 6
    C_NOBS = 0
    C_NSAME = 1

cdef enum:
    # flag bits as C constants for the nogil loop (checked against _common at import)
    Z_FLAG = 1
    THRESHOLD_FLAG = 2
    RATE_FLAG = 4
    STUCK_FLAG = 8
    ROBUST_FLAG = 16
    SHIFT_FLAG = 32
    LATE_FLAG = 64
    ANOMALY = 63
    # histogram of the shift detector: NB bins, per slot the row [weights | their logs | recent counts]
    NB = 16
    H_W = 0
    H_LOG = 16
    H_CNT = 32
    NO_BIN_C = 255
    FLAGGED_C = 128

cdef int64_t C_NEVER = INT64_MIN

if (FLOAT_FIELDS != ["shift", "mean", "cmean", "ssqdm", "cssq", "sabs", "prev", "rprev", "ewm_mean",
                     "ewm_var", "tshift", "tmean", "tcmean", "tssqdm", "tcssq", "tsabs", "tprev", "lmean",
                     "lvar", "hsum", "hw"] or len(FLOAT_FIELDS) != NF
        or INT_FIELDS != ["pos", "nfill", "nobs", "nsame", "last_ts", "prev_ts", "run_ts", "ewm_n", "tnobs",
                          "tnsame", "tn", "ln", "hn", "srun"]
        or len(INT_FIELDS) != NI
        or PARAM_FIELDS != ["z_threshold", "robust_threshold", "lo", "hi", "max_rate", "stuck_count",
                            "stuck_ms", "silence_ms", "shift_threshold", "time_window_ms"]
        or len(PARAM_FIELDS) != NP):
    raise ImportError("iotstream.ext._rolling was compiled against a different state layout than _common")
if ((FLAG_ZSCORE, FLAG_THRESHOLD, FLAG_RATE, FLAG_STUCK, FLAG_ROBUST, FLAG_SHIFT, FLAG_LATE, ANOMALY_FLAGS)
        != (Z_FLAG, THRESHOLD_FLAG, RATE_FLAG, STUCK_FLAG, ROBUST_FLAG, SHIFT_FLAG, LATE_FLAG, ANOMALY)
        or NEVER != C_NEVER):
    raise ImportError("iotstream.ext._rolling was compiled with different flag bits than _common")
if (SHIFT_BINS, NO_BIN, FLAGGED_BIN) != (NB, NO_BIN_C, FLAGGED_C):
    raise ImportError("iotstream.ext._rolling was compiled with a different histogram than _common")

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
# Consistency constants of the robust scale for normal data: sigma = 1.4826 MAD = 1.2533 mean|x - median|.
cdef double MAD_SCALE = 1.4826
cdef double MEANAD_SCALE = 1.2533
# prefetch distances of update's loop, in readings
cdef enum:
    PF_FAR = 16
    PF_NEAR = 8
# Shift detector constants, taken from _common so both twins use the very same doubles.
cdef double LONG_ALPHA_C = LONG_ALPHA
cdef int64_t LONG_N_C = LONG_N
cdef double CLIP_SD_C = CLIP_SD
cdef double HIST_GROWTH_C = HIST_GROWTH
cdef double HIST_RESCALE_C = HIST_RESCALE
cdef double HIST_FLOOR_C = HIST_FLOOR
cdef double BIN_WIDTH_C = SHIFT_BIN_WIDTH
cdef double HALF_BINS = <double>(NB // 2)
cdef double PRIOR_C[NB]
cdef double LOG_PRIOR_C[NB]
cdef double PRIOR_SUM = lsum(PRIOR)
for _i in range(NB):
    PRIOR_C[_i] = PRIOR[_i]
    LOG_PRIOR_C[_i] = math.log(PRIOR[_i])


# ----------------------------------------------------------------------
# Rolling variance: Welford's method with Kahan-compensated mean and ssqdm,
# https://en.wikipedia.org/wiki/Algorithms_for_calculating_variance#Welford's_online_algorithm
# Each helper works on one block: v[V_*] (floats) and c[C_*] (counters), the count window's at F_SHIFT /
# I_NOBS or the time window's at F_TSHIFT / I_TNOBS.

cdef inline void reset_var(float64_t *v) noexcept nogil:
    """Empty window: forget the shift and the sums."""
    v[V_MEAN] = 0.0
    v[V_CMEAN] = 0.0
    v[V_SSQDM] = 0.0
    v[V_CSSQ] = 0.0
    v[V_SABS] = 0.0


cdef inline void add_var(float64_t val, float64_t *v, int64_t *c) noexcept nogil:
    """Add a value to the var calc; NaN occupies a ring position elsewhere but is skipped here."""
    cdef float64_t y, m_old, d, inc, t, s, q
    if val != val:
        return
    if c[C_NOBS] == 0:
        reset_var(v)
        v[V_SHIFT] = val
    c[C_NOBS] += 1
    if val == v[V_PREV]:
        c[C_NSAME] += 1
    else:
        c[C_NSAME] = 1
    v[V_PREV] = val
    y = val - v[V_SHIFT]
    m_old = v[V_MEAN] - v[V_CMEAN]
    d = y - m_old
    inc = d / c[C_NOBS]
    t = inc - v[V_CMEAN]
    s = v[V_MEAN] + t
    v[V_CMEAN] = (s - v[V_MEAN]) - t
    v[V_MEAN] = s
    q = d * (y - (v[V_MEAN] - v[V_CMEAN]))
    t = q - v[V_CSSQ]
    s = v[V_SSQDM] + t
    v[V_CSSQ] = (s - v[V_SSQDM]) - t
    v[V_SSQDM] = s
    v[V_SABS] += fabs(q)


cdef inline void remove_var(float64_t val, float64_t *v, int64_t *c) noexcept nogil:
    """Remove a value from the var calc."""
    cdef float64_t y, m_old, d, inc, t, s, q
    if val != val:
        return
    c[C_NOBS] -= 1
    if c[C_NOBS] == 0:
        reset_var(v)
        return
    y = val - v[V_SHIFT]
    m_old = v[V_MEAN] - v[V_CMEAN]
    d = y - m_old
    inc = -d / c[C_NOBS]
    t = inc - v[V_CMEAN]
    s = v[V_MEAN] + t
    v[V_CMEAN] = (s - v[V_MEAN]) - t
    v[V_MEAN] = s
    q = -d * (y - (v[V_MEAN] - v[V_CMEAN]))
    t = q - v[V_CSSQ]
    s = v[V_SSQDM] + t
    v[V_CSSQ] = (s - v[V_SSQDM]) - t
    v[V_SSQDM] = s
    v[V_SABS] += fabs(q)


cdef void recompute_var(float64_t *v, int64_t *c, const float64_t *b, const int64_t *tr, int64_t start,
                        int64_t count, int64_t window) noexcept nogil:
    """Exact two-pass recomputation (new shift K = window mean), resets the error scale.

    With ``tr`` NULL it reads the whole ring in ring order (count window); otherwise the ``count``
    positions from ``start`` on, oldest first, skipping holes (time window)."""
    cdef:
        int64_t j, i, n = 0, m_len = window if tr == NULL else count
        float64_t x, k0 = v[V_PREV], s1 = 0.0, s2 = 0.0, s3 = 0.0, k, m, d
    j = 0 if tr == NULL else start
    for i in range(m_len):
        x = b[j]
        if (tr == NULL or tr[j] != C_NEVER) and x == x:
            s1 += x - k0
            n += 1
        j += 1
        if j == window:
            j = 0
    if n == 0:
        reset_var(v)
        return
    k = k0 + s1 / n
    j = 0 if tr == NULL else start
    for i in range(m_len):
        x = b[j]
        if (tr == NULL or tr[j] != C_NEVER) and x == x:
            s2 += x - k
        j += 1
        if j == window:
            j = 0
    m = s2 / n
    j = 0 if tr == NULL else start
    for i in range(m_len):
        x = b[j]
        if (tr == NULL or tr[j] != C_NEVER) and x == x:
            d = (x - k) - m
            s3 += d * d
        j += 1
        if j == window:
            j = 0
    v[V_SHIFT] = k
    v[V_MEAN] = m
    v[V_CMEAN] = 0.0
    v[V_SSQDM] = s3
    v[V_CSSQ] = 0.0
    v[V_SABS] = s3


cdef inline bint unstable_var(const float64_t *v, const int64_t *c) noexcept nogil:
    """True when the running sums can no longer be trusted (also catches NaN after an overflow)."""
    cdef float64_t ssq = v[V_SSQDM], m = v[V_MEAN]
    if c[C_NOBS] < 2:
        return False
    return not (v[V_SABS] <= RECOMPUTE_RATIO * ssq) or not (m * m * c[C_NOBS] <= DRIFT_RATIO * ssq)


cdef inline float64_t calc_mean(const float64_t *v, const int64_t *c) noexcept nogil:
    if c[C_NOBS] == 0:
        return NAN
    if c[C_NSAME] >= c[C_NOBS]:
        return v[V_PREV]
    return v[V_SHIFT] + (v[V_MEAN] - v[V_CMEAN])


cdef inline float64_t calc_var(const float64_t *v, const int64_t *c) noexcept nogil:
    """Sample variance (ddof=1); NaN below 2 real values, exactly 0 for a constant window."""
    if c[C_NOBS] < 2:
        return NAN
    if c[C_NSAME] >= c[C_NOBS]:
        return 0.0
    if v[V_SSQDM] <= 0.0:
        return 0.0
    return v[V_SSQDM] / (c[C_NOBS] - 1)


# ----------------------------------------------------------------------
# z-score

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


# ----------------------------------------------------------------------
# Sorted window: min, max, median, MAD

cdef inline int64_t bisect_left(const float64_t *s, int64_t n, float64_t x) noexcept nogil:
    """First index whose value is >= x (``bisect.bisect_left``), branch-free: the loop runs
    ceil(log2 n) times whatever the data, and the compiler turns the step into a conditional move."""
    cdef const float64_t *base = s
    cdef int64_t half
    if n == 0:
        return 0
    while n > 1:
        half = n >> 1
        base = base + half if base[half] < x else base
        n -= half
    return (base - s) + (base[0] < x)


cdef inline int64_t bisect_right(const float64_t *s, int64_t n, float64_t x) noexcept nogil:
    """First index whose value is > x (``bisect.bisect_right``), branch-free like ``bisect_left``."""
    cdef const float64_t *base = s
    cdef int64_t half
    if n == 0:
        return 0
    while n > 1:
        half = n >> 1
        base = base + half if base[half] <= x else base
        n -= half
    return (base - s) + (base[0] <= x)


cdef inline void remove_sorted(float64_t val, float64_t *s, int64_t n) noexcept nogil:
    """Remove one copy of ``val`` from the first ``n`` entries (the slot held it)."""
    cdef int64_t i = bisect_left(s, n, val)
    memmove(&s[i], &s[i + 1], (n - 1 - i) * sizeof(float64_t))
    s[n - 1] = NAN


cdef inline void insert_sorted(float64_t val, float64_t *s, int64_t n) noexcept nogil:
    cdef int64_t i = bisect_right(s, n, val)
    memmove(&s[i + 1], &s[i], (n - i) * sizeof(float64_t))
    s[i] = val


cdef inline void replace_sorted(float64_t old, float64_t val, float64_t *s, int64_t n) noexcept nogil:
    """``remove_sorted(old)`` then ``insert_sorted(val)`` in one pass over the first ``n`` entries.

    The result is the same array, but only the entries between the two positions move (a window slid
    by one reading usually moves a few, not half of them twice). With old <= val, s[i] = old is counted
    by bisect_right, so val lands at j >= i once s[i] is gone and s[i+1..j] move left; otherwise val lands
    at j <= i and s[j..i-1] move right. Written without a branch on which of the two it is."""
    cdef int64_t i = bisect_left(s, n, old), up = old <= val, j, lo, ln
    j = bisect_right(s, n, val) - up
    lo = i if up else j
    ln = j - i if up else i - j
    memmove(&s[lo + 1 - up], &s[lo + up], ln * sizeof(float64_t))
    s[j] = val


cdef inline float64_t calc_median(const float64_t *s, int64_t n) noexcept nogil:
    if n == 0:
        return NAN
    if n % 2:
        return s[n // 2]
    return 0.5 * s[n // 2 - 1] + 0.5 * s[n // 2]


cdef inline float64_t kth_dev(const float64_t *s, int64_t n, float64_t med, int64_t k,
                             float64_t *next_dev) noexcept nogil:
    """k-th smallest |s_i - med| (0-based): the deviations left of the median, read leftwards, and right
    of it, read rightwards, are two ascending lists; binary-search how many come from the left one.

    With ``next_dev`` also stores the (k+1)-th smallest: the smaller head of the two remaining lists."""
    cdef:
        int64_t p = n // 2, nb = n - n // 2, lo, hi, a, bb, cnt, half, t
        float64_t res = 0.0, nxt
    lo = k + 1 - nb if k + 1 > nb else 0
    hi = k + 1 if k + 1 < p else p
    # lower bound of the first a in [lo, hi) where B[k - a] > A[a] stops holding (it holds, then not);
    # A[a] = med - s[p - 1 - a], B[bb - 1] = s[p + bb - 1] - med
    cnt = hi - lo
    while cnt > 0:
        half = cnt >> 1
        a = lo + half
        bb = k + 1 - a  # >= 1 here, since a < hi <= k + 1
        t = s[p + bb - 1] - med > med - s[p - 1 - a]  # 0 or 1: arithmetic, so no branch to mispredict
        lo += t * (half + 1)
        cnt = half + t * (cnt - 2 * half - 1)
    bb = k + 1 - lo
    if lo > 0:
        res = med - s[p - lo]
    if bb > 0 and s[p + bb - 1] - med > res:
        res = s[p + bb - 1] - med
    if next_dev != NULL:
        # the split (lo from A, bb from B) is valid, so everything left in either list is >= res
        nxt = INFINITY
        if lo < p:
            nxt = med - s[p - 1 - lo]
        if bb < nb and s[p + bb] - med < nxt:
            nxt = s[p + bb] - med
        next_dev[0] = nxt
    return res


cdef float64_t calc_mad(const float64_t *s, int64_t n, float64_t med) noexcept nogil:
    """Median absolute deviation from the median (unscaled)."""
    cdef int64_t k0 = (n - 1) // 2, k1 = n // 2
    cdef float64_t d0, d1
    if n == 0:
        return NAN
    if k0 == k1:
        return kth_dev(s, n, med, k0, NULL)
    d0 = kth_dev(s, n, med, k0, &d1)
    return 0.5 * d0 + 0.5 * d1


cdef float64_t calc_rz(float64_t val, const float64_t *s, int64_t n, int64_t minp) noexcept nogil:
    """Robust z of ``val`` against the window before it: (val - median) / (1.4826 MAD).

    When more than half the window is one value (MAD = 0) the scale falls back to 1.2533 times the mean
    absolute deviation from the median; a constant window gives 0 or +-inf like the plain z.
    """
    cdef float64_t med, mad, acc = 0.0, dev
    cdef int64_t j
    if n < minp or val != val:
        return NAN
    med = calc_median(s, n)
    dev = val - med
    mad = calc_mad(s, n, med)
    if mad > 0.0:
        return dev / (MAD_SCALE * mad)
    for j in range(n):
        acc += fabs(s[j] - med)
    mad = MEANAD_SCALE * (acc / n)
    if mad > 0.0:
        return dev / mad
    if dev == 0.0:
        return 0.0
    return INFINITY if dev > 0.0 else -INFINITY


# ----------------------------------------------------------------------
# EWMA and EW variance (West 1979 incremental form)

cdef inline void add_ewm(float64_t val, float64_t *f, int64_t *g, float64_t alpha, float64_t oma) noexcept nogil:
    cdef float64_t diff, incr
    if val != val:
        return
    if g[I_EWM_N] == 0:
        f[F_EWM_MEAN] = val
        f[F_EWM_VAR] = 0.0
    else:
        diff = val - f[F_EWM_MEAN]
        incr = alpha * diff
        f[F_EWM_MEAN] = f[F_EWM_MEAN] + incr
        f[F_EWM_VAR] = oma * (f[F_EWM_VAR] + diff * incr)
    g[I_EWM_N] += 1


# ----------------------------------------------------------------------
# Combined score

cdef inline float64_t calc_score(float64_t e, float64_t em1) noexcept nogil:
    """u / (1 + u) with u = log1p((e - 1) e): 0 at e = 0, 0.5 at e = 1 (a detector at its threshold),
    strictly increasing, and below 1 even for e = inf (e is clamped to DBL_MAX), so it never saturates."""
    cdef float64_t a, u
    if not (e > 0.0):
        return 0.0
    a = em1 * e
    if a > DBL_MAX:
        a = DBL_MAX
    u = log1p(a)
    return u / (1.0 + u)


# ----------------------------------------------------------------------
# Distribution shift
#
# The z-scores compare a reading with the last `window` readings, so they miss changes the window follows:
# a level shift after the first readings, a slow drift, a burst of noise once it fills the window. This
# detector compares the recent window's distribution with the slot's long run. Each reading gets a bin
# of u = (x - long-run mean) / long-run sd (NB bins of width SHIFT_BIN_WIDTH, outer bins open); the ring
# keeps the bins, so the window's histogram is exact, and a bin leaving the window is added to the
# long-run histogram, an exponentially decayed one. The score is the relative entropy (Kullback-Leibler
# divergence, nats) of the window's histogram against the long-run one. The long-run mean, variance and
# histogram learn only from readings no detector flagged, so an anomaly does not become its own
# reference; a shift flagged for 2 windows in a row is taken as the new normal and the reference is
# rebuilt from the window (CUSUM-style restart). With shift_threshold = inf the slot keeps no reference
# at all (it costs nothing) and warms up afresh when the detector is switched on.

cdef inline int64_t calc_bin(float64_t val, const float64_t *f) noexcept nogil:
    """Histogram bin of u = (val - long-run mean) / long-run sd: floor(u / width) + NB/2, clamped."""
    cdef float64_t d = val - f[F_LMEAN], sd2 = f[F_LVAR], t
    if sd2 > 0.0:
        t = (d / sqrt(sd2)) / BIN_WIDTH_C + HALF_BINS
    elif d == 0.0:
        t = HALF_BINS
    elif d > 0.0:
        t = INFINITY
    else:
        t = -INFINITY
    if not (t >= 0.0):
        return 0
    if t >= NB:
        return NB - 1
    return <int64_t>t


cdef inline void learn_long(float64_t val, float64_t *f, int64_t *g, int64_t window) noexcept nogil:
    """Add an unflagged reading to the long-run mean and variance (EW, deviations clipped once warm)."""
    cdef int64_t n = g[I_LN]
    cdef float64_t a, d, c
    if not (fabs(val) <= DBL_MAX):
        return
    if n == 0:
        f[F_LMEAN] = val
        f[F_LVAR] = 0.0
    else:
        # max(1 / (n + 1), LONG_ALPHA), without the division once it no longer matters
        a = LONG_ALPHA_C if n >= LONG_N_C else 1.0 / (n + 1)
        d = val - f[F_LMEAN]
        if n >= window and f[F_LVAR] > 0.0:
            c = CLIP_SD_C * sqrt(f[F_LVAR])
            if d > c:
                d = c
            elif d < -c:
                d = -c
        f[F_LMEAN] = f[F_LMEAN] + a * d
        f[F_LVAR] = (1.0 - a) * (f[F_LVAR] + a * d * d)
    g[I_LN] = n + 1


cdef void learn_hist(int64_t k, float64_t *f, float64_t *h) noexcept nogil:
    """Add bin ``k`` to the long-run histogram; older weights decay lazily (each new one is larger)."""
    cdef float64_t w = f[F_HW], tot, floor
    cdef int64_t i
    h[H_W + k] += w
    f[F_HSUM] += w
    h[H_LOG + k] = log(h[H_W + k])
    w = w * HIST_GROWTH_C
    if w >= HIST_RESCALE_C:
        tot = 0.0
        for i in range(NB):
            h[H_W + i] = h[H_W + i] / w
            tot += h[H_W + i]
        floor = HIST_FLOOR_C * tot
        tot = 0.0
        for i in range(NB):
            if h[H_W + i] < floor:
                h[H_W + i] = floor
            tot += h[H_W + i]
            h[H_LOG + i] = log(h[H_W + i])
        f[F_HSUM] = tot
        w = 1.0
    f[F_HW] = w


cdef inline float64_t calc_kl(const float64_t *f, const float64_t *h, int64_t n, const float64_t *xlogx,
                              const float64_t *logn) noexcept nogil:
    """Relative entropy (nats) of the ring's n binned readings against the long-run histogram:
    sum c/n log((c/n) / (H/S)) = (sum c log c - sum c log H) / n - log n + log S."""
    cdef float64_t q = 0.0, t = 0.0, c
    cdef int64_t i
    for i in range(NB):
        # no branch on empty bins: they add xlogx[0] = 0.0 and 0 * log H = +-0.0, which change nothing
        c = h[H_CNT + i]
        q += xlogx[<int64_t>c]
        t += c * h[H_LOG + i]
    return (q - t) / n - logn[n] + log(f[F_HSUM])


cdef void rebuild(float64_t *f, int64_t *g, const float64_t *b, uint8_t *bn, float64_t *h,
                  int64_t window) noexcept nogil:
    """A shift flagged for 2 windows in a row is the new normal: the long-run reference restarts from
    the window (mean, variance, bins) and the histogram from the prior."""
    cdef int64_t j, i, k, n = 0
    cdef float64_t v, k0 = f[F_PREV], s1 = 0.0, s2 = 0.0, m, d
    for j in range(window):
        v = b[j]
        if v == v:
            s1 += v - k0
            n += 1
    g[I_SRUN] = 0
    if n < 2:
        return
    m = k0 + s1 / n
    for j in range(window):
        v = b[j]
        if v == v:
            d = v - m
            s2 += d * d
    f[F_LMEAN] = m
    f[F_LVAR] = s2 / (n - 1)
    g[I_LN] = n
    for i in range(NB):
        h[H_W + i] = PRIOR_C[i]
        h[H_LOG + i] = LOG_PRIOR_C[i]
        h[H_CNT + i] = 0.0
    for j in range(window):
        v = b[j]
        if v == v:
            k = calc_bin(v, f)
            bn[j] = <uint8_t>k
            h[H_CNT + k] += 1.0
        else:
            bn[j] = NO_BIN_C
    g[I_HN] = n
    f[F_HSUM] = PRIOR_SUM
    f[F_HW] = 1.0


# ----------------------------------------------------------------------
# One reading

cdef inline void step(float64_t val, int64_t ts, int64_t k, float64_t *f, int64_t *g, float64_t *b,
                      float64_t *srt, int64_t *tr, uint8_t *bn, float64_t *h, float64_t twin, int64_t window,
                      float64_t alpha, float64_t oma) noexcept nogil:
    """Slide the slot's count window (and time window) by one reading and update the running state."""
    cdef float64_t old
    cdef int64_t pos = g[I_POS], j, horizon
    cdef uint8_t ob
    cdef bint inserted = False
    if g[I_NFILL] == window:
        old = b[pos]
        if g[I_TN] == window:
            if tr[pos] != C_NEVER:
                remove_var(old, &f[F_TSHIFT], &g[I_TNOBS])
            g[I_TN] -= 1
        if old == old:
            if val == val:
                replace_sorted(old, val, srt, g[I_NOBS])
                inserted = True
            else:
                remove_sorted(old, srt, g[I_NOBS])
        remove_var(old, &f[F_SHIFT], &g[I_NOBS])
        ob = bn[pos]
        if ob != NO_BIN_C:
            h[H_CNT + (ob & (FLAGGED_C - 1))] -= 1.0
            g[I_HN] -= 1
            if not (ob & FLAGGED_C):
                learn_hist(ob, f, h)
    else:
        g[I_NFILL] += 1
    b[pos] = val
    bn[pos] = <uint8_t>k
    if k != NO_BIN_C:
        h[H_CNT + k] += 1.0
        g[I_HN] += 1
    g[I_POS] += 1
    if g[I_POS] == window:
        g[I_POS] = 0
    if val == val and not inserted:
        insert_sorted(val, srt, g[I_NOBS])
    add_var(val, &f[F_SHIFT], &g[I_NOBS])
    if unstable_var(&f[F_SHIFT], &g[I_NOBS]):
        recompute_var(&f[F_SHIFT], &g[I_NOBS], b, NULL, 0, window, window)
    add_ewm(val, f, g, alpha, oma)
    if val == val and g[I_NSAME] == 1:
        # a new run starts on the slot's clock: a late reading does not wind the stuck timer back
        g[I_RUN_TS] = ts if ts > g[I_LAST_TS] else g[I_LAST_TS]
    if twin > 0.0:
        # the time window: in-order real readings only (a late one is a hole), expired from the oldest end
        if val == val and ts >= g[I_LAST_TS]:
            tr[pos] = ts
            add_var(val, &f[F_TSHIFT], &g[I_TNOBS])
        else:
            tr[pos] = C_NEVER
        g[I_TN] += 1
        horizon = <int64_t>((ts if ts > g[I_LAST_TS] else g[I_LAST_TS]) - twin)
        while g[I_TN] > 0:
            j = g[I_POS] - g[I_TN]
            if j < 0:
                j += window
            if tr[j] != C_NEVER and tr[j] > horizon:
                break
            if tr[j] != C_NEVER:
                remove_var(b[j], &f[F_TSHIFT], &g[I_TNOBS])
            g[I_TN] -= 1
        if unstable_var(&f[F_TSHIFT], &g[I_TNOBS]):
            j = g[I_POS] - g[I_TN]
            if j < 0:
                j += window
            recompute_var(&f[F_TSHIFT], &g[I_TNOBS], b, tr, j, g[I_TN], window)
    elif g[I_TN] > 0:
        reset_var(&f[F_TSHIFT])
        g[I_TNOBS] = 0
        g[I_TN] = 0
    if ts > g[I_LAST_TS]:
        g[I_LAST_TS] = ts


cdef inline uint8_t detect(float64_t val, int64_t ts, float64_t *f, int64_t *g, float64_t *b,
                           float64_t *srt, const float64_t *p, int64_t *tr, uint8_t *bn, float64_t *h,
                           int64_t window, int64_t minp, float64_t alpha, float64_t oma, float64_t em1,
                           const float64_t *xlogx, const float64_t *logn, float64_t *z_out,
                           float64_t *score_out) noexcept nogil:
    """Score one reading against its slot's state, then add it; returns the flags."""
    cdef:
        uint8_t flags = 0
        float64_t z, rz = NAN, e = 0.0, x, rate, ex, span, bound, kl
        int64_t dt, k = NO_BIN_C, pos
    z = calc_z(val, f, g, b, window, minp)
    x = fabs(z) / p[P_ZTHR]
    if x > e:
        e = x
    if fabs(z) > p[P_ZTHR]:
        flags |= Z_FLAG
    if p[P_RTHR] < INFINITY:
        rz = calc_rz(val, srt, g[I_NOBS], minp)
        x = fabs(rz) / p[P_RTHR]
        if x > e:
            e = x
        if fabs(rz) > p[P_RTHR]:
            flags |= ROBUST_FLAG
    if g[I_LAST_TS] != C_NEVER and ts < g[I_LAST_TS]:
        # late: scored and kept in the count window, but no rate is measured from or to it
        flags |= LATE_FLAG
    elif val == val:
        if g[I_PREV_TS] != C_NEVER and ts > g[I_PREV_TS] and p[P_MAX_RATE] < INFINITY:
            dt = ts - g[I_PREV_TS]
            rate = (val - f[F_RPREV]) * 1000.0 / dt
            x = fabs(rate) / p[P_MAX_RATE]
            if x > e:
                e = x
            if fabs(rate) > p[P_MAX_RATE]:
                flags |= RATE_FLAG
        f[F_RPREV] = val
        g[I_PREV_TS] = ts
    if val == val and (val < p[P_LO] or val > p[P_HI]):
        if val > p[P_HI]:
            ex = val - p[P_HI]
            bound = p[P_HI]
        else:
            ex = p[P_LO] - val
            bound = p[P_LO]
        span = p[P_HI] - p[P_LO]
        if not (span < INFINITY):
            span = fabs(bound)
        if span == 0.0:
            span = 1.0
        x = 1.0 + ex / span
        if x > e:
            e = x
        flags |= THRESHOLD_FLAG
    if val == val and p[P_STHR] < INFINITY and g[I_LN] >= window:
        k = calc_bin(val, f)
    pos = g[I_POS]
    step(val, ts, k, f, g, b, srt, tr, bn, h, p[P_TWIN], window, alpha, oma)
    if val == val:
        x = 0.0
        if p[P_STUCK_N] > 0.0 and g[I_NSAME] >= p[P_STUCK_N]:
            x = g[I_NSAME] / p[P_STUCK_N]
        if (p[P_STUCK_MS] > 0.0 and g[I_NSAME] >= 2 and g[I_RUN_TS] != C_NEVER
                and ts - g[I_RUN_TS] >= p[P_STUCK_MS]):
            if (ts - g[I_RUN_TS]) / p[P_STUCK_MS] > x:
                x = (ts - g[I_RUN_TS]) / p[P_STUCK_MS]
        if x > 0.0:
            flags |= STUCK_FLAG
            if x > e:
                e = x
        if k != NO_BIN_C and z == z and p[P_STHR] < INFINITY and 2 * g[I_HN] >= window:
            kl = calc_kl(f, h, g[I_HN], xlogx, logn)
            x = kl / p[P_STHR]
            if x > e:
                e = x
            if kl > p[P_STHR]:
                flags |= SHIFT_FLAG
        # the long-run reference learns only from readings no detector flagged
        if flags & ANOMALY:
            if k != NO_BIN_C:
                bn[pos] = <uint8_t>(k | FLAGGED_C)
            if flags & SHIFT_FLAG:
                g[I_SRUN] += 1
                if g[I_SRUN] >= 2 * window:
                    rebuild(f, g, b, bn, h, window)
            else:
                g[I_SRUN] = 0
        else:
            g[I_SRUN] = 0
            if p[P_STHR] < INFINITY:
                learn_long(val, f, g, window)
    z_out[0] = z
    score_out[0] = calc_score(e, em1)
    return flags


# ----------------------------------------------------------------------
# Python face

cdef class RollingStats:
    """Per-slot rolling statistics and anomaly detectors over count windows.

    Parameters
    ----------
    window : int
        Readings per count window (NaN readings take a position but are not counted, like pandas
        ``rolling(window, min_periods)``).
    min_count : int
        Real values the window needs before z and robust z are defined (clamped to [2, window]).
    z_threshold : float
        Default ``|z|`` above which FLAG_ZSCORE is set.
    capacity : int
        Slots allocated up front; the state grows (doubling) to fit any larger slot.
    ewm_alpha : float
        Weight of the newest reading in the EWMA and EW variance.
    robust_threshold, lo, hi, max_rate, stuck_count, stuck_ms, silence_ms, shift_threshold, time_window_ms
        Default detector settings of every slot (see ``_common.check_detectors``); ``configure`` changes
        them per slot, e.g. from the per-metric rules file.

    ``update`` returns ``(z, score, flags)`` per reading. z is the plain z-score against the window before
    the reading: NaN below ``min_count`` real values or for a NaN reading; for a constant window 0 for the
    same value and +-inf for any other. score is the combined score in [0, 1): each detector's evidence is
    normalised so that its threshold is 1 (``|z|/z_threshold``, ``|robust z|/robust_threshold``,
    ``|rate|/max_rate``, ``divergence/shift_threshold``, and for a violated static limit or stuck run
    ``1 + excess/span`` and ``run/stuck_count``), the largest counts, and ``score = u/(1+u)`` with
    ``u = log1p((e-1) x)``: 0.5 exactly at a threshold, strictly increasing, never 1.

    The shift detector (FLAG_SHIFT) needs ``window`` readings to warm its long-run reference and then a
    half-full window of binned readings, so it first speaks after about 1.5 windows; see "Distribution
    shift" above. The time window (``time_window_ms`` > 0, per slot) keeps mean and variance of the
    readings newer than the slot's newest timestamp minus ``time_window_ms``, among the last ``window``.

    A reading older than the slot's newest one is flagged FLAG_LATE, scored, and added to the count
    window like any other (the window is in arrival order), but no rate of change is measured to or from
    it, for the stuck timer it counts as arriving at the slot's newest timestamp, and it stays out of the
    time window (which then holds only in-order readings, so it can expire from its oldest end).
    """

    cdef readonly int64_t window
    cdef readonly int64_t min_count
    cdef readonly double z_threshold
    cdef readonly double ewm_alpha
    cdef readonly dict defaults
    cdef double _oma
    cdef double _em1
    cdef object _fstate
    cdef object _istate
    cdef object _pstate
    cdef object _buf
    cdef object _sorted
    cdef object _tsring
    cdef object _bins
    cdef object _hist
    cdef object _xlogx
    cdef object _logn

    def __init__(self, window: int = 100, min_count: int = 20, z_threshold: float = 6.0,
                 capacity: int = 1024, *, ewm_alpha: float = 0.05, **detectors):
        window, min_count, z_threshold, capacity = check_params(window, min_count, z_threshold, capacity)
        self.window = window
        self.min_count = min_count
        self.z_threshold = z_threshold
        self.ewm_alpha = check_alpha(ewm_alpha)
        self.defaults = check_detectors(z_threshold, **detectors)
        self._oma = 1.0 - self.ewm_alpha
        self._em1 = math.e - 1.0
        self._fstate = new_fstate(capacity)
        self._istate = new_istate(capacity)
        self._pstate = new_pstate(capacity, self.defaults)
        self._buf = np.full((capacity, window), np.nan)
        self._sorted = new_sorted(capacity, window)
        self._tsring = new_tsring(capacity, window if self.defaults["time_window_ms"] > 0 else 0)
        self._bins = new_bins(capacity, window)
        self._hist = new_hist(capacity)
        self._xlogx = np.array(xlogx_table(window), dtype=np.float64)
        self._logn = np.array(log_table(window), dtype=np.float64)

    @property
    def nslots(self) -> int:
        return self._fstate.shape[0]

    def _grow(self, need):
        n = self._fstate.shape[0]
        extra = grown_size(n, need) - n
        self._fstate = np.concatenate([self._fstate, new_fstate(extra)])
        self._istate = np.concatenate([self._istate, new_istate(extra)])
        self._pstate = np.concatenate([self._pstate, new_pstate(extra, self.defaults)])
        self._buf = np.concatenate([self._buf, np.full((extra, self.window), np.nan)])
        self._sorted = np.concatenate([self._sorted, new_sorted(extra, self.window)])
        self._tsring = np.concatenate([self._tsring, new_tsring(extra, self._tsring.shape[1])])
        self._bins = np.concatenate([self._bins, new_bins(extra, self.window)])
        self._hist = np.concatenate([self._hist, new_hist(extra)])

    def update(self, slots, ts_ms, values):
        """Score each reading against its slot's window, then add it; returns ``(z, score, flags)``."""
        sl, ts, vals = check_batch(slots, ts_ms, values)
        cdef Py_ssize_t n = sl.shape[0], i, j
        if n and sl.max() >= self._fstate.shape[0]:
            self._grow(int(sl.max()) + 1)
        z_out = np.empty(n, dtype=np.float64)
        score_out = np.empty(n, dtype=np.float64)
        flags_out = np.empty(n, dtype=np.uint8)
        cdef:
            const int64_t[::1] s_v = sl
            const int64_t[::1] t_v = ts
            const float64_t[::1] x_v = vals
            float64_t[::1] z_v = z_out
            float64_t[::1] sc_v = score_out
            uint8_t[::1] fl_v = flags_out
            float64_t[:, ::1] fs = self._fstate
            int64_t[:, ::1] gs = self._istate
            const float64_t[:, ::1] ps = self._pstate
            float64_t[:, ::1] bs = self._buf
            float64_t[:, ::1] ss = self._sorted
            int64_t[:, ::1] ts_r = self._tsring
            bint has_t = self._tsring.shape[1] > 0
            uint8_t[:, ::1] bn_r = self._bins
            float64_t[:, ::1] hs = self._hist
            const float64_t[::1] xlogx = self._xlogx
            const float64_t[::1] logn = self._logn
            int64_t window = self.window, minp = self.min_count, s
            float64_t alpha = self.ewm_alpha, oma = self._oma, em1 = self._em1
        with nogil:
            for i in range(n):
                # Many keys do not fit in cache: fetch the state of the reading PF_FAR ahead, then,
                # once its ring position is known, the ring slot and sorted window of the one PF_NEAR
                # ahead, so the loads overlap with this reading's work.
                if i + PF_FAR < n:
                    s = s_v[i + PF_FAR]
                    prefetch(&fs[s, 0])
                    prefetch(&fs[s, 8])
                    prefetch(&fs[s, 16])
                    prefetch(&gs[s, 0])
                    prefetch(&gs[s, 8])
                    prefetch(&ps[s, 0])
                    prefetch(&ps[s, 8])
                if i + PF_NEAR < n:
                    s = s_v[i + PF_NEAR]
                    prefetch(&bs[s, gs[s, I_POS]])
                    for j in range(0, window, 8):
                        prefetch(&ss[s, j])
                    prefetch(&bn_r[s, gs[s, I_POS]])
                    if has_t:
                        prefetch(&ts_r[s, gs[s, I_POS]])
                    prefetch(&hs[s, 0])
                    prefetch(&hs[s, 8])
                    prefetch(&hs[s, 16])
                    prefetch(&hs[s, 24])
                    prefetch(&hs[s, 32])
                    prefetch(&hs[s, 40])
                s = s_v[i]
                fl_v[i] = detect(x_v[i], t_v[i], &fs[s, 0], &gs[s, 0], &bs[s, 0], &ss[s, 0], &ps[s, 0],
                                 &ts_r[s, 0] if has_t else NULL, &bn_r[s, 0], &hs[s, 0], window, minp,
                                 alpha, oma, em1,
                                 &xlogx[0], &logn[0], &z_v[i], &sc_v[i])
        return z_out, score_out, flags_out

    def configure(self, slots, **detectors) -> None:
        """Set detector settings (``robust_threshold``, ``lo``, ``hi``, ...) for the given slots."""
        sl = check_batch(slots, np.zeros(np.size(slots), np.int64), np.zeros(np.size(slots)))[0]
        if len(sl) and sl.max() >= self._fstate.shape[0]:
            self._grow(int(sl.max()) + 1)
        if not detectors:
            return
        for k in detectors:
            if k not in self.defaults:
                msg = f"unknown detector setting {k!r}; known: {sorted(self.defaults)}"
                raise TypeError(msg)
        for k, v in check_detectors(**{**self.defaults, **detectors}).items():
            if k in detectors:
                self._pstate[sl, PARAM_FIELDS.index(k)] = v
        if detectors.get("time_window_ms", 0) and not self._tsring.shape[1]:
            self._tsring = new_tsring(self._fstate.shape[0], self.window)

    def settings(self, slot) -> dict:
        """The detector settings of one slot."""
        s = check_slot(slot)
        if s >= self._fstate.shape[0]:
            return dict(self.defaults)
        return {k: float(self._pstate[s, j]) for j, k in enumerate(PARAM_FIELDS)}

    def silent(self, now_ms) -> np.ndarray:
        """Slots heard from before whose ``silence_ms`` (> 0) has passed by ``now_ms`` (timer-driven)."""
        return silent_slots(self._istate[:, I_LAST_TS], self._pstate[:, P_SILENCE_MS], int(now_ms))

    def mean(self, slot) -> float:
        """Mean of the real values in the slot's window; NaN when it has none."""
        cdef int64_t s = check_slot(slot)
        if s >= self._fstate.shape[0]:
            return math.nan
        cdef float64_t[:, ::1] fs = self._fstate
        cdef int64_t[:, ::1] gs = self._istate
        return calc_mean(&fs[s, F_SHIFT], &gs[s, I_NOBS])

    def var(self, slot) -> float:
        """Sample variance (ddof=1) of the slot's window; NaN below 2 real values."""
        cdef int64_t s = check_slot(slot)
        if s >= self._fstate.shape[0]:
            return math.nan
        cdef float64_t[:, ::1] fs = self._fstate
        cdef int64_t[:, ::1] gs = self._istate
        return calc_var(&fs[s, F_SHIFT], &gs[s, I_NOBS])

    def tmean(self, slot) -> float:
        """Mean of the slot's time window; NaN when it has no value."""
        cdef int64_t s = check_slot(slot)
        if s >= self._fstate.shape[0]:
            return math.nan
        cdef float64_t[:, ::1] fs = self._fstate
        cdef int64_t[:, ::1] gs = self._istate
        return calc_mean(&fs[s, F_TSHIFT], &gs[s, I_TNOBS])

    def tvar(self, slot) -> float:
        """Sample variance (ddof=1) of the slot's time window; NaN below 2 values."""
        cdef int64_t s = check_slot(slot)
        if s >= self._fstate.shape[0]:
            return math.nan
        cdef float64_t[:, ::1] fs = self._fstate
        cdef int64_t[:, ::1] gs = self._istate
        return calc_var(&fs[s, F_TSHIFT], &gs[s, I_TNOBS])

    def tcount(self, slot) -> int:
        """Values in the slot's time window."""
        s = check_slot(slot)
        if s >= self._fstate.shape[0]:
            return 0
        return int(self._istate[s, I_TNOBS])

    def divergence(self, slot) -> float:
        """Relative entropy of the slot's recent window against its long-run histogram (NaN until the
        window is half full of binned readings)."""
        cdef int64_t s = check_slot(slot)
        if s >= self._fstate.shape[0]:
            return math.nan
        cdef int64_t n = self._istate[s, I_HN]
        if n == 0 or 2 * n < self.window:
            return math.nan
        cdef float64_t[:, ::1] fs = self._fstate
        cdef float64_t[:, ::1] hs = self._hist
        cdef const float64_t[::1] xlogx = self._xlogx
        cdef const float64_t[::1] logn = self._logn
        return calc_kl(&fs[s, 0], &hs[s, 0], n, &xlogx[0], &logn[0])

    def count(self, slot) -> int:
        """Real (non-NaN) values in the slot's window."""
        s = check_slot(slot)
        if s >= self._fstate.shape[0]:
            return 0
        return int(self._istate[s, I_NOBS])

    def min(self, slot) -> float:
        """Smallest real value in the slot's window; NaN when it has none."""
        s = check_slot(slot)
        if s >= self._fstate.shape[0] or self._istate[s, I_NOBS] == 0:
            return math.nan
        return float(self._sorted[s, 0])

    def max(self, slot) -> float:
        """Largest real value in the slot's window; NaN when it has none."""
        s = check_slot(slot)
        if s >= self._fstate.shape[0] or self._istate[s, I_NOBS] == 0:
            return math.nan
        return float(self._sorted[s, self._istate[s, I_NOBS] - 1])

    def median(self, slot) -> float:
        """Median of the real values in the slot's window; NaN when it has none."""
        cdef int64_t s = check_slot(slot)
        if s >= self._fstate.shape[0]:
            return math.nan
        cdef float64_t[:, ::1] ss = self._sorted
        return calc_median(&ss[s, 0], self._istate[s, I_NOBS])

    def mad(self, slot) -> float:
        """Median absolute deviation from the median (unscaled); NaN when the window has no value."""
        cdef int64_t s = check_slot(slot)
        if s >= self._fstate.shape[0]:
            return math.nan
        cdef float64_t[:, ::1] ss = self._sorted
        cdef int64_t n = self._istate[s, I_NOBS]
        return calc_mad(&ss[s, 0], n, calc_median(&ss[s, 0], n))

    def ewm_mean(self, slot) -> float:
        """Exponentially weighted mean (weight ``ewm_alpha`` on the newest real value); NaN before any."""
        s = check_slot(slot)
        return math.nan if s >= self._fstate.shape[0] else float(self._fstate[s, F_EWM_MEAN])

    def ewm_var(self, slot) -> float:
        """Exponentially weighted variance (West's incremental form, not bias-corrected)."""
        s = check_slot(slot)
        return math.nan if s >= self._fstate.shape[0] else float(self._fstate[s, F_EWM_VAR])

    def last_ts(self, slot) -> int | None:
        """Newest timestamp seen for the slot (ms), None if never heard from."""
        s = check_slot(slot)
        if s >= self._fstate.shape[0] or self._istate[s, I_LAST_TS] == C_NEVER:
            return None
        return int(self._istate[s, I_LAST_TS])

    def to_bytes(self) -> bytes:
        """Snapshot of the whole state (versioned; loads in either twin)."""
        return _snapshot.dump(
            "RollingStats", params_of(self),
            {"fstate": FLOAT_FIELDS, "istate": INT_FIELDS, "pstate": PARAM_FIELDS},
            state_arrays(self._tsring, fstate=self._fstate, istate=self._istate, pstate=self._pstate,
                         buf=self._buf, sorted=self._sorted, bins=self._bins, hist=self._hist))

    @classmethod
    def from_bytes(cls, data) -> RollingStats:
        """Restore a snapshot made by ``to_bytes`` of either twin (or of an older layout)."""
        params, fields, arrays = _snapshot.load(data, "RollingStats")
        cdef RollingStats self = cls(capacity=1, **params)
        (self._fstate, self._istate, self._pstate, self._buf, self._sorted, self._tsring, self._bins,
         self._hist) = restore_state(fields, arrays, self.window, self.defaults)
        return self

    def __reduce__(self):
        return (type(self).from_bytes, (self.to_bytes(),))

    def __repr__(self) -> str:
        return (f"RollingStats(window={self.window}, min_count={self.min_count}, "
                f"z_threshold={self.z_threshold!r}, nslots={self.nslots})")
