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

from libc.math cimport INFINITY, NAN, expm1, fabs, floor, log, sqrt
from libc.stdint cimport INT64_MIN, int64_t, uint8_t
from libc.string cimport memmove

cdef extern from *:
    """
    #define IOTS_PREFETCH(p) __builtin_prefetch((const void *)(p))
    """
    void prefetch "IOTS_PREFETCH"(const void *p) noexcept nogil

from . import _snapshot
from ._common import (
    ALLOWANCE,
    WINDOW_SD_SHARE,
    ANOMALY_FLAGS,
    CAL_GAMMA,
    CAL_LEVEL0,
    CAL_LEVELS,
    CAL_N,
    CAL_PRIOR,
    CAL_QMIN,
    CLIP_SD,
    COUNTER_RATIO,
    DAY_MS,
    COUNTER_UPS,
    FLAG_LATE,
    FLAG_RATE,
    FLAG_ROBUST,
    FLAG_SHIFT,
    FLAG_STUCK,
    FLAG_THRESHOLD,
    FLAG_ZSCORE,
    FLOAT_FIELDS,
    INT_FIELDS,
    LEVEL_ALPHA_MAX,
    LEVEL_TAU_MS,
    NEVER,
    PARAM_FIELDS,
    RCOV_ALPHA,
    RHO_MAX,
    RMEAN_TAU_MS,
    RVAR_ALPHA,
    SCORE_DECADES,
    SEASON_ALPHA_MAX,
    SEASON_BUCKETS,
    SEASON_DEPARTED_SHARE,
    SEASON_MIN_MS,
    SEASON_Z,
    SMEAN_ALPHA,
    SMEAN_SD,
    SMEAN_VAR_ALPHA,
    SMOOTH_TAU_MS,
    SVAR_TAU_MS,
    PROFILE_TAU_MS,
    TIE_WEIGHT,
    check_alpha,
    check_batch,
    check_detectors,
    check_params,
    check_slot,
    classify,
    grown_size,
    new_fstate,
    new_istate,
    new_pstate,
    new_sorted,
    new_tsring,
    params_of,
    restore_state,
    silent_slots,
    state_arrays,
    upgrade_snapshot,
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
    F_RES = 17      # learned resolution: smallest non-zero step between real readings (0 = none yet)
    F_LEVEL = 18    # EW level in time (LEVEL_TAU_MS) that predicts the next reading
    F_RMEAN = 19    # EW mean, variance and lag-1 covariance of its (clipped) residuals
    F_RVAR = 20
    F_RCOV = 21
    F_DPREV = 22    # the previous (clipped) residual
    F_CUP = 23      # the two one-sided CUSUMs of standardized residuals
    F_CDOWN = 24
    F_CAL0 = 25     # F_CAL0..+7: shares of the readings whose evidence exceeded CAL_LEVEL0 * 2**k
    NCAL = 8
    F_SM = 33       # the time-of-day residual smoothed, its mean square, armed (1) or fired (0)
    F_SV = 34
    F_SARM = 35
    F_SMEAN = 36    # the smoothed residual's slow mean (F_SV is its variance around it)
    F_PROF0 = 37    # F_PROF0..+11: the time-of-day profile, one value per 2 hours of the UTC day
    NBUCKET = 12
    F_RSM = 49      # the change detector's residuals: short EW mean, and its learnt mean square
    F_RSV = 50
    NF = 51
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
    I_CN = 11       # readings the change detector has seen
    I_NUP = 12      # steps up and down between consecutive real readings (the counter test)
    I_NDOWN = 13
    I_FIRST_TS = 14  # timestamp of the first real reading (the age the time-of-day comparison waits for)
    NI = 15
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

cdef int64_t C_NEVER = INT64_MIN

if (FLOAT_FIELDS != ["shift", "mean", "cmean", "ssqdm", "cssq", "sabs", "prev", "rprev", "ewm_mean",
                     "ewm_var", "tshift", "tmean", "tcmean", "tssqdm", "tcssq", "tsabs", "tprev", "res",
                     "level", "rmean", "rvar", "rcov", "dprev", "cup", "cdown",
                     *(f"cal{k}" for k in range(NCAL)), "sm", "sv", "sarm", "smean",
                     *(f"prof{k}" for k in range(NBUCKET)), "rsm", "rsv"]
        or len(FLOAT_FIELDS) != NF or CAL_LEVELS != NCAL or SEASON_BUCKETS != NBUCKET
        or INT_FIELDS != ["pos", "nfill", "nobs", "nsame", "last_ts", "prev_ts", "run_ts", "ewm_n", "tnobs",
                          "tnsame", "tn", "cn", "nup", "ndown", "first_ts"]
        or len(INT_FIELDS) != NI
        or PARAM_FIELDS != ["z_threshold", "robust_threshold", "lo", "hi", "max_rate", "stuck_count",
                            "stuck_ms", "silence_ms", "shift_threshold", "time_window_ms"]
        or len(PARAM_FIELDS) != NP):
    raise ImportError("iotstream.ext._rolling was compiled against a different state layout than _common")
if ((FLAG_ZSCORE, FLAG_THRESHOLD, FLAG_RATE, FLAG_STUCK, FLAG_ROBUST, FLAG_SHIFT, FLAG_LATE, ANOMALY_FLAGS)
        != (Z_FLAG, THRESHOLD_FLAG, RATE_FLAG, STUCK_FLAG, ROBUST_FLAG, SHIFT_FLAG, LATE_FLAG, ANOMALY)
        or NEVER != C_NEVER):
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
# Consistency constants of the robust scale for normal data: sigma = 1.4826 MAD = 1.2533 mean|x - median|.
cdef double MAD_SCALE = 1.4826
cdef double MEANAD_SCALE = 1.2533
# prefetch distances of update's loop, in readings
cdef enum:
    PF_FAR = 16
    PF_NEAR = 8
# Change detector constants, taken from _common so both twins use the very same doubles.
cdef double LEVEL_TAU_C = LEVEL_TAU_MS
cdef double LEVEL_ALPHA_MAX_C = LEVEL_ALPHA_MAX
cdef double RVAR_ALPHA_C = RVAR_ALPHA
cdef int64_t RVAR_N = <int64_t>(1.0 / RVAR_ALPHA)
cdef double RMEAN_TAU_C = RMEAN_TAU_MS
cdef double CLIP_SD_C = CLIP_SD
cdef double ALLOWANCE_C = ALLOWANCE
cdef double WINDOW_SD_SHARE_C = WINDOW_SD_SHARE
cdef double RHO_MAX_C = RHO_MAX
cdef double RCOV_ALPHA_C = RCOV_ALPHA
cdef int64_t RCOV_N = <int64_t>(1.0 / RCOV_ALPHA)
cdef double SMEAN_ALPHA_C = SMEAN_ALPHA
cdef double SMEAN_VAR_ALPHA_C = SMEAN_VAR_ALPHA
cdef int64_t SMEAN_N = <int64_t>(1.0 / SMEAN_VAR_ALPHA)
cdef double SMEAN_SD2 = SMEAN_SD * SMEAN_SD
cdef int64_t COUNTER_UPS_C = COUNTER_UPS
cdef int64_t COUNTER_RATIO_C = COUNTER_RATIO
cdef double CAL_GAMMA_C = CAL_GAMMA
cdef double CAL_LEVEL0_C = CAL_LEVEL0
cdef int64_t CAL_N_C = CAL_N
cdef int64_t CAL_PRIOR_C = CAL_PRIOR
cdef double CAL_QMIN_C = CAL_QMIN
cdef double CAL_ALPHA_C = 1.0 / CAL_N
cdef double TIE_WEIGHT_C = TIE_WEIGHT
cdef double LN2 = math.log(2.0)
cdef double CAL_EMAX = DBL_MAX * CAL_LEVEL0
cdef double CAL_LEV[8]  # the levels, and 1 / (level - the level below it) (0 below the first)
cdef double CAL_INV[8]
for _k in range(NCAL):
    CAL_LEV[_k] = CAL_LEVEL0 * 2.0**_k
    CAL_INV[_k] = 1.0 / (CAL_LEVEL0 * 2.0**(_k - 1) if _k else CAL_LEVEL0)
cdef double LOG_QMIN = math.log(CAL_QMIN)
cdef int64_t DAY_C = DAY_MS
cdef double INV_DAY = 1.0 / DAY_MS
cdef double INV_SMOOTH = 1.0 / SMOOTH_TAU_MS
cdef double INV_PROFILE = 1.0 / PROFILE_TAU_MS
cdef double INV_SVAR = 1.0 / SVAR_TAU_MS
cdef int64_t SEASON_MIN_C = SEASON_MIN_MS
cdef double PROFILE_TAU_C = PROFILE_TAU_MS
cdef double SMOOTH_TAU_C = SMOOTH_TAU_MS
cdef double SVAR_TAU_C = SVAR_TAU_MS
cdef double SEASON_ALPHA_MAX_C = SEASON_ALPHA_MAX
cdef double SEASON_DEPARTED_C = SEASON_DEPARTED_SHARE
cdef double SEASON_Z_C = SEASON_Z
cdef double SCORE_SCALE = -1.0 / (math.log(10.0) * SCORE_DECADES)


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
    """z of ``val`` against the window before it is added, its sd floored at the slot's resolution;
    NaN below ``minp`` real values.

    A constant window gives 0 for the same value and (val - c) / resolution for any other, +-inf while
    the slot has never moved (no resolution learned: a stuck signal that moves).
    """
    cdef float64_t c, dev, ssq, z, res = f[F_RES], zf
    if g[I_NOBS] < minp or val != val:
        return NAN
    if g[I_NSAME] >= g[I_NOBS]:
        c = f[F_PREV]
        if val == c:
            return 0.0
        if res > 0.0:
            return (val - c) / res
        return INFINITY if val > c else -INFINITY
    dev = (val - f[F_SHIFT]) - (f[F_MEAN] - f[F_CMEAN])
    ssq = f[F_SSQDM]
    if TINY_SSQDM <= ssq <= HUGE_SSQDM:
        z = dev / sqrt(ssq / (g[I_NOBS] - 1))
    else:
        z = scaled_z(dev, f, g, b, window)
    if res > 0.0:
        zf = dev / res
        if fabs(zf) < fabs(z):
            return zf
    return z


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


cdef float64_t calc_rz(float64_t val, const float64_t *s, int64_t n, int64_t minp,
                       float64_t res) noexcept nogil:
    """Robust z of ``val`` against the window before it: (val - median) / (1.4826 MAD).

    When more than half the window is one value (MAD = 0) the scale falls back to 1.2533 times the mean
    absolute deviation from the median; either is floored at the resolution ``res``; a constant window
    of a slot that never moved gives 0 or +-inf like the plain z.
    """
    cdef float64_t med, mad, acc = 0.0, dev
    cdef int64_t j
    if n < minp or val != val:
        return NAN
    med = calc_median(s, n)
    dev = val - med
    mad = calc_mad(s, n, med)
    if mad > 0.0:
        mad = MAD_SCALE * mad
    else:
        for j in range(n):
            acc += fabs(s[j] - med)
        mad = MEANAD_SCALE * (acc / n)
    if mad < res:
        mad = res
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
# Calibrated score
#
# Evidence in threshold units means different things on different keys: a Gaussian key's |z| / 6 is 0.5
# once in 400 readings, a heavy-tailed key's far more often, a quantized key's moves in steps. So the
# score is the key's own tail probability of its evidence e (the largest detector evidence over its
# threshold): per key, q[k] is the exponentially weighted share of its readings (memory CAL_N, starting
# from CAL_PRIOR readings of a prior tail) whose e exceeded the level CAL_LEVEL0 * 2**k. The tail at e
# interpolates log q linearly in e between levels (from 0 at e = 0); above the last
# level with a share of at least CAL_QMIN it falls as a power law, at least as steep as the last segment
# and as CAL_GAMMA, so it never reaches 0 for finite evidence. Everything stays in log space:
# score = u / (1 + u), u = -log10(tail) / SCORE_DECADES, so 0.5 means "once in 10**4 readings of this
# key", and the score never saturates. Between levels a tiny term in e breaks ties of equal shares.


cdef inline float64_t tail_log(float64_t e, const float64_t *q) noexcept nogil:
    """Natural log of the share of the key's readings with evidence above ``e`` (before this one)."""
    cdef float64_t qp = 1.0, qpp = 1.0, lev = 0.0, gam = CAL_GAMMA_C, lp
    cdef int64_t k
    if not (e > 0.0):
        return 0.0
    for k in range(NCAL):
        if q[k] < CAL_QMIN_C:
            break
        if e <= CAL_LEV[k]:  # between two levels (or 0 and the first): log of the share linear in e
            lp = log(qp) if k > 0 else 0.0
            return lp + (log(q[k]) - lp) * ((e - lev) * CAL_INV[k]) - TIE_WEIGHT_C * e
        qpp = qp
        qp = q[k]
        lev = CAL_LEV[k]
    if lev == 0.0:  # not even the first level is reliable: anchor the tail at CAL_QMIN there
        lev = CAL_LEVEL0_C
        if e <= lev:
            return LOG_QMIN * (e / lev) - TIE_WEIGHT_C * e
        lp = LOG_QMIN
    else:
        lp = log(qp)
        if lev > CAL_LEVEL0_C:
            gam = (log(qpp) - lp) / LN2
            if gam < CAL_GAMMA_C:
                gam = CAL_GAMMA_C
        lev = lev * 2.0  # up to the next level the tail is at most the last reliable share: kept flat
        if e <= lev:
            return lp - TIE_WEIGHT_C * e
    if e > CAL_EMAX:  # e / lev stays finite: infinite evidence has a finite, very small tail
        e = CAL_EMAX
    return lp - TIE_WEIGHT_C * lev - gam * log(e / lev)


cdef inline void learn_tail(float64_t e, float64_t *q, int64_t n) noexcept nogil:
    """Move each level's share towards whether ``e`` exceeded it (``n``: real readings of the key)."""
    cdef float64_t a = 1.0 / (n + CAL_PRIOR_C) if n + CAL_PRIOR_C < CAL_N_C else CAL_ALPHA_C
    cdef int64_t k
    for k in range(NCAL):  # no branch: the compiler can do the eight at once
        q[k] = q[k] + a * (<float64_t>(e > CAL_LEV[k]) - q[k])


cdef inline float64_t young_tail(float64_t e, float64_t thr, int64_t n) noexcept nogil:
    """Log of a young key's Gaussian factor for z-score evidence ``e`` beyond threshold ``thr`` (_common)."""
    cdef float64_t z
    if e > CAL_LEV[NCAL - 1]:
        e = CAL_LEV[NCAL - 1]
    z = e * thr
    return -(1.0 - n * CAL_ALPHA_C) * 0.5 * (z * z - thr * thr)


cdef inline float64_t calc_score(float64_t lt) noexcept nogil:
    """u / (1 + u), u = -log10(tail) / SCORE_DECADES: 0 for nothing unusual, below 1 for any tail."""
    cdef float64_t u
    if not (lt < 0.0):
        return 0.0
    u = lt * SCORE_SCALE
    return u / (1.0 + u)


# ----------------------------------------------------------------------
# Scale and kind
#
# Real sensors are quantized: a 0.1 degC thermometer moves in steps of 0.1, and a window where it sat
# still has a standard deviation of 0 or of a fraction of a step. Every scale (sd, MAD, residual sd) is
# floored at the slot's resolution, the smallest non-zero step seen between consecutive real readings,
# so a one-step move is one unit of evidence, never "infinitely unusual". For full-precision data the
# smallest step shrinks towards 0 and the floor never binds. The steps also tell a counter (monotone
# with rare resets) from the rest: a counter's value window means nothing, so the z-scores skip it.

cdef inline void learn_step(float64_t val, float64_t *f, int64_t *g) noexcept nogil:
    """Count the step from the previous real reading and learn the resolution from it."""
    cdef float64_t d = val - f[F_PREV]
    if d > 0.0:
        g[I_NUP] += 1
    elif d < 0.0:
        g[I_NDOWN] += 1
        d = -d
    if d > 0.0 and (f[F_RES] == 0.0 or d < f[F_RES]):
        f[F_RES] = d


cdef inline bint is_counter(const int64_t *g) noexcept nogil:
    return g[I_NUP] >= COUNTER_UPS_C and g[I_NDOWN] * COUNTER_RATIO_C <= g[I_NUP]


# ----------------------------------------------------------------------
# Change at onset
#
# The z-scores compare a reading with the last `window` readings, so they miss changes the window follows
# (a level shift after a few readings, a slow drift). Here an exponentially weighted level with a time
# constant in time, not readings (LEVEL_TAU_MS, capped at LEVEL_ALPHA_MAX per reading), predicts each
# reading. The residual, less its own slowly moving EW mean (so the steady lag of the level behind a
# slope, e.g. a daily cycle, is not evidence), is standardized by its EW sd floored at the resolution,
# clipped to +-CLIP_SD, and feeds two one-sided CUSUMs (Page 1954) with allowance ALLOWANCE. The detector
# speaks at the onset of a change, once a CUSUM exceeds shift_threshold, and is then re-armed: both sums
# restart at 0 and the level at the new value, so a lasting shift is one event, not a state. Noise and
# single spikes (clipped) do not accumulate. A counter's increments take the place of its values.


cdef inline float64_t change_floor(const float64_t *f, const int64_t *g) noexcept nogil:
    """Smallest residual sd: the resolution, and WINDOW_SD_SHARE of the count window's sd (a signal
    that wanders smoothly with little noise is judged against its wandering, not its noise)."""
    cdef float64_t v = calc_var(&f[F_SHIFT], &g[I_NOBS]), floor = f[F_RES]
    if v == v and WINDOW_SD_SHARE_C * sqrt(v) > floor:
        floor = WINDOW_SD_SHARE_C * sqrt(v)
    return floor


cdef inline float64_t change(float64_t val, int64_t ts, float64_t *f, int64_t *g, float64_t h,
                             int64_t warm, float64_t floor) noexcept nogil:
    """Feed one real reading; returns the CUSUM evidence (largest sum / h, > 1 when it fires)."""
    cdef float64_t d, sd, c, u, x = 0.0, a, rho
    cdef int64_t n = g[I_CN]
    g[I_CN] = n + 1
    if n == 0:
        f[F_LEVEL] = val
        f[F_RMEAN] = 0.0
        f[F_RVAR] = 0.0
        f[F_RCOV] = 0.0
        f[F_DPREV] = 0.0
        f[F_CUP] = 0.0
        f[F_CDOWN] = 0.0
        f[F_RSM] = 0.0
        f[F_RSV] = 0.0
        return 0.0
    d = (val - f[F_LEVEL]) - f[F_RMEAN]
    sd = sqrt(f[F_RVAR])
    if sd > 0.0:
        # residuals of real sensors are autocorrelated: scale to the sd of their run averages (AR(1))
        rho = f[F_RCOV] / f[F_RVAR]
        if not (rho > 0.0):
            rho = 0.0
        elif rho > RHO_MAX_C:
            rho = RHO_MAX_C
        sd = sd * sqrt((1.0 + rho) / (1.0 - rho))
    if sd < floor:
        sd = floor
    if sd > 0.0:
        c = CLIP_SD_C * sd
        if d > c:
            d = c
        elif d < -c:
            d = -c
        f[F_RSM] = f[F_RSM] + SMEAN_ALPHA_C * (d - f[F_RSM])
        if n >= warm and h < INFINITY:
            u = d / sd
            f[F_CUP] = f[F_CUP] + u - ALLOWANCE_C
            if not (f[F_CUP] > 0.0):
                f[F_CUP] = 0.0
            f[F_CDOWN] = f[F_CDOWN] - u - ALLOWANCE_C
            if not (f[F_CDOWN] > 0.0):
                f[F_CDOWN] = 0.0
            x = (f[F_CUP] if f[F_CUP] > f[F_CDOWN] else f[F_CDOWN]) / h
            if x > 1.0 and f[F_RSM] * f[F_RSM] <= SMEAN_SD2 * f[F_RSV]:
                x = 1.0  # the short mean is within the key's usual range: wander, not a change
            elif x > 1.0:  # fired: re-armed at the new level
                f[F_LEVEL] = val
                f[F_RMEAN] = 0.0
                f[F_DPREV] = 0.0
                f[F_CUP] = 0.0
                f[F_CDOWN] = 0.0
                f[F_RSM] = 0.0
                return x
    a = RVAR_ALPHA_C if n >= RVAR_N else 1.0 / n
    f[F_RVAR] = f[F_RVAR] + a * (d * d - f[F_RVAR])
    if f[F_CUP] == 0.0 and f[F_CDOWN] == 0.0:  # learnt only while no change builds up
        a = RCOV_ALPHA_C if n >= RCOV_N else 1.0 / n
        f[F_RCOV] = f[F_RCOV] + a * (d * f[F_DPREV] - f[F_RCOV])
    if 2.0 * f[F_CUP] < h and 2.0 * f[F_CDOWN] < h:  # learnt only while no change is near reporting
        a = SMEAN_VAR_ALPHA_C if n >= SMEAN_N else 1.0 / n
        f[F_RSV] = f[F_RSV] + a * (f[F_RSM] * f[F_RSM] - f[F_RSV])
    f[F_DPREV] = d
    if ts > g[I_LAST_TS]:  # level and residual mean move with time; a late or same-time reading does not
        a = -expm1(-(ts - g[I_LAST_TS]) / LEVEL_TAU_C)
        if a > LEVEL_ALPHA_MAX_C:
            a = LEVEL_ALPHA_MAX_C
        f[F_LEVEL] = f[F_LEVEL] + a * (f[F_RMEAN] + d)
        a = -expm1(-(ts - g[I_LAST_TS]) / RMEAN_TAU_C) if n >= RVAR_N else 1.0 / n
        f[F_RMEAN] = f[F_RMEAN] + a * d
    return x


# ----------------------------------------------------------------------
# Time of day
#
# The change detector follows a daily cycle by its time constants, so it cannot tell a night that stays
# as warm as noon, or a drift as slow as the cycle, from the cycle itself. Per key a profile of the level
# over the UTC day (NBUCKET values, one per 2 hours, linearly interpolated between their centres) is
# learnt by least mean squares with a time constant of PROFILE_TAU_MS of in-bucket time (about a day; the
# first day faster, as a running mean). The reading's residual from the profile is smoothed
# (SMOOTH_TAU_MS); its departure from its own slow mean (a trend the profile lags behind is none) is
# compared with its typical size (sd; mean and sd over SVAR_TAU_MS, learnt from the second day on and
# only while no departure builds up): above SEASON_Z times
# it the reading is flagged as a change (FLAG_SHIFT), once, and the comparison re-arms below half of it.
# It speaks only once the key spans SEASON_MIN_MS (two days), so short-lived keys are unaffected; while a
# departure lasts the profile learns SEASON_DEPARTED_SHARE as fast, so a warm night is not learnt as
# normal by morning, while a lasting change is, over days.


cdef inline float64_t seasonal(float64_t val, int64_t ts, float64_t *f, int64_t *g) noexcept nogil:
    """Feed one in-order real reading; returns the time-of-day evidence (> 1 above SEASON_Z)."""
    cdef int64_t dt, age, b0, b1, k
    cdef float64_t pos, w, r, a, d, x = 0.0, sd
    if g[I_FIRST_TS] == C_NEVER:
        g[I_FIRST_TS] = ts
        for k in range(NBUCKET):
            f[F_PROF0 + k] = val
        return 0.0
    dt = ts - g[I_LAST_TS]
    age = ts - g[I_FIRST_TS]
    pos = ts * INV_DAY  # days since the epoch; its fraction is the time of day (no integer division)
    pos = (pos - floor(pos)) * NBUCKET - 0.5
    if pos < 0.0:
        pos += NBUCKET
    b0 = <int64_t>pos
    w = pos - b0
    if b0 >= NBUCKET:  # just below midnight's half-hour, pos rounds up to a whole day
        b0 = b0 - NBUCKET
    b1 = b0 + 1 if b0 + 1 < NBUCKET else 0
    r = val - (f[F_PROF0 + b0] + w * (f[F_PROF0 + b1] - f[F_PROF0 + b0]))
    a = dt * INV_SMOOTH
    if a > SEASON_ALPHA_MAX_C:
        a = SEASON_ALPHA_MAX_C
    f[F_SM] = f[F_SM] + a * (r - f[F_SM])
    d = f[F_SM] - f[F_SMEAN]
    if age >= SEASON_MIN_C:
        sd = sqrt(f[F_SV])
        if sd < f[F_RES]:
            sd = f[F_RES]
        if sd > 0.0:
            x = fabs(d) / (sd * SEASON_Z_C)
    a = dt * INV_PROFILE if age >= DAY_C else <float64_t>(dt * NBUCKET) / <float64_t>age
    if x >= 0.5:
        a = a * SEASON_DEPARTED_C
    if a > SEASON_ALPHA_MAX_C:
        a = SEASON_ALPHA_MAX_C
    f[F_PROF0 + b0] = f[F_PROF0 + b0] + a * (1.0 - w) * r
    f[F_PROF0 + b1] = f[F_PROF0 + b1] + a * w * r
    if x < 0.5 and age > DAY_C:
        a = dt * INV_SVAR if age - DAY_C >= SVAR_TAU_C else <float64_t>dt / <float64_t>(age - DAY_C)
        if a > SEASON_ALPHA_MAX_C:
            a = SEASON_ALPHA_MAX_C
        f[F_SMEAN] = f[F_SMEAN] + a * d
        f[F_SV] = f[F_SV] + a * (d * d - f[F_SV])
    return x


# ----------------------------------------------------------------------
# One reading

cdef inline void step(float64_t val, int64_t ts, float64_t *f, int64_t *g, float64_t *b, float64_t *srt,
                      int64_t *tr, float64_t twin, int64_t window, float64_t alpha,
                      float64_t oma) noexcept nogil:
    """Slide the slot's count window (and time window) by one reading and update the running state."""
    cdef float64_t old
    cdef int64_t pos = g[I_POS], j, horizon
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
    else:
        g[I_NFILL] += 1
    b[pos] = val
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
                           float64_t *srt, const float64_t *p, int64_t *tr, int64_t window, int64_t minp,
                           float64_t alpha, float64_t oma, float64_t *z_out,
                           float64_t *score_out, uint8_t *dom_out) noexcept nogil:
    """Score one reading against its slot's state, then add it; returns the flags, and in ``dom_out``
    the flag of the detector with the largest evidence among those that fired (0 when none did)."""
    cdef:
        uint8_t flags = 0, dom = 0
        float64_t z = NAN, rz, e = 0.0, x, rate, ex, span, bound, lt
        int64_t dt
        bint counter = is_counter(g)
    if not counter:
        z = calc_z(val, f, g, b, window, minp)
        x = fabs(z) / p[P_ZTHR]
        if x > e:
            e = x
            dom = Z_FLAG
        if fabs(z) > p[P_ZTHR]:
            flags |= Z_FLAG
        if p[P_RTHR] < INFINITY:
            rz = calc_rz(val, srt, g[I_NOBS], minp, f[F_RES])
            x = fabs(rz) / p[P_RTHR]
            if x > e:
                e = x
                dom = ROBUST_FLAG
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
                dom = RATE_FLAG
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
            dom = THRESHOLD_FLAG
        flags |= THRESHOLD_FLAG
    if val == val:
        x = 0.0
        if not counter:
            x = change(val, ts, f, g, p[P_STHR], window, change_floor(f, g))
        elif val >= f[F_PREV]:  # a counter's increments, not its values; a reset is no evidence
            if g[I_NUP] == COUNTER_UPS_C:
                g[I_CN] = 0  # just found to be a counter: the detector starts afresh on increments
            x = change(val - f[F_PREV], ts, f, g, p[P_STHR], window, f[F_RES])
        if x > e:
            e = x
            dom = SHIFT_FLAG
        if x > 1.0:
            flags |= SHIFT_FLAG
        if not counter and ts > g[I_LAST_TS]:
            x = seasonal(val, ts, f, g)
            if x > e:
                e = x
                dom = SHIFT_FLAG
            if x > 1.0 and f[F_SARM] > 0.0:
                flags |= SHIFT_FLAG
                f[F_SARM] = 0.0
            elif x < 0.5:
                f[F_SARM] = 1.0
        if f[F_PREV] == f[F_PREV]:
            learn_step(val, f, g)  # after scoring: the floor comes from earlier steps only
    step(val, ts, f, g, b, srt, tr, p[P_TWIN], window, alpha, oma)
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
                dom = STUCK_FLAG
    if not (dom & flags):
        dom = flags & ANOMALY & -(flags & ANOMALY)  # lowest flag that fired (ties at the threshold)
    lt = tail_log(e, &f[F_CAL0])  # scored against the key's past, then learnt
    if e > 1.0 and g[I_EWM_N] < CAL_N_C and (dom == Z_FLAG or dom == ROBUST_FLAG):
        lt = lt + young_tail(e, p[P_ZTHR] if dom == Z_FLAG else p[P_RTHR], g[I_EWM_N])
    if val == val:
        learn_tail(e, &f[F_CAL0], g[I_EWM_N])
    z_out[0] = z
    score_out[0] = calc_score(lt)
    dom_out[0] = dom
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

    ``update`` returns ``(z, score, flags)`` per reading. z is the z-score against the window before
    the reading, its sd floored at the slot's resolution: NaN below ``min_count`` real values, for a NaN
    reading, or on a counter; for a constant window 0 for the same value and steps of the resolution for
    any other (+-inf while the slot never moved). score is the combined score in [0, 1): each detector's
    evidence is normalised so that its threshold is 1 (``|z|/z_threshold``, ``|robust z|/robust_threshold``,
    ``|rate|/max_rate``, ``cusum/shift_threshold``, and for a violated static limit or stuck run
    ``1 + excess/span`` and ``run/stuck_count``), the largest, x, counts, and the score is calibrated on
    the slot's own past: ``score = u/(1+u)``, ``u = -log10(tail) / 4``, tail the share of the slot's
    readings with evidence above x (see "Calibrated score"): 0.5 = once in 10**4 readings of this slot,
    0 for no evidence, strictly increasing in x, never 1.

    The change detector (FLAG_SHIFT) speaks after ``window`` readings, at the onset of a change, and is
    re-armed; see "Change at onset" above. The time window (``time_window_ms`` > 0, per slot) keeps mean and variance of the
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
    cdef object _fstate
    cdef object _istate
    cdef object _pstate
    cdef object _buf
    cdef object _sorted
    cdef object _tsring

    def __init__(self, window: int = 100, min_count: int = 20, z_threshold: float = 6.0,
                 capacity: int = 1024, *, ewm_alpha: float = 0.05, **detectors):
        window, min_count, z_threshold, capacity = check_params(window, min_count, z_threshold, capacity)
        self.window = window
        self.min_count = min_count
        self.z_threshold = z_threshold
        self.ewm_alpha = check_alpha(ewm_alpha)
        self.defaults = check_detectors(z_threshold, **detectors)
        self._oma = 1.0 - self.ewm_alpha
        self._fstate = new_fstate(capacity)
        self._istate = new_istate(capacity)
        self._pstate = new_pstate(capacity, self.defaults)
        self._buf = np.full((capacity, window), np.nan)
        self._sorted = new_sorted(capacity, window)
        self._tsring = new_tsring(capacity, window if self.defaults["time_window_ms"] > 0 else 0)

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

    def update(self, slots, ts_ms, values, dominant=False):
        """Score each reading against its slot's window, then add it; returns ``(z, score, flags)``, and
        with ``dominant`` also the flag of the strongest detector that fired per reading (0 if none)."""
        sl, ts, vals = check_batch(slots, ts_ms, values)
        cdef Py_ssize_t n = sl.shape[0], i, j
        if n and sl.max() >= self._fstate.shape[0]:
            self._grow(int(sl.max()) + 1)
        z_out = np.empty(n, dtype=np.float64)
        score_out = np.empty(n, dtype=np.float64)
        flags_out = np.empty(n, dtype=np.uint8)
        dom_out = np.empty(n, dtype=np.uint8)
        cdef:
            const int64_t[::1] s_v = sl
            const int64_t[::1] t_v = ts
            const float64_t[::1] x_v = vals
            float64_t[::1] z_v = z_out
            float64_t[::1] sc_v = score_out
            uint8_t[::1] fl_v = flags_out
            uint8_t[::1] dm_v = dom_out
            float64_t[:, ::1] fs = self._fstate
            int64_t[:, ::1] gs = self._istate
            const float64_t[:, ::1] ps = self._pstate
            float64_t[:, ::1] bs = self._buf
            float64_t[:, ::1] ss = self._sorted
            int64_t[:, ::1] ts_r = self._tsring
            bint has_t = self._tsring.shape[1] > 0
            int64_t window = self.window, minp = self.min_count, s
            float64_t alpha = self.ewm_alpha, oma = self._oma
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
                    prefetch(&fs[s, 24])
                    prefetch(&fs[s, 32])
                    prefetch(&fs[s, 40])
                    prefetch(&fs[s, 48])
                    prefetch(&fs[s, NF - 1])
                    prefetch(&gs[s, 0])
                    prefetch(&gs[s, 8])
                    prefetch(&ps[s, 0])
                    prefetch(&ps[s, 8])
                if i + PF_NEAR < n:
                    s = s_v[i + PF_NEAR]
                    prefetch(&bs[s, gs[s, I_POS]])
                    for j in range(0, window, 8):
                        prefetch(&ss[s, j])
                    if has_t:
                        prefetch(&ts_r[s, gs[s, I_POS]])
                s = s_v[i]
                fl_v[i] = detect(x_v[i], t_v[i], &fs[s, 0], &gs[s, 0], &bs[s, 0], &ss[s, 0], &ps[s, 0],
                                 &ts_r[s, 0] if has_t else NULL, window, minp, alpha, oma, &z_v[i],
                                 &sc_v[i], &dm_v[i])
        if dominant:
            return z_out, score_out, flags_out, dom_out
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

    def cusum(self, slot) -> float:
        """Larger of the change detector's two CUSUMs (residual sd; it fires above shift_threshold)."""
        s = check_slot(slot)
        if s >= self._fstate.shape[0]:
            return math.nan
        return float(max(self._fstate[s, F_CUP], self._fstate[s, F_CDOWN]))

    def resolution(self, slot) -> float:
        """Learned resolution: smallest non-zero step between consecutive real readings (0 = none yet)."""
        s = check_slot(slot)
        return math.nan if s >= self._fstate.shape[0] else float(self._fstate[s, F_RES])

    def kind(self, slot) -> str:
        """The slot's kind as the detectors see it (``_common.classify``)."""
        s = check_slot(slot)
        if s >= self._fstate.shape[0]:
            return "unknown"
        g = self._istate[s]
        return classify(self._sorted[s, :g[I_NOBS]], float(self._fstate[s, F_RES]), int(g[I_NUP]),
                        int(g[I_NDOWN]))

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
                         buf=self._buf, sorted=self._sorted))

    @classmethod
    def from_bytes(cls, data) -> RollingStats:
        """Restore a snapshot made by ``to_bytes`` of either twin (or of an older layout)."""
        params, fields, arrays = _snapshot.load(data, "RollingStats")
        upgrade_snapshot(params, fields, arrays)
        cdef RollingStats self = cls(capacity=1, **params)
        (self._fstate, self._istate, self._pstate, self._buf, self._sorted,
         self._tsring) = restore_state(fields, arrays, self.window, self.defaults)
        return self

    def __reduce__(self):
        return (type(self).from_bytes, (self.to_bytes(),))

    def __repr__(self) -> str:
        return (f"RollingStats(window={self.window}, min_count={self.min_count}, "
                f"z_threshold={self.z_threshold!r}, nslots={self.nslots})")
