# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# cython: language_level=3
# distutils: extra_compile_args = -O3 -ffp-contract=off -fno-math-errno
"""Rolling statistics and anomaly detectors over many keys at once, in one source for two uses.

``setup.py`` compiles this file with Cython (pure-Python mode: the ``cython`` decorators and annotations
type it; ``iotstream.ext.rolling.pxd`` adds the prefetch intrinsic, the integer constants as a C enum and
two small C tables); the batch loop then runs without the GIL over typed memoryviews (locals that only
ever hold doubles are typed by Cython's inference, the integers are declared). Loaded as plain Python
(``iotstream.ext.load_pure()``) the same lines are the reference the parity tests compare the compiled
module with, and the fallback when the extension is not built. Python floats are IEEE doubles and
``math.sqrt`` / ``math.log`` are the C library's, so both give bit-identical results and snapshots;
``-ffp-contract=off`` keeps the C compiler from fusing multiply-adds.

Every reading of a batch is ``(slot, ts_ms, value)``. Per slot the kernel keeps a count window of the last
``window`` readings (a ring buffer plus the same values kept sorted), its Welford mean/variance, a time
window over the same ring with its own Welford state, an EWMA and EW variance, and the state of the
detectors. The state is a few flat arrays (numpy arrays compiled, lists in Python); a slot's row starts
at ``slot * NF`` (floats), ``slot * NI`` (counters), ``slot * NP`` (settings) and ``slot * window`` (ring,
sorted window, timestamp ring), and every helper takes an array and the offset of the row or block it
works on.

Min and max come from the sorted window rather than from two monotonic deques: the sorted window is
needed anyway for the median and MAD of the robust z-score, and it gives min/max at no extra memory.

The time window holds the ring's readings newer than the slot's newest timestamp minus ``time_window_ms``
(so it is capped at ``window`` readings). Timestamps ride in a second ring; a reading that is late or NaN
gets the NEVER timestamp there, a hole that is skipped, so the counted timestamps only grow along the ring
and expiry pops from the oldest end (pandas' variable windows assume sorted timestamps in the same way).
"""

import math

import cython
import numpy as np

from . import _snapshot
from ._common import (
    ALLOWANCE,
    ANOMALY_FLAGS,
    CAL_GAMMA,
    CAL_LEVEL0,
    CAL_LEVELS,
    CAL_N,
    CAL_PRIOR,
    CAL_QMIN,
    CLIP_SD,
    COUNTER_RATIO,
    COUNTER_UPS,
    DAY_MS,
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
    PROFILE_TAU_MS,
    RCOV_ALPHA,
    RHO_MAX,
    RMEAN_TAU_MS,
    ROBUST_IDR_SHARE,
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
    TIE_WEIGHT,
    WINDOW_SD_SHARE,
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

if cython.compiled:
    from cython.cimports.libc.math import INFINITY as INF
    from cython.cimports.libc.math import NAN, expm1, fabs, floor, log, sqrt
    from cython.cimports.libc.string import memmove
else:
    from bisect import bisect_left, bisect_right
    from math import expm1, fabs, floor, log, sqrt
    from math import inf as INF  # noqa: N812 (the names of the C macros)
    from math import nan as NAN  # noqa: N812

__all__ = ["COMPILED", "FLAG_ZSCORE", "RollingStats"]

COMPILED = cython.compiled

# ----------------------------------------------------------------------
# State layout and integer constants. The columns are _common's field lists, each index found there by
# name; compiled, the names are the C enum of iotstream.ext.rolling.pxd (folded into addresses by the C
# compiler) and must equal these values.

_F, _I, _P = ({k: j for j, k in enumerate(x)} for x in (FLOAT_FIELDS, INT_FIELDS, PARAM_FIELDS))
# A Welford block (the count window's from F_SHIFT / I_NOBS, the time window's from F_TSHIFT / I_TNOBS):
# K, the values are stored relative to it (1e12 + tiny noise stays exact); mean of (x - K) and its Kahan
# compensation; sum of squared differences from the mean and its compensation; sum of |updates| to it
# since the last recompute (the scale of its rounding error); last real value. Counters: values, run.
BLOCK = ["shift", "mean", "cmean", "ssqdm", "cssq", "sabs", "prev"]
_LAYOUT = (
    len(FLOAT_FIELDS), len(INT_FIELDS), len(PARAM_FIELDS), _F["shift"], _F["prev"], _F["rprev"],
    _F["ewm_mean"], _F["ewm_var"], _F["tshift"], _F["res"], _F["level"], _F["rmean"], _F["rvar"], _F["rcov"],
    _F["dprev"], _F["cup"], _F["cdown"], _F["cal0"], _F["sm"], _F["sv"], _F["sarm"], _F["smean"], _F["prof0"],
    _F["rsm"], _F["rsv"], _I["pos"], _I["nfill"], _I["nobs"], _I["nsame"], _I["last_ts"], _I["prev_ts"],
    _I["run_ts"], _I["ewm_n"], _I["tnobs"], _I["tn"], _I["cn"], _I["nup"], _I["ndown"], _I["first_ts"],
    _P["z_threshold"], _P["robust_threshold"], _P["lo"], _P["hi"], _P["max_rate"], _P["stuck_count"],
    _P["stuck_ms"], _P["silence_ms"], _P["shift_threshold"], _P["time_window_ms"], BLOCK.index("mean"),
    BLOCK.index("cmean"), BLOCK.index("ssqdm"), BLOCK.index("cssq"), BLOCK.index("sabs"), BLOCK.index("prev"),
    1, FLAG_ZSCORE, FLAG_THRESHOLD, FLAG_RATE, FLAG_STUCK, FLAG_ROBUST, FLAG_SHIFT, FLAG_LATE, ANOMALY_FLAGS,
    16, 8, int(1.0 / RVAR_ALPHA), int(1.0 / RCOV_ALPHA), int(1.0 / SMEAN_VAR_ALPHA), COUNTER_UPS,
    COUNTER_RATIO, CAL_LEVELS, CAL_N, CAL_PRIOR, SEASON_BUCKETS, DAY_MS, SEASON_MIN_MS,
)
if not cython.compiled:
    (
        NF, NI, NP, F_SHIFT, F_PREV, F_RPREV, F_EWM_MEAN, F_EWM_VAR, F_TSHIFT, F_RES, F_LEVEL, F_RMEAN,
        F_RVAR, F_RCOV, F_DPREV, F_CUP, F_CDOWN, F_CAL0, F_SM, F_SV, F_SARM, F_SMEAN, F_PROF0, F_RSM, F_RSV,
        I_POS, I_NFILL, I_NOBS, I_NSAME, I_LAST_TS, I_PREV_TS, I_RUN_TS, I_EWM_N, I_TNOBS, I_TN, I_CN, I_NUP,
        I_NDOWN, I_FIRST_TS, P_ZTHR, P_RTHR, P_LO, P_HI, P_MAX_RATE, P_STUCK_N, P_STUCK_MS, P_SILENCE_MS,
        P_STHR, P_TWIN, V_MEAN, V_CMEAN, V_SSQDM, V_CSSQ, V_SABS, V_PREV, C_NSAME, Z_FLAG, THRESHOLD_FLAG,
        RATE_FLAG, STUCK_FLAG, ROBUST_FLAG, SHIFT_FLAG, LATE_FLAG, ANOMALY, PF_FAR, PF_NEAR, RVAR_N, RCOV_N,
        SMEAN_N, CTR_UPS, CTR_RATIO, NCAL, CAL_NN, CAL_P, NBUCKET, DAY, SEASON_MIN,
    ) = _LAYOUT
if (
    NF, NI, NP, F_SHIFT, F_PREV, F_RPREV, F_EWM_MEAN, F_EWM_VAR, F_TSHIFT, F_RES, F_LEVEL, F_RMEAN, F_RVAR,
    F_RCOV, F_DPREV, F_CUP, F_CDOWN, F_CAL0, F_SM, F_SV, F_SARM, F_SMEAN, F_PROF0, F_RSM, F_RSV, I_POS,
    I_NFILL, I_NOBS, I_NSAME, I_LAST_TS, I_PREV_TS, I_RUN_TS, I_EWM_N, I_TNOBS, I_TN, I_CN, I_NUP, I_NDOWN,
    I_FIRST_TS, P_ZTHR, P_RTHR, P_LO, P_HI, P_MAX_RATE, P_STUCK_N, P_STUCK_MS, P_SILENCE_MS, P_STHR, P_TWIN,
    V_MEAN, V_CMEAN, V_SSQDM, V_CSSQ, V_SABS, V_PREV, C_NSAME, Z_FLAG, THRESHOLD_FLAG, RATE_FLAG, STUCK_FLAG,
    ROBUST_FLAG, SHIFT_FLAG, LATE_FLAG, ANOMALY, PF_FAR, PF_NEAR, RVAR_N, RCOV_N, SMEAN_N, CTR_UPS, CTR_RATIO,
    NCAL, CAL_NN, CAL_P, NBUCKET, DAY, SEASON_MIN,
) != _LAYOUT:
    raise ImportError("iotstream.ext.rolling was compiled with other constants than _common's")
_BLOCKS = [FLOAT_FIELDS[F_SHIFT : F_SHIFT + 7], FLOAT_FIELDS[F_TSHIFT : F_TSHIFT + 7]]
_COUNTERS = [INT_FIELDS[I_NOBS : I_NOBS + 2], INT_FIELDS[I_TNOBS : I_TNOBS + 2]]
if _BLOCKS != [BLOCK, ["t" + k for k in BLOCK]] or _COUNTERS != [["nobs", "nsame"], ["tnobs", "tnsame"]]:
    raise ImportError("iotstream.ext.rolling: the two Welford blocks of _common's fields differ in layout")
C_NEVER = cython.declare(cython.longlong, NEVER)

# Recompute the window from the ring buffer when the accumulated rounding error of ssqdm may exceed
# ~RECOMPUTE_RATIO * eps relative (pandas' InvCondTol idea), or when the mean drifted more than
# sqrt(DRIFT_RATIO) standard deviations from the shift K (the shifted values stop being small).
RECOMPUTE_RATIO = cython.declare(cython.double, 1e4)
DRIFT_RATIO = cython.declare(cython.double, 1e8)
# Below TINY_SSQDM (subnormal territory) or above HUGE_SSQDM (overflow territory) z is computed from the
# ring buffer with the deviations scaled by their maximum, so 1e-300-scale data still gets a true z.
TINY_SSQDM = cython.declare(cython.double, 1e-280)
HUGE_SSQDM = cython.declare(cython.double, 1e280)
DBL_MAX = cython.declare(cython.double, 1.7976931348623157e308)
# Consistency constants of the robust scale for normal data: sigma = 1.4826 MAD = 1.2533 mean|x - median|.
MAD_SCALE = cython.declare(cython.double, 1.4826)
MEANAD_SCALE = cython.declare(cython.double, 1.2533)
IDR_FLOOR = cython.declare(cython.double, ROBUST_IDR_SHARE / 2.5631)  # sigma = (q90 - q10) / 2.5631
LEVEL_TAU = cython.declare(cython.double, LEVEL_TAU_MS)
LEVEL_AMAX = cython.declare(cython.double, LEVEL_ALPHA_MAX)
RVAR_A = cython.declare(cython.double, RVAR_ALPHA)
RMEAN_TAU = cython.declare(cython.double, RMEAN_TAU_MS)
CLIP = cython.declare(cython.double, CLIP_SD)
ALLOW = cython.declare(cython.double, ALLOWANCE)
SD_SHARE = cython.declare(cython.double, WINDOW_SD_SHARE)
RHO_MAX_C = cython.declare(cython.double, RHO_MAX)
RCOV_A = cython.declare(cython.double, RCOV_ALPHA)
SMEAN_A = cython.declare(cython.double, SMEAN_ALPHA)
SMEAN_VAR_A = cython.declare(cython.double, SMEAN_VAR_ALPHA)
SMEAN_SD2 = cython.declare(cython.double, SMEAN_SD * SMEAN_SD)
CAL_GAM = cython.declare(cython.double, CAL_GAMMA)
CAL_L0 = cython.declare(cython.double, CAL_LEVEL0)
CAL_QMIN_C = cython.declare(cython.double, CAL_QMIN)
CAL_ALPHA = cython.declare(cython.double, 1.0 / CAL_N)
TIE = cython.declare(cython.double, TIE_WEIGHT)
LN2 = cython.declare(cython.double, math.log(2.0))
CAL_EMAX = cython.declare(cython.double, 1.7976931348623157e308 * CAL_LEVEL0)
LOG_QMIN = cython.declare(cython.double, math.log(CAL_QMIN))
SCORE_SCALE = cython.declare(cython.double, -1.0 / (math.log(10.0) * SCORE_DECADES))
INV_DAY = cython.declare(cython.double, 1.0 / DAY_MS)
INV_SMOOTH = cython.declare(cython.double, 1.0 / SMOOTH_TAU_MS)
INV_PROFILE = cython.declare(cython.double, 1.0 / PROFILE_TAU_MS)
INV_SVAR = cython.declare(cython.double, 1.0 / SVAR_TAU_MS)
SVAR_TAU = cython.declare(cython.double, SVAR_TAU_MS)
SEASON_AMAX = cython.declare(cython.double, SEASON_ALPHA_MAX)
DEPARTED = cython.declare(cython.double, SEASON_DEPARTED_SHARE)
SEASON_ZC = cython.declare(cython.double, SEASON_Z)

# ----------------------------------------------------------------------
# Rolling variance: Welford's method with Kahan-compensated mean and ssqdm,
# https://en.wikipedia.org/wiki/Algorithms_for_calculating_variance#Welford's_online_algorithm
# Each helper works on one block: floats v[o + V_*] and counters c[k] (values), c[k + C_NSAME] (run).


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def reset_var(v: cython.double[::1], o: cython.Py_ssize_t) -> cython.void:
    """Empty window: forget the sums."""
    v[o + V_MEAN] = 0.0
    v[o + V_CMEAN] = 0.0
    v[o + V_SSQDM] = 0.0
    v[o + V_CSSQ] = 0.0
    v[o + V_SABS] = 0.0


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def slide_var(val: cython.double, v: cython.double[::1], o: cython.Py_ssize_t, c: cython.longlong[::1],
              k: cython.Py_ssize_t, add: cython.bint) -> cython.void:
    """Add a value to the var calc (``add``) or remove one; NaN occupies a ring position elsewhere but is
    skipped here."""
    s: cython.double
    if val != val:
        return
    if add:
        if c[k] == 0:
            reset_var(v, o)
            v[o] = val
        c[k] += 1
        if val == v[o + V_PREV]:
            c[k + C_NSAME] += 1
        else:
            c[k + C_NSAME] = 1
        v[o + V_PREV] = val
    else:
        c[k] -= 1
        if c[k] == 0:
            reset_var(v, o)
            return
    y = val - v[o]
    d = y - (v[o + V_MEAN] - v[o + V_CMEAN])
    t = (d if add else -d) / c[k] - v[o + V_CMEAN]  # Kahan-compensated mean += +-d / n
    s = v[o + V_MEAN] + t
    v[o + V_CMEAN] = (s - v[o + V_MEAN]) - t
    v[o + V_MEAN] = s
    q = (d if add else -d) * (y - (v[o + V_MEAN] - v[o + V_CMEAN]))  # ... and ssqdm += q
    t = q - v[o + V_CSSQ]
    s = v[o + V_SSQDM] + t
    v[o + V_CSSQ] = (s - v[o + V_SSQDM]) - t
    v[o + V_SSQDM] = s
    v[o + V_SABS] += fabs(q)


@cython.cfunc
@cython.nogil
@cython.exceptval(check=False)
def recompute_var(v: cython.double[::1], o: cython.Py_ssize_t, c: cython.longlong[::1], k: cython.Py_ssize_t,
                  b: cython.double[::1], tr: cython.longlong[::1], bo: cython.Py_ssize_t,
                  start: cython.Py_ssize_t, count: cython.Py_ssize_t, window: cython.Py_ssize_t,
                  timed: cython.bint) -> cython.void:
    """Exact two-pass recomputation (new shift K = window mean), resets the error scale.

    Untimed it reads the whole ring in ring order (count window); timed, the ``count`` positions from
    ``start`` on, oldest first, skipping holes (time window)."""
    j: cython.Py_ssize_t
    i: cython.Py_ssize_t
    n: cython.Py_ssize_t = 0
    k0: cython.double = v[o + V_PREV]
    s1: cython.double = 0.0
    s2: cython.double = 0.0
    s3: cython.double = 0.0
    for i in range(start, start + count):
        j = i - window if i >= window else i
        x = b[bo + j]
        if (not timed or tr[bo + j] != C_NEVER) and x == x:
            s1 += x - k0
            n += 1
    if n == 0:
        reset_var(v, o)
        return
    kk = k0 + s1 / n
    for i in range(start, start + count):
        j = i - window if i >= window else i
        x = b[bo + j]
        if (not timed or tr[bo + j] != C_NEVER) and x == x:
            s2 += x - kk
    m = s2 / n
    for i in range(start, start + count):
        j = i - window if i >= window else i
        x = b[bo + j]
        if (not timed or tr[bo + j] != C_NEVER) and x == x:
            d = (x - kk) - m
            s3 += d * d
    v[o] = kk
    v[o + V_MEAN] = m
    v[o + V_CMEAN] = 0.0
    v[o + V_SSQDM] = s3
    v[o + V_CSSQ] = 0.0
    v[o + V_SABS] = s3


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def unstable_var(v: cython.double[::1], o: cython.Py_ssize_t, c: cython.longlong[::1],
                 k: cython.Py_ssize_t) -> cython.bint:
    """True when the running sums can no longer be trusted (also catches NaN after an overflow)."""
    ssq: cython.double = v[o + V_SSQDM]
    m: cython.double = v[o + V_MEAN]
    if c[k] < 2:
        return False
    return not (v[o + V_SABS] <= RECOMPUTE_RATIO * ssq) or not (m * m * c[k] <= DRIFT_RATIO * ssq)


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def calc_mean(v: cython.double[::1], o: cython.Py_ssize_t, c: cython.longlong[::1],
              k: cython.Py_ssize_t) -> cython.double:
    if c[k] == 0:
        return NAN
    if c[k + C_NSAME] >= c[k]:
        return v[o + V_PREV]
    return v[o] + (v[o + V_MEAN] - v[o + V_CMEAN])


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def calc_var(v: cython.double[::1], o: cython.Py_ssize_t, c: cython.longlong[::1],
             k: cython.Py_ssize_t) -> cython.double:
    """Sample variance (ddof=1); NaN below 2 real values, exactly 0 for a constant window."""
    if c[k] < 2:
        return NAN
    if c[k + C_NSAME] >= c[k]:
        return 0.0
    if v[o + V_SSQDM] <= 0.0:
        return 0.0
    return v[o + V_SSQDM] / (c[k] - 1)


# ----------------------------------------------------------------------
# z-score


@cython.cfunc
@cython.nogil
@cython.exceptval(check=False)
def scaled_z(dev: cython.double, f: cython.double[::1], fo: cython.Py_ssize_t, nobs: cython.longlong,
             b: cython.double[::1], bo: cython.Py_ssize_t, window: cython.Py_ssize_t) -> cython.double:
    """z from the ring buffer with deviations divided by their maximum (no under- or overflow)."""
    j: cython.Py_ssize_t
    kk: cython.double = f[fo + F_SHIFT]
    m: cython.double = f[fo + F_SHIFT + V_MEAN] - f[fo + F_SHIFT + V_CMEAN]
    s: cython.double = 0.0
    acc: cython.double = 0.0
    for j in range(window):
        x = b[bo + j]
        if x == x:
            d = fabs((x - kk) - m)
            if d > s:
                s = d
    if s == 0.0:
        if dev == 0.0:
            return 0.0
        return INF if dev > 0.0 else -INF
    if not (s <= DBL_MAX):
        return NAN
    for j in range(window):
        x = b[bo + j]
        if x == x:
            d = ((x - kk) - m) / s
            acc += d * d
    return (dev / s) / sqrt(acc / (nobs - 1))


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def calc_z(val: cython.double, f: cython.double[::1], fo: cython.Py_ssize_t, g: cython.longlong[::1],
           go: cython.Py_ssize_t, b: cython.double[::1], bo: cython.Py_ssize_t, window: cython.Py_ssize_t,
           minp: cython.Py_ssize_t, sd: cython.double) -> cython.double:
    """z of ``val`` against the window before it is added, its sd floored at the slot's resolution;
    NaN below ``minp`` real values. ``sd`` is the window's sd, ``sqrt(calc_var)`` (detect needs it too).

    A constant window gives 0 for the same value and (val - c) / resolution for any other, +-inf while
    the slot has never moved (no resolution learned: a stuck signal that moves).
    """
    z: cython.double
    res: cython.double = f[fo + F_RES]
    nobs: cython.longlong = g[go + I_NOBS]
    if nobs < minp or val != val:
        return NAN
    if g[go + I_NSAME] >= nobs:
        c = f[fo + F_PREV]
        if val == c:
            return 0.0
        if res > 0.0:
            return (val - c) / res
        return INF if val > c else -INF
    dev = (val - f[fo + F_SHIFT]) - (f[fo + F_SHIFT + V_MEAN] - f[fo + F_SHIFT + V_CMEAN])
    ssq = f[fo + F_SHIFT + V_SSQDM]
    if TINY_SSQDM <= ssq <= HUGE_SSQDM:
        z = dev / sd  # calc_var is ssq / (nobs - 1) here: nobs >= minp >= 2, not constant, ssq > 0
    else:
        z = scaled_z(dev, f, fo, nobs, b, bo, window)
    if res > 0.0:
        zf = dev / res
        if fabs(zf) < fabs(z):
            return zf
    return z


# ----------------------------------------------------------------------
# Sorted window (s[so:so + n], NaN after): min, max, median, MAD


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def bisect(s: cython.double[::1], so: cython.Py_ssize_t, n: cython.Py_ssize_t, x: cython.double,
           right: cython.bint) -> cython.Py_ssize_t:
    """First index whose value is >= x (``right``: > x), like ``bisect.bisect_left`` / ``_right``,
    branch-free: the loop runs ceil(log2 n) times whatever the data, and the compiler turns the step into
    a conditional move."""
    base: cython.Py_ssize_t = so
    half: cython.Py_ssize_t
    if not cython.compiled:  # the same index from the standard library's C loop: the reference stays fast
        return (bisect_right if right else bisect_left)(s, x, so, so + n) - so
    if n == 0:
        return 0
    if right:
        while n > 1:
            half = n >> 1
            base = base + half if s[base + half] <= x else base
            n -= half
        return base - so + (s[base] <= x)
    while n > 1:
        half = n >> 1
        base = base + half if s[base + half] < x else base
        n -= half
    return base - so + (s[base] < x)


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def move(s: cython.double[::1], dst: cython.Py_ssize_t, src: cython.Py_ssize_t,
         n: cython.Py_ssize_t) -> cython.void:
    """``s[dst:dst + n] = s[src:src + n]`` (the ranges may overlap)."""
    if cython.compiled:
        memmove(cython.address(s[dst]), cython.address(s[src]), n * cython.sizeof(cython.double))
    else:
        s[dst : dst + n] = s[src : src + n]


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def remove_sorted(val: cython.double, s: cython.double[::1], so: cython.Py_ssize_t,
                  n: cython.Py_ssize_t) -> cython.void:
    """Remove one copy of ``val`` from the first ``n`` entries (the slot held it)."""
    i: cython.Py_ssize_t = so + bisect(s, so, n, val, False)
    move(s, i, i + 1, so + n - 1 - i)
    s[so + n - 1] = NAN


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def insert_sorted(val: cython.double, s: cython.double[::1], so: cython.Py_ssize_t,
                  n: cython.Py_ssize_t) -> cython.void:
    i: cython.Py_ssize_t = so + bisect(s, so, n, val, True)
    move(s, i + 1, i, so + n - i)
    s[i] = val


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def replace_sorted(old: cython.double, val: cython.double, s: cython.double[::1], so: cython.Py_ssize_t,
                   n: cython.Py_ssize_t) -> cython.void:
    """``remove_sorted(old)`` then ``insert_sorted(val)`` in one pass over the first ``n`` entries.

    The result is the same array, but only the entries between the two positions move (a window slid
    by one reading usually moves a few, not half of them twice). With old <= val, s[i] = old is counted
    by the right bisection, so val lands at j >= i once s[i] is gone and s[i+1..j] move left; otherwise
    val lands at j <= i and s[j..i-1] move right. Written without a branch on which of the two it is.

    Compiled, the two bisections run in one loop (they take the same number of steps, ``bisect``'s): two
    independent chains of loads overlap instead of following each other."""
    i: cython.Py_ssize_t
    j: cython.Py_ssize_t
    m: cython.Py_ssize_t = n
    half: cython.Py_ssize_t
    up: cython.Py_ssize_t = old <= val
    if cython.compiled:
        i = so
        j = so
        while m > 1:
            half = m >> 1
            i = i + half if s[i + half] < old else i
            j = j + half if s[j + half] <= val else j
            m -= half
        i = i - so + (s[i] < old)
        j = j - so + (s[j] <= val) - up
    else:
        i = bisect(s, so, n, old, False)
        j = bisect(s, so, n, val, True) - up
    lo: cython.Py_ssize_t = i if up else j
    ln: cython.Py_ssize_t = j - i if up else i - j
    move(s, so + lo + 1 - up, so + lo + up, ln)
    s[so + j] = val


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def calc_median(s: cython.double[::1], so: cython.Py_ssize_t, n: cython.Py_ssize_t) -> cython.double:
    if n == 0:
        return NAN
    if n % 2:
        return s[so + n // 2]
    return 0.5 * s[so + n // 2 - 1] + 0.5 * s[so + n // 2]


@cython.cfunc
@cython.nogil
@cython.exceptval(check=False)
def calc_mad(s: cython.double[::1], so: cython.Py_ssize_t, n: cython.Py_ssize_t,
             med: cython.double) -> cython.double:
    """Median absolute deviation from the median (unscaled).

    The deviations left of the median, read leftwards (A), and right of it, read rightwards (B), are two
    ascending lists: binary-search how many of the k + 1 smallest come from A (k = (n - 1) // 2); the
    k-th is the larger of the two last taken, and for even n the (k+1)-th the smaller remaining head."""
    p: cython.Py_ssize_t = so + n // 2  # s[p - 1 - a] = med - A[a], s[p + b] = med + B[b]
    nb: cython.Py_ssize_t = n - n // 2
    k: cython.Py_ssize_t
    lo: cython.Py_ssize_t
    hi: cython.Py_ssize_t
    bb: cython.Py_ssize_t
    cnt: cython.Py_ssize_t
    half: cython.Py_ssize_t
    t: cython.Py_ssize_t
    d0: cython.double = 0.0
    d1: cython.double = INF
    if n == 0:
        return NAN
    k = (n - 1) // 2
    lo = k + 1 - nb if k + 1 > nb else 0
    hi = k + 1 if k + 1 < n // 2 else n // 2
    # lower bound of the first a in [lo, hi) where B[k - a] > A[a] stops holding (it holds, then not)
    cnt = hi - lo
    while cnt > 0:
        half = cnt >> 1
        bb = k - lo - half  # >= 0 here, since lo + half < hi <= k + 1
        t = s[p + bb] - med > med - s[p - 1 - lo - half]  # 0 or 1: arithmetic, so no branch to mispredict
        lo += t * (half + 1)
        cnt = half + t * (cnt - 2 * half - 1)
    bb = k + 1 - lo
    if lo > 0:
        d0 = med - s[p - lo]
    if bb > 0 and s[p + bb - 1] - med > d0:
        d0 = s[p + bb - 1] - med
    if n % 2:
        return d0
    # the split (lo from A, bb from B) is valid, so everything left in either list is >= d0
    if lo < n // 2:
        d1 = med - s[p - 1 - lo]
    if bb < nb and s[p + bb] - med < d1:
        d1 = s[p + bb] - med
    return 0.5 * d0 + 0.5 * d1


@cython.cfunc
@cython.nogil
@cython.exceptval(check=False)
def calc_rz(val: cython.double, s: cython.double[::1], so: cython.Py_ssize_t, n: cython.Py_ssize_t,
            minp: cython.Py_ssize_t, res: cython.double) -> cython.double:
    """Robust z of ``val`` against the window before it: (val - median) / (1.4826 MAD).

    When more than half the window is one value (MAD = 0) the scale falls back to 1.2533 times the mean
    absolute deviation from the median; either is floored at ROBUST_IDR_SHARE of the interdecile range's
    sd (a key that jitters around two levels has a tiny MAD: more than half the window sits in one tight
    cluster, and the other level, common, would be tens of MADs away) and at the resolution ``res``; a
    constant window of a slot that never moved gives 0 or +-inf like the plain z.
    """
    acc: cython.double = 0.0
    j: cython.Py_ssize_t
    if n < minp or val != val:
        return NAN
    med = calc_median(s, so, n)
    dev = val - med
    mad = calc_mad(s, so, n, med)
    if mad > 0.0:
        mad = MAD_SCALE * mad
    else:
        for j in range(n):
            acc += fabs(s[so + j] - med)
        mad = MEANAD_SCALE * (acc / n)
    idr = IDR_FLOOR * (s[so + n - 1 - n // 10] - s[so + n // 10])
    if mad < idr:
        mad = idr
    if mad < res:
        mad = res
    if mad > 0.0:
        return dev / mad
    if dev == 0.0:
        return 0.0
    return INF if dev > 0.0 else -INF


# ----------------------------------------------------------------------
# EWMA and EW variance (West 1979 incremental form)


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def add_ewm(val: cython.double, f: cython.double[::1], fo: cython.Py_ssize_t, g: cython.longlong[::1],
            go: cython.Py_ssize_t, alpha: cython.double, oma: cython.double) -> cython.void:
    if val != val:
        return
    if g[go + I_EWM_N] == 0:
        f[fo + F_EWM_MEAN] = val
        f[fo + F_EWM_VAR] = 0.0
    else:
        diff = val - f[fo + F_EWM_MEAN]
        incr = alpha * diff
        f[fo + F_EWM_MEAN] = f[fo + F_EWM_MEAN] + incr
        f[fo + F_EWM_VAR] = oma * (f[fo + F_EWM_VAR] + diff * incr)
    g[go + I_EWM_N] += 1


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

if not cython.compiled:  # compiled, C arrays declared in the .pxd
    CAL_LEV = [0.0] * CAL_LEVELS
    CAL_INV = [0.0] * CAL_LEVELS
for _k in range(CAL_LEVELS):  # the levels, and 1 / (level - the level below it) (0 below the first)
    CAL_LEV[_k] = CAL_LEVEL0 * 2.0**_k
    CAL_INV[_k] = 1.0 / (CAL_LEVEL0 * 2.0 ** (_k - 1) if _k else CAL_LEVEL0)


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def tail_log(e: cython.double, q: cython.double[::1], qo: cython.Py_ssize_t) -> cython.double:
    """Natural log of the share of the key's readings with evidence above ``e`` (q[qo:qo + CAL_LEVELS],
    before this one)."""
    qp: cython.double = 1.0
    qpp: cython.double = 1.0
    lev: cython.double = 0.0
    gam: cython.double = CAL_GAM
    k: cython.Py_ssize_t
    if not (e > 0.0):
        return 0.0
    for k in range(NCAL):
        if q[qo + k] < CAL_QMIN_C:
            break
        if e <= CAL_LEV[k]:  # between two levels (or 0 and the first): log of the share linear in e
            lp = log(qp) if k > 0 else 0.0
            return lp + (log(q[qo + k]) - lp) * ((e - lev) * CAL_INV[k]) - TIE * e
        qpp = qp
        qp = q[qo + k]
        lev = CAL_LEV[k]
    if lev == 0.0:  # not even the first level is reliable: anchor the tail at CAL_QMIN there
        lev = CAL_L0
        if e <= lev:
            return LOG_QMIN * (e / lev) - TIE * e
        lp = LOG_QMIN
    else:
        lp = log(qp)
        if lev > CAL_L0:
            gam = (log(qpp) - lp) / LN2
            if gam < CAL_GAM:
                gam = CAL_GAM
        lev = lev * 2.0  # up to the next level the tail is at most the last reliable share: kept flat
        if e <= lev:
            return lp - TIE * e
    if e > CAL_EMAX:  # e / lev stays finite: infinite evidence has a finite, very small tail
        e = CAL_EMAX
    return lp - TIE * lev - gam * log(e / lev)


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def learn_tail(e: cython.double, q: cython.double[::1], qo: cython.Py_ssize_t,
               n: cython.longlong) -> cython.void:
    """Move each level's share towards whether ``e`` exceeded it (``n``: real readings of the key)."""
    a: cython.double = 1.0 / (n + CAL_P) if n + CAL_P < CAL_NN else CAL_ALPHA
    k: cython.Py_ssize_t
    for k in range(NCAL):  # no branch: the compiler can do the eight at once
        q[qo + k] = q[qo + k] + a * ((1.0 if e > CAL_LEV[k] else 0.0) - q[qo + k])


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def young_tail(e: cython.double, thr: cython.double, n: cython.longlong) -> cython.double:
    """Log of a young key's Gaussian factor for z-score evidence ``e`` beyond threshold ``thr`` (_common)."""
    if e > CAL_LEV[NCAL - 1]:
        e = CAL_LEV[NCAL - 1]
    z = e * thr
    return -(1.0 - n * CAL_ALPHA) * 0.5 * (z * z - thr * thr)


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def calc_score(lt: cython.double) -> cython.double:
    """u / (1 + u), u = -log10(tail) / SCORE_DECADES: 0 for nothing unusual, below 1 for any tail."""
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


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def learn_step(val: cython.double, f: cython.double[::1], fo: cython.Py_ssize_t, g: cython.longlong[::1],
               go: cython.Py_ssize_t) -> cython.void:
    """Count the step from the previous real reading and learn the resolution from it."""
    d: cython.double = val - f[fo + F_PREV]
    if d > 0.0:
        g[go + I_NUP] += 1
    elif d < 0.0:
        g[go + I_NDOWN] += 1
        d = -d
    if d > 0.0 and (f[fo + F_RES] == 0.0 or d < f[fo + F_RES]):
        f[fo + F_RES] = d


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def is_counter(g: cython.longlong[::1], go: cython.Py_ssize_t) -> cython.bint:
    return g[go + I_NUP] >= CTR_UPS and g[go + I_NDOWN] * CTR_RATIO <= g[go + I_NUP]


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


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def change_floor(sd: cython.double, res: cython.double) -> cython.double:
    """Smallest residual sd: the resolution ``res``, and WINDOW_SD_SHARE of the count window's sd ``sd``
    (a signal that wanders smoothly with little noise is judged against its wandering, not its noise)."""
    lo: cython.double = res
    if sd == sd:
        sd = SD_SHARE * sd
        if sd > lo:
            lo = sd
    return lo


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def change(val: cython.double, ts: cython.longlong, f: cython.double[::1], fo: cython.Py_ssize_t,
           g: cython.longlong[::1], go: cython.Py_ssize_t, h: cython.double, warm: cython.Py_ssize_t,
           sd_min: cython.double) -> cython.double:
    """Feed one real reading; returns the CUSUM evidence (largest sum / h, > 1 when it fires)."""
    u: cython.double
    x: cython.double = 0.0
    n: cython.longlong = g[go + I_CN]
    g[go + I_CN] = n + 1
    if n == 0:
        f[fo + F_LEVEL] = val
        f[fo + F_RMEAN] = 0.0
        f[fo + F_RVAR] = 0.0
        f[fo + F_RCOV] = 0.0
        f[fo + F_DPREV] = 0.0
        f[fo + F_CUP] = 0.0
        f[fo + F_CDOWN] = 0.0
        f[fo + F_RSM] = 0.0
        f[fo + F_RSV] = 0.0
        return 0.0
    d = (val - f[fo + F_LEVEL]) - f[fo + F_RMEAN]
    sd = sqrt(f[fo + F_RVAR])
    if sd > 0.0:
        # residuals of real sensors are autocorrelated: scale to the sd of their run averages (AR(1))
        rho = f[fo + F_RCOV] / f[fo + F_RVAR]
        if not (rho > 0.0):
            rho = 0.0
        elif rho > RHO_MAX_C:
            rho = RHO_MAX_C
        sd = sd * sqrt((1.0 + rho) / (1.0 - rho))
    if sd < sd_min:
        sd = sd_min
    if sd > 0.0:
        c = CLIP * sd
        if d > c:
            d = c
        elif d < -c:
            d = -c
        f[fo + F_RSM] = f[fo + F_RSM] + SMEAN_A * (d - f[fo + F_RSM])
        if n >= warm and h < INF:
            u = d / sd
            f[fo + F_CUP] = f[fo + F_CUP] + u - ALLOW
            if not (f[fo + F_CUP] > 0.0):
                f[fo + F_CUP] = 0.0
            f[fo + F_CDOWN] = f[fo + F_CDOWN] - u - ALLOW
            if not (f[fo + F_CDOWN] > 0.0):
                f[fo + F_CDOWN] = 0.0
            x = (f[fo + F_CUP] if f[fo + F_CUP] > f[fo + F_CDOWN] else f[fo + F_CDOWN]) / h
            if x > 1.0 and f[fo + F_RSM] * f[fo + F_RSM] <= SMEAN_SD2 * f[fo + F_RSV]:
                x = 1.0  # the short mean is within the key's usual range: wander, not a change
            elif x > 1.0:  # fired: re-armed at the new level
                f[fo + F_LEVEL] = val
                f[fo + F_RMEAN] = 0.0
                f[fo + F_DPREV] = 0.0
                f[fo + F_CUP] = 0.0
                f[fo + F_CDOWN] = 0.0
                f[fo + F_RSM] = 0.0
                return x
    a = RVAR_A if n >= RVAR_N else 1.0 / n
    f[fo + F_RVAR] = f[fo + F_RVAR] + a * (d * d - f[fo + F_RVAR])
    if f[fo + F_CUP] == 0.0 and f[fo + F_CDOWN] == 0.0:  # learnt only while no change builds up
        a = RCOV_A if n >= RCOV_N else 1.0 / n
        f[fo + F_RCOV] = f[fo + F_RCOV] + a * (d * f[fo + F_DPREV] - f[fo + F_RCOV])
    if 2.0 * f[fo + F_CUP] < h and 2.0 * f[fo + F_CDOWN] < h:  # learnt only while no change is near reporting
        a = SMEAN_VAR_A if n >= SMEAN_N else 1.0 / n
        f[fo + F_RSV] = f[fo + F_RSV] + a * (f[fo + F_RSM] * f[fo + F_RSM] - f[fo + F_RSV])
    f[fo + F_DPREV] = d
    if ts > g[go + I_LAST_TS]:  # level and residual mean move with time; a late or same-time one does not
        a = -expm1(-(ts - g[go + I_LAST_TS]) / LEVEL_TAU)
        if a > LEVEL_AMAX:
            a = LEVEL_AMAX
        f[fo + F_LEVEL] = f[fo + F_LEVEL] + a * (f[fo + F_RMEAN] + d)
        a = -expm1(-(ts - g[go + I_LAST_TS]) / RMEAN_TAU) if n >= RVAR_N else 1.0 / n
        f[fo + F_RMEAN] = f[fo + F_RMEAN] + a * d
    return x


# ----------------------------------------------------------------------
# Time of day
#
# The change detector follows a daily cycle by its time constants, so it cannot tell a night that stays
# as warm as noon, or a drift as slow as the cycle, from the cycle itself. Per key a profile of the level
# over the UTC day (SEASON_BUCKETS values, one per 2 hours, linearly interpolated between their centres)
# is learnt by least mean squares with a time constant of PROFILE_TAU_MS of in-bucket time (about a day;
# the first day faster, as a running mean). The reading's residual from the profile is smoothed
# (SMOOTH_TAU_MS); its departure from its own slow mean (a trend the profile lags behind is none) is
# compared with its typical size (sd; mean and sd over SVAR_TAU_MS, learnt from the second day on and
# only while no departure builds up): above SEASON_Z times it the reading is flagged as a change
# (FLAG_SHIFT), once, and the comparison re-arms below half of it. It speaks only once the key spans
# SEASON_MIN_MS (two days), so short-lived keys are unaffected; while a departure lasts the profile learns
# SEASON_DEPARTED_SHARE as fast, so a warm night is not learnt as normal by morning, while a lasting
# change is, over days.


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def seasonal(val: cython.double, ts: cython.longlong, f: cython.double[::1], fo: cython.Py_ssize_t,
             g: cython.longlong[::1], go: cython.Py_ssize_t) -> cython.double:
    """Feed one in-order real reading; returns the time-of-day evidence (> 1 above SEASON_Z)."""
    dt: cython.longlong
    age: cython.longlong
    b0: cython.Py_ssize_t
    b1: cython.Py_ssize_t
    k: cython.Py_ssize_t
    a: cython.double
    x: cython.double = 0.0
    if g[go + I_FIRST_TS] == C_NEVER:
        g[go + I_FIRST_TS] = ts
        for k in range(NBUCKET):
            f[fo + F_PROF0 + k] = val
        return 0.0
    dt = ts - g[go + I_LAST_TS]
    age = ts - g[go + I_FIRST_TS]
    pos = ts * INV_DAY  # days since the epoch; its fraction is the time of day (no integer division)
    pos = (pos - floor(pos)) * NBUCKET - 0.5
    if pos < 0.0:
        pos += NBUCKET
    b0 = int(pos)
    w = pos - b0
    if b0 >= NBUCKET:  # just below midnight's half-hour, pos rounds up to a whole day
        b0 = b0 - NBUCKET
    b1 = b0 + 1 if b0 + 1 < NBUCKET else 0
    b0 += fo + F_PROF0
    b1 += fo + F_PROF0
    r = val - (f[b0] + w * (f[b1] - f[b0]))
    a = dt * INV_SMOOTH
    if a > SEASON_AMAX:
        a = SEASON_AMAX
    f[fo + F_SM] = f[fo + F_SM] + a * (r - f[fo + F_SM])
    d = f[fo + F_SM] - f[fo + F_SMEAN]
    if age >= SEASON_MIN:
        sd = sqrt(f[fo + F_SV])
        if sd < f[fo + F_RES]:
            sd = f[fo + F_RES]
        if sd > 0.0:
            x = fabs(d) / (sd * SEASON_ZC)
    a = dt * INV_PROFILE if age >= DAY else float(dt * NBUCKET) / age  # float(): C's / on integers truncates
    if x >= 0.5:
        a = a * DEPARTED
    if a > SEASON_AMAX:
        a = SEASON_AMAX
    f[b0] = f[b0] + a * (1.0 - w) * r
    f[b1] = f[b1] + a * w * r
    if x < 0.5 and age > DAY:
        a = dt * INV_SVAR if age - DAY >= SVAR_TAU else float(dt) / (age - DAY)
        if a > SEASON_AMAX:
            a = SEASON_AMAX
        f[fo + F_SMEAN] = f[fo + F_SMEAN] + a * d
        f[fo + F_SV] = f[fo + F_SV] + a * (d * d - f[fo + F_SV])
    return x


# ----------------------------------------------------------------------
# One reading


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def step(val: cython.double, ts: cython.longlong, f: cython.double[::1], fo: cython.Py_ssize_t,
         g: cython.longlong[::1], go: cython.Py_ssize_t, b: cython.double[::1], srt: cython.double[::1],
         tr: cython.longlong[::1], bo: cython.Py_ssize_t, twin: cython.double, window: cython.Py_ssize_t,
         alpha: cython.double, oma: cython.double) -> cython.void:
    """Slide the slot's count window (and time window) by one reading and update the running state."""
    pos: cython.Py_ssize_t = g[go + I_POS]
    j: cython.Py_ssize_t
    horizon: cython.longlong
    inserted: cython.bint = False
    if g[go + I_NFILL] == window:
        old = b[bo + pos]
        if g[go + I_TN] == window:
            if tr[bo + pos] != C_NEVER:
                slide_var(old, f, fo + F_TSHIFT, g, go + I_TNOBS, False)
            g[go + I_TN] -= 1
        if old == old:
            if val == val:
                replace_sorted(old, val, srt, bo, g[go + I_NOBS])
                inserted = True
            else:
                remove_sorted(old, srt, bo, g[go + I_NOBS])
        slide_var(old, f, fo + F_SHIFT, g, go + I_NOBS, False)
    else:
        g[go + I_NFILL] += 1
    b[bo + pos] = val
    g[go + I_POS] += 1
    if g[go + I_POS] == window:
        g[go + I_POS] = 0
    if val == val and not inserted:
        insert_sorted(val, srt, bo, g[go + I_NOBS])
    slide_var(val, f, fo + F_SHIFT, g, go + I_NOBS, True)
    if unstable_var(f, fo + F_SHIFT, g, go + I_NOBS):
        recompute_var(f, fo + F_SHIFT, g, go + I_NOBS, b, tr, bo, 0, window, window, False)
    add_ewm(val, f, fo, g, go, alpha, oma)
    if val == val and g[go + I_NSAME] == 1:
        # a new run starts on the slot's clock: a late reading does not wind the stuck timer back
        g[go + I_RUN_TS] = ts if ts > g[go + I_LAST_TS] else g[go + I_LAST_TS]
    if twin > 0.0:
        # the time window: in-order real readings only (a late one is a hole), expired from the oldest end
        if val == val and ts >= g[go + I_LAST_TS]:
            tr[bo + pos] = ts
            slide_var(val, f, fo + F_TSHIFT, g, go + I_TNOBS, True)
        else:
            tr[bo + pos] = C_NEVER
        g[go + I_TN] += 1
        horizon = int((ts if ts > g[go + I_LAST_TS] else g[go + I_LAST_TS]) - twin)
        while g[go + I_TN] > 0:
            j = g[go + I_POS] - g[go + I_TN]
            if j < 0:
                j += window
            if tr[bo + j] != C_NEVER and tr[bo + j] > horizon:
                break
            if tr[bo + j] != C_NEVER:
                slide_var(b[bo + j], f, fo + F_TSHIFT, g, go + I_TNOBS, False)
            g[go + I_TN] -= 1
        if unstable_var(f, fo + F_TSHIFT, g, go + I_TNOBS):
            j = g[go + I_POS] - g[go + I_TN]
            if j < 0:
                j += window
            recompute_var(f, fo + F_TSHIFT, g, go + I_TNOBS, b, tr, bo, j, g[go + I_TN], window, True)
    elif g[go + I_TN] > 0:
        reset_var(f, fo + F_TSHIFT)
        g[go + I_TNOBS] = 0
        g[go + I_TN] = 0
    if ts > g[go + I_LAST_TS]:
        g[go + I_LAST_TS] = ts


# Each detector below gives its evidence in threshold units (1 at its threshold); detect() keeps the
# largest, which the calibrated score ranks, and the flag of the detector it came from.


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def rate_of_change(val: cython.double, ts: cython.longlong, f: cython.double[::1], fo: cython.Py_ssize_t,
                   g: cython.longlong[::1], go: cython.Py_ssize_t, on: cython.bint) -> cython.double:
    """Change per second from the last in-order real reading (NaN when off, when there is none or no time
    passed), then remember this one. Only for in-order real readings."""
    rate: cython.double = NAN
    if on and g[go + I_PREV_TS] != C_NEVER and ts > g[go + I_PREV_TS]:
        rate = (val - f[fo + F_RPREV]) * 1000.0 / (ts - g[go + I_PREV_TS])
    f[fo + F_RPREV] = val
    g[go + I_PREV_TS] = ts
    return rate


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def limit_excess(val: cython.double, lo: cython.double, hi: cython.double) -> cython.double:
    """Evidence of a value outside the static [lo, hi]: 1 + excess / span (span |bound| for a one-sided
    limit, 1 for lo == hi); 0 inside."""
    if not (val < lo or val > hi):
        return 0.0
    if val > hi:
        ex = val - hi
        bound = hi
    else:
        ex = lo - val
        bound = lo
    span = hi - lo
    if not (span < INF):
        span = fabs(bound)
    if span == 0.0:
        span = 1.0
    return 1.0 + ex / span


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def stuck_run(ts: cython.longlong, g: cython.longlong[::1], go: cython.Py_ssize_t, p: cython.double[::1],
              po: cython.Py_ssize_t) -> cython.double:
    """Evidence of the run of identical readings: run / stuck_count, or its duration / stuck_ms once the
    run reached it (the larger); 0 below both."""
    x: cython.double = 0.0
    run: cython.longlong = g[go + I_NSAME]
    if p[po + P_STUCK_N] > 0.0 and run >= p[po + P_STUCK_N]:
        x = run / p[po + P_STUCK_N]
    if (p[po + P_STUCK_MS] > 0.0 and run >= 2 and g[go + I_RUN_TS] != C_NEVER
            and ts - g[go + I_RUN_TS] >= p[po + P_STUCK_MS]):
        if (ts - g[go + I_RUN_TS]) / p[po + P_STUCK_MS] > x:
            x = (ts - g[go + I_RUN_TS]) / p[po + P_STUCK_MS]
    return x


@cython.cfunc
@cython.inline
@cython.nogil
@cython.exceptval(check=False)
def detect(val: cython.double, ts: cython.longlong, f: cython.double[::1], fo: cython.Py_ssize_t,
           g: cython.longlong[::1], go: cython.Py_ssize_t, b: cython.double[::1], srt: cython.double[::1],
           tr: cython.longlong[::1], bo: cython.Py_ssize_t, p: cython.double[::1], po: cython.Py_ssize_t,
           window: cython.Py_ssize_t, minp: cython.Py_ssize_t, alpha: cython.double, oma: cython.double,
           z_out: cython.double[::1], score_out: cython.double[::1], i: cython.Py_ssize_t) -> cython.int:
    """Score one reading against its slot's state, then add it; z and the score go to ``z_out[i]`` and
    ``score_out[i]``. Returns the flags plus 256 times the flag of the detector with the largest evidence
    among those that fired (0 when none did)."""
    flags: cython.int = 0
    dom: cython.int = 0
    z: cython.double = NAN
    sd: cython.double = NAN  # the count window's sd (not for a counter)
    rz: cython.double  # robust z, then rate of change
    e: cython.double = 0.0
    counter: cython.bint = is_counter(g, go)
    real: cython.bint = val == val
    if not counter:
        sd = sqrt(calc_var(f, fo + F_SHIFT, g, go + I_NOBS))  # the window before the reading, used twice
        z = calc_z(val, f, fo, g, go, b, bo, window, minp, sd)
        x = fabs(z) / p[po + P_ZTHR]
        if x > e:
            e = x
            dom = Z_FLAG
        if fabs(z) > p[po + P_ZTHR]:
            flags |= Z_FLAG
        if p[po + P_RTHR] < INF:
            rz = calc_rz(val, srt, bo, g[go + I_NOBS], minp, f[fo + F_RES])
            x = fabs(rz) / p[po + P_RTHR]
            if x > e:
                e = x
                dom = ROBUST_FLAG
            if fabs(rz) > p[po + P_RTHR]:
                flags |= ROBUST_FLAG
    if g[go + I_LAST_TS] != C_NEVER and ts < g[go + I_LAST_TS]:
        # late: scored and kept in the count window, but no rate is measured from or to it
        flags |= LATE_FLAG
    elif real:
        rz = rate_of_change(val, ts, f, fo, g, go, p[po + P_MAX_RATE] < INF)
        if rz == rz:
            x = fabs(rz) / p[po + P_MAX_RATE]
            if x > e:
                e = x
                dom = RATE_FLAG
            if fabs(rz) > p[po + P_MAX_RATE]:
                flags |= RATE_FLAG
    if real:
        x = limit_excess(val, p[po + P_LO], p[po + P_HI])
        if x > 0.0:
            if x > e:
                e = x
                dom = THRESHOLD_FLAG
            flags |= THRESHOLD_FLAG
        x = 0.0
        if not counter:
            x = change(val, ts, f, fo, g, go, p[po + P_STHR], window, change_floor(sd, f[fo + F_RES]))
        elif val >= f[fo + F_PREV]:  # a counter's increments, not its values; a reset is no evidence
            if g[go + I_NUP] == CTR_UPS:
                g[go + I_CN] = 0  # just found to be a counter: the detector starts afresh on increments
            x = change(val - f[fo + F_PREV], ts, f, fo, g, go, p[po + P_STHR], window, f[fo + F_RES])
        if x > e:
            e = x
            dom = SHIFT_FLAG
        if x > 1.0:
            flags |= SHIFT_FLAG
        if not counter and ts > g[go + I_LAST_TS]:
            x = seasonal(val, ts, f, fo, g, go)
            if x > e:
                e = x
                dom = SHIFT_FLAG
            if x > 1.0 and f[fo + F_SARM] > 0.0:
                flags |= SHIFT_FLAG
                f[fo + F_SARM] = 0.0
            elif x < 0.5:
                f[fo + F_SARM] = 1.0
        if f[fo + F_PREV] == f[fo + F_PREV]:
            learn_step(val, f, fo, g, go)  # after scoring: the floor comes from earlier steps only
    step(val, ts, f, fo, g, go, b, srt, tr, bo, p[po + P_TWIN], window, alpha, oma)
    if real:
        x = stuck_run(ts, g, go, p, po)
        if x > 0.0:
            flags |= STUCK_FLAG
            if x > e:
                e = x
                dom = STUCK_FLAG
    if not (dom & flags):
        dom = flags & ANOMALY & -(flags & ANOMALY)  # lowest flag that fired (ties at the threshold)
    x = tail_log(e, f, fo + F_CAL0)  # scored against the key's past, then learnt
    if e > 1.0 and g[go + I_EWM_N] < CAL_NN and (dom == Z_FLAG or dom == ROBUST_FLAG):
        x = x + young_tail(e, p[po + P_ZTHR] if dom == Z_FLAG else p[po + P_RTHR], g[go + I_EWM_N])
    if real:
        learn_tail(e, f, fo + F_CAL0, g[go + I_EWM_N])
    z_out[i] = z
    score_out[i] = calc_score(x)
    return flags | dom << 8


@cython.cfunc
@cython.nogil
@cython.exceptval(check=False)
def run_batch(s_v: cython.const[cython.longlong][::1], t_v: cython.const[cython.longlong][::1],
              x_v: cython.const[cython.double][::1], fs: cython.double[::1], gs: cython.longlong[::1],
              ps: cython.double[::1], bs: cython.double[::1], ss: cython.double[::1],
              tr: cython.longlong[::1],
              has_t: cython.bint, window: cython.Py_ssize_t, minp: cython.Py_ssize_t, alpha: cython.double,
              oma: cython.double, z_v: cython.double[::1], sc_v: cython.double[::1], fl_v: cython.uchar[::1],
              dm_v: cython.uchar[::1]) -> cython.void:
    """The batch loop of ``RollingStats.update`` (a small function of its own, so the compiler inlines the
    detectors into it)."""
    n: cython.Py_ssize_t = len(x_v)
    i: cython.Py_ssize_t
    j: cython.Py_ssize_t
    s: cython.Py_ssize_t
    r: cython.int
    for i in range(n):
        if cython.compiled:
            # Many keys do not fit in cache: fetch the state of the reading PF_FAR ahead, then, once its
            # ring position is known, the ring slot and sorted window of the one PF_NEAR ahead, so the
            # loads overlap with this reading's work.
            if i + PF_FAR < n:
                s = s_v[i + PF_FAR]
                for j in range(0, NF, 8):
                    prefetch(cython.address(fs[s * NF + j]))  # noqa: F821 (declared in the .pxd)
                prefetch(cython.address(fs[s * NF + NF - 1]))  # noqa: F821
                for j in range(0, NI, 8):
                    prefetch(cython.address(gs[s * NI + j]))  # noqa: F821
                prefetch(cython.address(gs[s * NI + NI - 1]))  # noqa: F821 (a row can straddle 3 lines)
                for j in range(0, NP, 8):
                    prefetch(cython.address(ps[s * NP + j]))  # noqa: F821
            if i + PF_NEAR < n:
                s = s_v[i + PF_NEAR]
                prefetch(cython.address(bs[s * window + gs[s * NI + I_POS]]))  # noqa: F821
                if has_t:
                    prefetch(cython.address(tr[s * window + gs[s * NI + I_POS]]))  # noqa: F821
                    # the time window's oldest reading, which expiry reads next
                    j = gs[s * NI + I_POS] - gs[s * NI + I_TN]
                    if j < 0:
                        j += window
                    prefetch(cython.address(tr[s * window + j]))  # noqa: F821
                    prefetch(cython.address(bs[s * window + j]))  # noqa: F821
        s = s_v[i]
        r = detect(x_v[i], t_v[i], fs, s * NF, gs, s * NI, bs, ss, tr, s * window, ps, s * NP, window, minp,
                   alpha, oma, z_v, sc_v, i)
        fl_v[i] = r & 255
        dm_v[i] = r >> 8
        if cython.compiled and i + PF_NEAR < n:
            # the sorted window of the reading PF_NEAR ahead, apart from its other lines (a burst of ~30
            # misses at once fills the core's miss buffers, and the next prefetch waits for a free one)
            s = s_v[i + PF_NEAR]
            for j in range(0, window, 8):
                prefetch(cython.address(ss[s * window + j]))  # noqa: F821


# ----------------------------------------------------------------------
# Python face


def _flat(a: np.ndarray):
    """The rows of ``a`` one after the other, as the kernel's state: a contiguous numpy array for the
    compiled kernel (large ones get huge pages), a list (the fastest element access in Python) for the
    uncompiled one."""
    return np.ascontiguousarray(a).reshape(-1) if cython.compiled else np.ravel(a).tolist()


def _rows(a, dtype: type, width: int) -> np.ndarray:
    """A state array as rows of ``width``, for snapshots and the reads over all slots: a view of the compiled
    kernel's array (a snapshot of 10^6 keys is 2.3 GB; each copy of it costs seconds), a new array of the
    uncompiled one's list. Read it before the state changes again."""
    return np.asarray(a, dtype=dtype).reshape(-1, width)


class RollingStats:
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
    re-armed; see "Change at onset" above. The time window (``time_window_ms`` > 0, per slot) keeps mean
    and variance of the readings newer than the slot's newest timestamp minus ``time_window_ms``, among
    the last ``window``.

    A reading older than the slot's newest one is flagged FLAG_LATE, scored, and added to the count
    window like any other (the window is in arrival order), but no rate of change is measured to or from
    it, for the stuck timer it counts as arriving at the slot's newest timestamp, and it stays out of the
    time window (which then holds only in-order readings, so it can expire from its oldest end).
    """

    def __init__(self, window: int = 100, min_count: int = 20, z_threshold: float = 6.0,
                 capacity: int = 1024, *, ewm_alpha: float = 0.05, **detectors):
        window, min_count, z_threshold, capacity = check_params(window, min_count, z_threshold, capacity)
        self.window = window
        self.min_count = min_count
        self.z_threshold = z_threshold
        self.ewm_alpha = check_alpha(ewm_alpha)
        self.defaults = check_detectors(z_threshold, **detectors)
        self._oma = 1.0 - self.ewm_alpha
        self._set_state(new_fstate(capacity), new_istate(capacity), new_pstate(capacity, self.defaults),
                        np.full((capacity, window), np.nan), new_sorted(capacity, window),
                        new_tsring(capacity, window if self.defaults["time_window_ms"] > 0 else 0))

    def _set_state(self, fs, gs, ps, buf, srt, tsr) -> None:
        self._n = fs.shape[0]
        state = map(_flat, (fs, gs, ps, buf, srt, tsr))
        self._fs, self._gs, self._ps, self._bs, self._ss, self._tr = state

    def _state(self) -> tuple[np.ndarray, ...]:
        """The state as 2-D arrays (float, int, settings, ring, sorted, timestamp ring), views (_rows)."""
        w = self.window
        f8, i8 = np.float64, np.int64
        tsr = _rows(self._tr, i8, w) if len(self._tr) else new_tsring(self._n, 0)
        fs, gs, ps = _rows(self._fs, f8, NF), _rows(self._gs, i8, NI), _rows(self._ps, f8, NP)
        return fs, gs, ps, _rows(self._bs, f8, w), _rows(self._ss, f8, w), tsr

    @property
    def nslots(self) -> int:
        return self._n

    def _grow(self, need: int) -> None:
        extra = grown_size(self._n, need) - self._n
        w = self.window
        tw = w if len(self._tr) else 0
        more = (new_fstate(extra), new_istate(extra), new_pstate(extra, self.defaults),
                np.full((extra, w), np.nan), new_sorted(extra, w), new_tsring(extra, tw))
        self._set_state(*(np.concatenate([a, b]) for a, b in zip(self._state(), more, strict=True)))

    def update(self, slots, ts_ms, values, dominant=False):
        """Score each reading against its slot's window, then add it; returns ``(z, score, flags)``, and
        with ``dominant`` also the flag of the strongest detector that fired per reading (0 if none)."""
        sl, ts, vals = check_batch(slots, ts_ms, values)
        n: cython.Py_ssize_t = len(sl)
        if n and sl.max() >= self._n:
            self._grow(int(sl.max()) + 1)
        z_out = np.empty(n, dtype=np.float64)
        score_out = np.empty(n, dtype=np.float64)
        flags_out = np.empty(n, dtype=np.uint8)
        dom_out = np.empty(n, dtype=np.uint8)
        s_v: cython.const[cython.longlong][::1] = _flat(sl)
        t_v: cython.const[cython.longlong][::1] = _flat(ts)
        x_v: cython.const[cython.double][::1] = _flat(vals)
        z_v: cython.double[::1] = z_out
        sc_v: cython.double[::1] = score_out
        fl_v: cython.uchar[::1] = flags_out
        dm_v: cython.uchar[::1] = dom_out
        fs: cython.double[::1] = self._fs
        gs: cython.longlong[::1] = self._gs
        ps: cython.double[::1] = self._ps
        bs: cython.double[::1] = self._bs
        ss: cython.double[::1] = self._ss
        tr: cython.longlong[::1] = self._tr
        has_t: cython.bint = len(self._tr) > 0
        window: cython.Py_ssize_t = self.window
        minp: cython.Py_ssize_t = self.min_count
        alpha: cython.double = self.ewm_alpha
        oma: cython.double = self._oma
        with cython.nogil:
            run_batch(s_v, t_v, x_v, fs, gs, ps, bs, ss, tr, has_t, window, minp, alpha, oma, z_v, sc_v, fl_v,
                      dm_v)
        if dominant:
            return z_out, score_out, flags_out, dom_out
        return z_out, score_out, flags_out

    def configure(self, slots, **detectors) -> None:
        """Set detector settings (``robust_threshold``, ``lo``, ``hi``, ...) for the given slots."""
        sl = check_batch(slots, np.zeros(np.size(slots), np.int64), np.zeros(np.size(slots)))[0]
        if len(sl) and sl.max() >= self._n:
            self._grow(int(sl.max()) + 1)
        if not detectors:
            return
        for k in detectors:
            if k not in self.defaults:
                msg = f"unknown detector setting {k!r}; known: {sorted(self.defaults)}"
                raise TypeError(msg)
        for k, v in check_detectors(**{**self.defaults, **detectors}).items():
            if k in detectors:
                j = PARAM_FIELDS.index(k)
                for s in sl.tolist():
                    self._ps[s * NP + j] = v
        if detectors.get("time_window_ms", 0) and not len(self._tr):
            self._tr = _flat(new_tsring(self._n, self.window))

    def settings(self, slot) -> dict:
        """The detector settings of one slot."""
        s = check_slot(slot)
        if s >= self._n:
            return dict(self.defaults)
        return {k: float(v) for k, v in zip(PARAM_FIELDS, self._ps[s * NP : (s + 1) * NP], strict=True)}

    def silent(self, now_ms) -> np.ndarray:
        """Slots heard from before whose ``silence_ms`` (> 0) has passed by ``now_ms`` (timer-driven)."""
        last = _rows(self._gs, np.int64, NI)[:, I_LAST_TS]
        return silent_slots(last, _rows(self._ps, np.float64, NP)[:, P_SILENCE_MS], int(now_ms))

    def _slot(self, slot) -> int:
        """The slot's index, -1 when it was never allocated."""
        s = check_slot(slot)
        return s if s < self._n else -1

    def mean(self, slot) -> float:
        """Mean of the real values in the slot's window; NaN when it has none."""
        s = self._slot(slot)
        return math.nan if s < 0 else calc_mean(self._fs, s * NF + F_SHIFT, self._gs, s * NI + I_NOBS)

    def var(self, slot) -> float:
        """Sample variance (ddof=1) of the slot's window; NaN below 2 real values."""
        s = self._slot(slot)
        return math.nan if s < 0 else calc_var(self._fs, s * NF + F_SHIFT, self._gs, s * NI + I_NOBS)

    def tmean(self, slot) -> float:
        """Mean of the slot's time window; NaN when it has no value."""
        s = self._slot(slot)
        return math.nan if s < 0 else calc_mean(self._fs, s * NF + F_TSHIFT, self._gs, s * NI + I_TNOBS)

    def tvar(self, slot) -> float:
        """Sample variance (ddof=1) of the slot's time window; NaN below 2 values."""
        s = self._slot(slot)
        return math.nan if s < 0 else calc_var(self._fs, s * NF + F_TSHIFT, self._gs, s * NI + I_TNOBS)

    def _float(self, slot, col: int) -> float:
        s = self._slot(slot)
        return math.nan if s < 0 else float(self._fs[s * NF + col])

    def _int(self, slot, col: int) -> int:
        s = self._slot(slot)
        return 0 if s < 0 else int(self._gs[s * NI + col])

    def tcount(self, slot) -> int:
        """Values in the slot's time window."""
        return self._int(slot, I_TNOBS)

    def count(self, slot) -> int:
        """Real (non-NaN) values in the slot's window."""
        return self._int(slot, I_NOBS)

    def cusum(self, slot) -> float:
        """Larger of the change detector's two CUSUMs (residual sd; it fires above shift_threshold)."""
        return max(self._float(slot, F_CUP), self._float(slot, F_CDOWN))

    def resolution(self, slot) -> float:
        """Learned resolution: smallest non-zero step between consecutive real readings (0 = none yet)."""
        return self._float(slot, F_RES)

    def ewm_mean(self, slot) -> float:
        """Exponentially weighted mean (weight ``ewm_alpha`` on the newest real value); NaN before any."""
        return self._float(slot, F_EWM_MEAN)

    def ewm_var(self, slot) -> float:
        """Exponentially weighted variance (West's incremental form, not bias-corrected)."""
        return self._float(slot, F_EWM_VAR)

    def _sorted(self, slot) -> list:
        """The real values of the slot's window, sorted."""
        s = self._slot(slot)
        so = s * self.window
        return [] if s < 0 else [float(v) for v in self._ss[so : so + self._gs[s * NI + I_NOBS]]]

    def kind(self, slot) -> str:
        """The slot's kind as the detectors see it (``_common.classify``)."""
        s = self._slot(slot)
        if s < 0:
            return "unknown"
        return classify(np.array(self._sorted(s)), self._fs[s * NF + F_RES], self._gs[s * NI + I_NUP],
                        self._gs[s * NI + I_NDOWN])

    def min(self, slot) -> float:
        """Smallest real value in the slot's window; NaN when it has none."""
        srt = self._sorted(slot)
        return srt[0] if srt else math.nan

    def max(self, slot) -> float:
        """Largest real value in the slot's window; NaN when it has none."""
        srt = self._sorted(slot)
        return srt[len(srt) - 1] if srt else math.nan  # no negative index: wraparound is off

    def median(self, slot) -> float:
        """Median of the real values in the slot's window; NaN when it has none."""
        s = self._slot(slot)
        return math.nan if s < 0 else calc_median(self._ss, s * self.window, self._gs[s * NI + I_NOBS])

    def mad(self, slot) -> float:
        """Median absolute deviation from the median (unscaled); NaN when the window has no value."""
        s = self._slot(slot)
        if s < 0:
            return math.nan
        so, n = s * self.window, self._gs[s * NI + I_NOBS]
        return calc_mad(self._ss, so, n, calc_median(self._ss, so, n))

    def last_ts(self, slot) -> int | None:
        """Newest timestamp seen for the slot (ms), None if never heard from."""
        s = self._slot(slot)
        if s < 0 or self._gs[s * NI + I_LAST_TS] == NEVER:
            return None
        return int(self._gs[s * NI + I_LAST_TS])

    def to_bytes(self) -> bytes:
        """Snapshot of the whole state (versioned; loads in either build, compiled or not)."""
        fs, gs, ps, buf, srt, tsr = self._state()
        return _snapshot.dump(
            "RollingStats", params_of(self),
            {"fstate": FLOAT_FIELDS, "istate": INT_FIELDS, "pstate": PARAM_FIELDS},
            state_arrays(tsr, fstate=fs, istate=gs, pstate=ps, buf=buf, sorted=srt))

    @classmethod
    def from_bytes(cls, data) -> "RollingStats":
        """Restore a snapshot made by ``to_bytes`` (or of an older layout)."""
        params, fields, arrays = _snapshot.load(data, "RollingStats")
        upgrade_snapshot(params, fields, arrays)
        self = cls(capacity=1, **params)
        self._set_state(*restore_state(fields, arrays, self.window, self.defaults))
        return self

    def __reduce__(self):
        return (type(self).from_bytes, (self.to_bytes(),))

    def __repr__(self) -> str:
        return (f"RollingStats(window={self.window}, min_count={self.min_count}, "
                f"z_threshold={self.z_threshold!r}, nslots={self.nslots})")
