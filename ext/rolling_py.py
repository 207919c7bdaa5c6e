"""Pure-Python twin of ``_rolling.pyx``: same names, same floating-point operations in the same order.

Python floats are IEEE doubles and ``math.sqrt`` / ``math.log1p`` are the C library's, so every result
and every snapshot is bit-identical to the compiled module. Used when the extension is missing, when
``IOTSTREAM_PURE_PYTHON=1``, and as the reference in parity tests. Per-slot state lives in plain lists
(rows of floats and ints, a ring buffer and a sorted list per slot); arrays only appear in snapshots.
See ``_rolling.pyx`` for what each statistic and detector means.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort_right

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

__all__ = ["FLAG_ZSCORE", "RollingStats"]

(
    F_SHIFT,
    F_MEAN,
    F_CMEAN,
    F_SSQDM,
    F_CSSQ,
    F_SABS,
    F_PREV,
    F_RPREV,
    F_EWM_MEAN,
    F_EWM_VAR,
    F_TSHIFT,
    F_TMEAN,
    F_TCMEAN,
    F_TSSQDM,
    F_TCSSQ,
    F_TSABS,
    F_TPREV,
    F_RES,
    F_LEVEL,
    F_RMEAN,
    F_RVAR,
    F_RCOV,
    F_DPREV,
    F_CUP,
    F_CDOWN,
) = range(FLOAT_FIELDS.index("cal0"))
F_CAL0, F_SM, F_SV, F_SARM, F_SMEAN, F_PROF0, F_RSM, F_RSV = (
    FLOAT_FIELDS.index(k) for k in ("cal0", "sm", "sv", "sarm", "smean", "prof0", "rsm", "rsv")
)
(
    I_POS,
    I_NFILL,
    I_NOBS,
    I_NSAME,
    I_LAST_TS,
    I_PREV_TS,
    I_RUN_TS,
    I_EWM_N,
    I_TNOBS,
    I_TNSAME,
    I_TN,
    I_CN,
    I_NUP,
    I_NDOWN,
    I_FIRST_TS,
) = range(len(INT_FIELDS))
(P_ZTHR, P_RTHR, P_LO, P_HI, P_MAX_RATE, P_STUCK_N, P_STUCK_MS, P_SILENCE_MS, P_STHR, P_TWIN) = range(
    len(PARAM_FIELDS)
)
assert (
    FLOAT_FIELDS[F_CDOWN] == "cdown"
    and FLOAT_FIELDS[F_CAL0 + CAL_LEVELS - 1] == f"cal{CAL_LEVELS - 1}"
    and INT_FIELDS[I_FIRST_TS] == "first_ts"
    and PARAM_FIELDS[P_TWIN] == "time_window_ms"
)
# offsets inside a Welford block (count window at F_SHIFT / I_NOBS, time window at F_TSHIFT / I_TNOBS)
V_SHIFT, V_MEAN, V_CMEAN, V_SSQDM, V_CSSQ, V_SABS, V_PREV = range(7)
C_NOBS, C_NSAME = range(2)
RVAR_N = int(1.0 / RVAR_ALPHA)
RCOV_N = int(1.0 / RCOV_ALPHA)
SMEAN_N = int(1.0 / SMEAN_VAR_ALPHA)
SMEAN_SD2 = SMEAN_SD * SMEAN_SD

RECOMPUTE_RATIO = 1e4
DRIFT_RATIO = 1e8
TINY_SSQDM = 1e-280
HUGE_SSQDM = 1e280
DBL_MAX = 1.7976931348623157e308
MAD_SCALE = 1.4826
MEANAD_SCALE = 1.2533
NAN = math.nan
INF = math.inf
LN2 = math.log(2.0)
CAL_EMAX = DBL_MAX * CAL_LEVEL0
CAL_LEV = [CAL_LEVEL0 * 2.0**k for k in range(CAL_LEVELS)]
CAL_INV = [1.0 / (CAL_LEVEL0 * 2.0 ** (k - 1) if k else CAL_LEVEL0) for k in range(CAL_LEVELS)]
LOG_QMIN = math.log(CAL_QMIN)
SCORE_SCALE = -1.0 / (math.log(10.0) * SCORE_DECADES)
CAL_ALPHA = 1.0 / CAL_N
INV_DAY = 1.0 / DAY_MS
INV_SMOOTH = 1.0 / SMOOTH_TAU_MS
INV_PROFILE = 1.0 / PROFILE_TAU_MS
INV_SVAR = 1.0 / SVAR_TAU_MS

# ----------------------------------------------------------------------
# Rolling variance (see _rolling.pyx for the comments; the operations match line by line). Each helper
# works on one Welford block: floats f[o + V_*] and counters g[c + C_*].


def reset_var(f: list, o: int) -> None:
    f[o + V_MEAN] = 0.0
    f[o + V_CMEAN] = 0.0
    f[o + V_SSQDM] = 0.0
    f[o + V_CSSQ] = 0.0
    f[o + V_SABS] = 0.0


def add_var(val: float, f: list, o: int, g: list, c: int) -> None:
    if val != val:
        return
    if g[c + C_NOBS] == 0:
        reset_var(f, o)
        f[o + V_SHIFT] = val
    g[c + C_NOBS] += 1
    if val == f[o + V_PREV]:
        g[c + C_NSAME] += 1
    else:
        g[c + C_NSAME] = 1
    f[o + V_PREV] = val
    y = val - f[o + V_SHIFT]
    m_old = f[o + V_MEAN] - f[o + V_CMEAN]
    d = y - m_old
    inc = d / g[c + C_NOBS]
    t = inc - f[o + V_CMEAN]
    s = f[o + V_MEAN] + t
    f[o + V_CMEAN] = (s - f[o + V_MEAN]) - t
    f[o + V_MEAN] = s
    q = d * (y - (f[o + V_MEAN] - f[o + V_CMEAN]))
    t = q - f[o + V_CSSQ]
    s = f[o + V_SSQDM] + t
    f[o + V_CSSQ] = (s - f[o + V_SSQDM]) - t
    f[o + V_SSQDM] = s
    f[o + V_SABS] += abs(q)


def remove_var(val: float, f: list, o: int, g: list, c: int) -> None:
    if val != val:
        return
    g[c + C_NOBS] -= 1
    if g[c + C_NOBS] == 0:
        reset_var(f, o)
        return
    y = val - f[o + V_SHIFT]
    m_old = f[o + V_MEAN] - f[o + V_CMEAN]
    d = y - m_old
    inc = -d / g[c + C_NOBS]
    t = inc - f[o + V_CMEAN]
    s = f[o + V_MEAN] + t
    f[o + V_CMEAN] = (s - f[o + V_MEAN]) - t
    f[o + V_MEAN] = s
    q = -d * (y - (f[o + V_MEAN] - f[o + V_CMEAN]))
    t = q - f[o + V_CSSQ]
    s = f[o + V_SSQDM] + t
    f[o + V_CSSQ] = (s - f[o + V_SSQDM]) - t
    f[o + V_SSQDM] = s
    f[o + V_SABS] += abs(q)


def recompute_var(f: list, o: int, g: list, c: int, vals: list) -> None:
    """Two-pass recomputation over ``vals`` (the block's values, in the order the kernel reads them)."""
    n = 0
    k0 = f[o + V_PREV]
    s1 = s2 = s3 = 0.0
    for v in vals:
        if v == v:
            s1 += v - k0
            n += 1
    if n == 0:
        reset_var(f, o)
        return
    k = k0 + s1 / n
    for v in vals:
        if v == v:
            s2 += v - k
    m = s2 / n
    for v in vals:
        if v == v:
            d = (v - k) - m
            s3 += d * d
    f[o + V_SHIFT] = k
    f[o + V_MEAN] = m
    f[o + V_CMEAN] = 0.0
    f[o + V_SSQDM] = s3
    f[o + V_CSSQ] = 0.0
    f[o + V_SABS] = s3


def unstable_var(f: list, o: int, g: list, c: int) -> bool:
    ssq = f[o + V_SSQDM]
    m = f[o + V_MEAN]
    if g[c + C_NOBS] < 2:
        return False
    return not (f[o + V_SABS] <= RECOMPUTE_RATIO * ssq) or not (m * m * g[c + C_NOBS] <= DRIFT_RATIO * ssq)


def calc_mean(f: list, o: int, g: list, c: int) -> float:
    if g[c + C_NOBS] == 0:
        return NAN
    if g[c + C_NSAME] >= g[c + C_NOBS]:
        return f[o + V_PREV]
    return f[o + V_SHIFT] + (f[o + V_MEAN] - f[o + V_CMEAN])


def calc_var(f: list, o: int, g: list, c: int) -> float:
    if g[c + C_NOBS] < 2:
        return NAN
    if g[c + C_NSAME] >= g[c + C_NOBS]:
        return 0.0
    if f[o + V_SSQDM] <= 0.0:
        return 0.0
    return f[o + V_SSQDM] / (g[c + C_NOBS] - 1)


def time_values(b: list, tr: list, g: list, window: int) -> list:
    """The time window's counted values, oldest first (the order the kernel reads them)."""
    out = []
    start = g[I_POS] - g[I_TN]
    if start < 0:
        start += window
    j = start
    for _ in range(g[I_TN]):
        if tr[j] != NEVER:
            out.append(b[j])
        j += 1
        if j == window:
            j = 0
    return out


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
    res = f[F_RES]
    if g[I_NOBS] < minp or val != val:
        return NAN
    if g[I_NSAME] >= g[I_NOBS]:
        c = f[F_PREV]
        if val == c:
            return 0.0
        if res > 0.0:
            return (val - c) / res
        return INF if val > c else -INF
    dev = (val - f[F_SHIFT]) - (f[F_MEAN] - f[F_CMEAN])
    ssq = f[F_SSQDM]
    if TINY_SSQDM <= ssq <= HUGE_SSQDM:
        z = dev / math.sqrt(ssq / (g[I_NOBS] - 1))
    else:
        z = scaled_z(dev, f, g, b)
    if res > 0.0:
        zf = dev / res
        if abs(zf) < abs(z):
            return zf
    return z


# ----------------------------------------------------------------------
# Sorted window: min, max, median, MAD


def calc_median(s: list, n: int) -> float:
    if n == 0:
        return NAN
    if n % 2:
        return s[n // 2]
    return 0.5 * s[n // 2 - 1] + 0.5 * s[n // 2]


def kth_dev(s: list, n: int, med: float, k: int) -> tuple[float, float]:
    """The k-th and (k+1)-th smallest |s_i - med| (the second is inf when there is none)."""
    p = n // 2
    nb = n - n // 2
    lo = k + 1 - nb if k + 1 > nb else 0
    hi = k + 1 if k + 1 < p else p
    while lo < hi:
        a = (lo + hi) // 2
        bb = k + 1 - a
        if bb > 0 and s[p + bb - 1] - med > med - s[p - 1 - a]:
            lo = a + 1
        else:
            hi = a
    bb = k + 1 - lo
    res = 0.0
    if lo > 0:
        res = med - s[p - lo]
    if bb > 0 and s[p + bb - 1] - med > res:
        res = s[p + bb - 1] - med
    nxt = INF
    if lo < p:
        nxt = med - s[p - 1 - lo]
    if bb < nb and s[p + bb] - med < nxt:
        nxt = s[p + bb] - med
    return res, nxt


def calc_mad(s: list, n: int, med: float) -> float:
    if n == 0:
        return NAN
    k0 = (n - 1) // 2
    k1 = n // 2
    if k0 == k1:
        return kth_dev(s, n, med, k0)[0]
    d0, d1 = kth_dev(s, n, med, k0)
    return 0.5 * d0 + 0.5 * d1


def calc_rz(val: float, s: list, n: int, minp: int, res: float) -> float:
    if n < minp or val != val:
        return NAN
    med = calc_median(s, n)
    dev = val - med
    mad = calc_mad(s, n, med)
    if mad > 0.0:
        mad = MAD_SCALE * mad
    else:
        acc = 0.0
        for j in range(n):
            acc += abs(s[j] - med)
        mad = MEANAD_SCALE * (acc / n)
    if mad < res:
        mad = res
    if mad > 0.0:
        return dev / mad
    if dev == 0.0:
        return 0.0
    return INF if dev > 0.0 else -INF


# ----------------------------------------------------------------------
# EWMA and EW variance


def add_ewm(val: float, f: list, g: list, alpha: float, oma: float) -> None:
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


def tail_log(e: float, q: list, o: int) -> float:
    """Natural log of the share of the key's readings with evidence above ``e`` (q[o:o + CAL_LEVELS])."""
    qp = 1.0
    qpp = 1.0
    lev = 0.0
    gam = CAL_GAMMA
    if not (e > 0.0):
        return 0.0
    for k in range(CAL_LEVELS):
        if q[o + k] < CAL_QMIN:
            break
        if e <= CAL_LEV[k]:
            lp = math.log(qp) if k > 0 else 0.0
            return lp + (math.log(q[o + k]) - lp) * ((e - lev) * CAL_INV[k]) - TIE_WEIGHT * e
        qpp = qp
        qp = q[o + k]
        lev = CAL_LEV[k]
    if lev == 0.0:
        lev = CAL_LEVEL0
        if e <= lev:
            return LOG_QMIN * (e / lev) - TIE_WEIGHT * e
        lp = LOG_QMIN
    else:
        lp = math.log(qp)
        if lev > CAL_LEVEL0:
            gam = (math.log(qpp) - lp) / LN2
            if gam < CAL_GAMMA:
                gam = CAL_GAMMA
        lev = lev * 2.0  # up to the next level the tail is at most the last reliable share: kept flat
        if e <= lev:
            return lp - TIE_WEIGHT * e
    if e > CAL_EMAX:  # e / lev stays finite: infinite evidence has a finite, very small tail
        e = CAL_EMAX
    return lp - TIE_WEIGHT * lev - gam * math.log(e / lev)


def learn_tail(e: float, q: list, o: int, n: int) -> None:
    a = 1.0 / (n + CAL_PRIOR) if n + CAL_PRIOR < CAL_N else CAL_ALPHA
    for k in range(CAL_LEVELS):
        q[o + k] = q[o + k] + a * ((1.0 if e > CAL_LEV[k] else 0.0) - q[o + k])


def young_tail(e: float, thr: float, n: int) -> float:
    if e > CAL_LEV[CAL_LEVELS - 1]:
        e = CAL_LEV[CAL_LEVELS - 1]
    z = e * thr
    return -(1.0 - n * CAL_ALPHA) * 0.5 * (z * z - thr * thr)


def calc_score(lt: float) -> float:
    if not (lt < 0.0):
        return 0.0
    u = lt * SCORE_SCALE
    return u / (1.0 + u)


# ----------------------------------------------------------------------
# Scale and kind


def learn_step(val: float, f: list, g: list) -> None:
    d = val - f[F_PREV]
    if d > 0.0:
        g[I_NUP] += 1
    elif d < 0.0:
        g[I_NDOWN] += 1
        d = -d
    if d > 0.0 and (f[F_RES] == 0.0 or d < f[F_RES]):
        f[F_RES] = d


def is_counter(g: list) -> bool:
    return g[I_NUP] >= COUNTER_UPS and g[I_NDOWN] * COUNTER_RATIO <= g[I_NUP]


# ----------------------------------------------------------------------
# Time of day


def seasonal(val: float, ts: int, f: list, g: list) -> float:
    if g[I_FIRST_TS] == NEVER:
        g[I_FIRST_TS] = ts
        for k in range(SEASON_BUCKETS):
            f[F_PROF0 + k] = val
        return 0.0
    dt = ts - g[I_LAST_TS]
    age = ts - g[I_FIRST_TS]
    pos = ts * INV_DAY
    pos = (pos - math.floor(pos)) * SEASON_BUCKETS - 0.5
    if pos < 0.0:
        pos += SEASON_BUCKETS
    b0 = int(pos)
    w = pos - b0
    if b0 >= SEASON_BUCKETS:  # just below midnight's half-hour, pos rounds up to a whole day
        b0 = b0 - SEASON_BUCKETS
    b1 = b0 + 1 if b0 + 1 < SEASON_BUCKETS else 0
    r = val - (f[F_PROF0 + b0] + w * (f[F_PROF0 + b1] - f[F_PROF0 + b0]))
    a = dt * INV_SMOOTH
    if a > SEASON_ALPHA_MAX:
        a = SEASON_ALPHA_MAX
    f[F_SM] = f[F_SM] + a * (r - f[F_SM])
    d = f[F_SM] - f[F_SMEAN]
    x = 0.0
    if age >= SEASON_MIN_MS:
        sd = math.sqrt(f[F_SV])
        if sd < f[F_RES]:
            sd = f[F_RES]
        if sd > 0.0:
            x = abs(d) / (sd * SEASON_Z)
    a = dt * INV_PROFILE if age >= DAY_MS else dt * SEASON_BUCKETS / age
    if x >= 0.5:
        a = a * SEASON_DEPARTED_SHARE
    if a > SEASON_ALPHA_MAX:
        a = SEASON_ALPHA_MAX
    f[F_PROF0 + b0] = f[F_PROF0 + b0] + a * (1.0 - w) * r
    f[F_PROF0 + b1] = f[F_PROF0 + b1] + a * w * r
    if x < 0.5 and age > DAY_MS:
        a = dt * INV_SVAR if age - DAY_MS >= SVAR_TAU_MS else dt / (age - DAY_MS)
        if a > SEASON_ALPHA_MAX:
            a = SEASON_ALPHA_MAX
        f[F_SMEAN] = f[F_SMEAN] + a * d
        f[F_SV] = f[F_SV] + a * (d * d - f[F_SV])
    return x


# ----------------------------------------------------------------------
# Change at onset


def change_floor(f: list, g: list) -> float:
    v = calc_var(f, F_SHIFT, g, I_NOBS)
    floor = f[F_RES]
    if v == v and WINDOW_SD_SHARE * math.sqrt(v) > floor:
        floor = WINDOW_SD_SHARE * math.sqrt(v)
    return floor


def change(val: float, ts: int, f: list, g: list, h: float, warm: int, floor: float) -> float:
    n = g[I_CN]
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
    x = 0.0
    d = (val - f[F_LEVEL]) - f[F_RMEAN]
    sd = math.sqrt(f[F_RVAR])
    if sd > 0.0:
        # residuals of real sensors are autocorrelated: scale to the sd of their run averages (AR(1))
        rho = f[F_RCOV] / f[F_RVAR]
        if not (rho > 0.0):
            rho = 0.0
        elif rho > RHO_MAX:
            rho = RHO_MAX
        sd = sd * math.sqrt((1.0 + rho) / (1.0 - rho))
    if sd < floor:
        sd = floor
    if sd > 0.0:
        c = CLIP_SD * sd
        if d > c:
            d = c
        elif d < -c:
            d = -c
        f[F_RSM] = f[F_RSM] + SMEAN_ALPHA * (d - f[F_RSM])
        if n >= warm and h < INF:
            u = d / sd
            f[F_CUP] = f[F_CUP] + u - ALLOWANCE
            if not (f[F_CUP] > 0.0):
                f[F_CUP] = 0.0
            f[F_CDOWN] = f[F_CDOWN] - u - ALLOWANCE
            if not (f[F_CDOWN] > 0.0):
                f[F_CDOWN] = 0.0
            x = (f[F_CUP] if f[F_CUP] > f[F_CDOWN] else f[F_CDOWN]) / h
            if x > 1.0 and f[F_RSM] * f[F_RSM] <= SMEAN_SD2 * f[F_RSV]:
                x = 1.0  # the short mean is within the key's usual range: wander, not a change
            elif x > 1.0:
                f[F_LEVEL] = val
                f[F_RMEAN] = 0.0
                f[F_DPREV] = 0.0
                f[F_CUP] = 0.0
                f[F_CDOWN] = 0.0
                f[F_RSM] = 0.0
                return x
    a = RVAR_ALPHA if n >= RVAR_N else 1.0 / n
    f[F_RVAR] = f[F_RVAR] + a * (d * d - f[F_RVAR])
    if f[F_CUP] == 0.0 and f[F_CDOWN] == 0.0:  # learnt only while no change builds up
        a = RCOV_ALPHA if n >= RCOV_N else 1.0 / n
        f[F_RCOV] = f[F_RCOV] + a * (d * f[F_DPREV] - f[F_RCOV])
    if 2.0 * f[F_CUP] < h and 2.0 * f[F_CDOWN] < h:  # learnt only while no change is near reporting
        a = SMEAN_VAR_ALPHA if n >= SMEAN_N else 1.0 / n
        f[F_RSV] = f[F_RSV] + a * (f[F_RSM] * f[F_RSM] - f[F_RSV])
    f[F_DPREV] = d
    if ts > g[I_LAST_TS]:
        a = -math.expm1(-(ts - g[I_LAST_TS]) / LEVEL_TAU_MS)
        if a > LEVEL_ALPHA_MAX:
            a = LEVEL_ALPHA_MAX
        f[F_LEVEL] = f[F_LEVEL] + a * (f[F_RMEAN] + d)
        a = -math.expm1(-(ts - g[I_LAST_TS]) / RMEAN_TAU_MS) if n >= RVAR_N else 1.0 / n
        f[F_RMEAN] = f[F_RMEAN] + a * d
    return x


def step(
    val: float,
    ts: int,
    f: list,
    g: list,
    b: list,
    srt: list,
    tr: list,
    twin: float,
    window: int,
    alpha: float,
    oma: float,
) -> None:
    """Slide the slot's count window (and time window) by one reading and update the running state."""
    pos = g[I_POS]
    if g[I_NFILL] == window:
        old = b[pos]
        if g[I_TN] == window:
            if tr[pos] != NEVER:
                remove_var(old, f, F_TSHIFT, g, I_TNOBS)
            g[I_TN] -= 1
        if old == old:
            srt.pop(bisect_left(srt, old))
        remove_var(old, f, F_SHIFT, g, I_NOBS)
    else:
        g[I_NFILL] += 1
    b[pos] = val
    g[I_POS] += 1
    if g[I_POS] == window:
        g[I_POS] = 0
    if val == val:
        insort_right(srt, val)
    add_var(val, f, F_SHIFT, g, I_NOBS)
    if unstable_var(f, F_SHIFT, g, I_NOBS):
        recompute_var(f, F_SHIFT, g, I_NOBS, b)
    add_ewm(val, f, g, alpha, oma)
    if val == val and g[I_NSAME] == 1:
        g[I_RUN_TS] = ts if ts > g[I_LAST_TS] else g[I_LAST_TS]
    if twin > 0.0:
        if val == val and ts >= g[I_LAST_TS]:
            tr[pos] = ts
            add_var(val, f, F_TSHIFT, g, I_TNOBS)
        else:
            tr[pos] = NEVER
        g[I_TN] += 1
        horizon = (ts if ts > g[I_LAST_TS] else g[I_LAST_TS]) - int(twin)
        while g[I_TN] > 0:
            j = g[I_POS] - g[I_TN]
            if j < 0:
                j += window
            if tr[j] != NEVER and tr[j] > horizon:
                break
            if tr[j] != NEVER:
                remove_var(b[j], f, F_TSHIFT, g, I_TNOBS)
            g[I_TN] -= 1
        if unstable_var(f, F_TSHIFT, g, I_TNOBS):
            recompute_var(f, F_TSHIFT, g, I_TNOBS, time_values(b, tr, g, window))
    elif g[I_TN] > 0:
        reset_var(f, F_TSHIFT)
        g[I_TNOBS] = 0
        g[I_TN] = 0
    if ts > g[I_LAST_TS]:
        g[I_LAST_TS] = ts


def detect(
    val: float,
    ts: int,
    f: list,
    g: list,
    b: list,
    srt: list,
    p: list,
    tr: list,
    window: int,
    minp: int,
    alpha: float,
    oma: float,
) -> tuple[float, float, int, int]:
    """Score one reading against its slot's state, then add it; returns ``(z, score, flags, dominant)``."""
    flags = 0
    dom = 0
    e = 0.0
    z = NAN
    counter = is_counter(g)
    if not counter:
        z = calc_z(val, f, g, b, minp)
        x = abs(z) / p[P_ZTHR]
        if x > e:
            e = x
            dom = FLAG_ZSCORE
        if abs(z) > p[P_ZTHR]:
            flags |= FLAG_ZSCORE
        if p[P_RTHR] < INF:
            rz = calc_rz(val, srt, g[I_NOBS], minp, f[F_RES])
            x = abs(rz) / p[P_RTHR]
            if x > e:
                e = x
                dom = FLAG_ROBUST
            if abs(rz) > p[P_RTHR]:
                flags |= FLAG_ROBUST
    if g[I_LAST_TS] != NEVER and ts < g[I_LAST_TS]:
        flags |= FLAG_LATE
    elif val == val:
        if g[I_PREV_TS] != NEVER and ts > g[I_PREV_TS] and p[P_MAX_RATE] < INF:
            dt = ts - g[I_PREV_TS]
            rate = (val - f[F_RPREV]) * 1000.0 / dt
            x = abs(rate) / p[P_MAX_RATE]
            if x > e:
                e = x
                dom = FLAG_RATE
            if abs(rate) > p[P_MAX_RATE]:
                flags |= FLAG_RATE
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
        if not (span < INF):
            span = abs(bound)
        if span == 0.0:
            span = 1.0
        x = 1.0 + ex / span
        if x > e:
            e = x
            dom = FLAG_THRESHOLD
        flags |= FLAG_THRESHOLD
    if val == val:
        x = 0.0
        if not counter:
            x = change(val, ts, f, g, p[P_STHR], window, change_floor(f, g))
        elif val >= f[F_PREV]:
            if g[I_NUP] == COUNTER_UPS:
                g[I_CN] = 0
            x = change(val - f[F_PREV], ts, f, g, p[P_STHR], window, f[F_RES])
        if x > e:
            e = x
            dom = FLAG_SHIFT
        if x > 1.0:
            flags |= FLAG_SHIFT
        if not counter and ts > g[I_LAST_TS]:
            x = seasonal(val, ts, f, g)
            if x > e:
                e = x
                dom = FLAG_SHIFT
            if x > 1.0 and f[F_SARM] > 0.0:
                flags |= FLAG_SHIFT
                f[F_SARM] = 0.0
            elif x < 0.5:
                f[F_SARM] = 1.0
        if f[F_PREV] == f[F_PREV]:
            learn_step(val, f, g)
    step(val, ts, f, g, b, srt, tr, p[P_TWIN], window, alpha, oma)
    if val == val:
        x = 0.0
        if p[P_STUCK_N] > 0.0 and g[I_NSAME] >= p[P_STUCK_N]:
            x = g[I_NSAME] / p[P_STUCK_N]
        if (
            p[P_STUCK_MS] > 0.0
            and g[I_NSAME] >= 2
            and g[I_RUN_TS] != NEVER
            and ts - g[I_RUN_TS] >= p[P_STUCK_MS]
        ):
            if (ts - g[I_RUN_TS]) / p[P_STUCK_MS] > x:
                x = (ts - g[I_RUN_TS]) / p[P_STUCK_MS]
        if x > 0.0:
            flags |= FLAG_STUCK
            if x > e:
                e = x
                dom = FLAG_STUCK
    if not dom & flags:
        dom = flags & ANOMALY_FLAGS & -(flags & ANOMALY_FLAGS)
    lt = tail_log(e, f, F_CAL0)
    if e > 1.0 and g[I_EWM_N] < CAL_N and (dom == FLAG_ZSCORE or dom == FLAG_ROBUST):
        lt = lt + young_tail(e, p[P_ZTHR] if dom == FLAG_ZSCORE else p[P_RTHR], g[I_EWM_N])
    if val == val:
        learn_tail(e, f, F_CAL0, g[I_EWM_N])
    return z, calc_score(lt), flags, dom


# ----------------------------------------------------------------------
# Python face


class RollingStats:
    """Per-slot rolling statistics and anomaly detectors over count windows (see ``_rolling.pyx``)."""

    def __init__(
        self,
        window: int = 100,
        min_count: int = 20,
        z_threshold: float = 6.0,
        capacity: int = 1024,
        *,
        ewm_alpha: float = 0.05,
        **detectors,
    ):
        window, min_count, z_threshold, capacity = check_params(window, min_count, z_threshold, capacity)
        self.window = window
        self.min_count = min_count
        self.z_threshold = z_threshold
        self.ewm_alpha = check_alpha(ewm_alpha)
        self.defaults = check_detectors(z_threshold, **detectors)
        self._oma = 1.0 - self.ewm_alpha
        self._set_state(
            new_fstate(capacity),
            new_istate(capacity),
            new_pstate(capacity, self.defaults),
            np.full((capacity, window), np.nan),
            new_sorted(capacity, window),
            new_tsring(capacity, window if self.defaults["time_window_ms"] > 0 else 0),
        )

    def _set_state(self, fs, gs, ps, buf, srt, tsr) -> None:
        self._fs = fs.tolist()
        self._gs = gs.tolist()
        self._ps = ps.tolist()
        self._bs = buf.tolist()
        self._ss = [[v for v in row if v == v] for row in srt.tolist()]
        self._tr = tsr.tolist()
        self._has_t = tsr.shape[1] > 0

    @property
    def nslots(self) -> int:
        return len(self._fs)

    def _grow(self, need: int) -> None:
        n = len(self._fs)
        extra = grown_size(n, need) - n
        self._fs.extend(new_fstate(extra).tolist())
        self._gs.extend(new_istate(extra).tolist())
        self._ps.extend(new_pstate(extra, self.defaults).tolist())
        self._bs.extend([NAN] * self.window for _ in range(extra))
        self._ss.extend([] for _ in range(extra))
        self._tr.extend(new_tsring(extra, self.window if self._has_t else 0).tolist())

    def update(self, slots, ts_ms, values, dominant=False):
        """Score each reading against its slot's window, then add it; returns ``(z, score, flags)``, and
        with ``dominant`` also the flag of the strongest detector that fired per reading (0 if none)."""
        sl, ts, vals = check_batch(slots, ts_ms, values)
        n = len(sl)
        if n and sl.max() >= len(self._fs):
            self._grow(int(sl.max()) + 1)
        out = [(0.0, 0.0, 0, 0)] * n
        fs, gs, ps, bs, ss, tr = self._fs, self._gs, self._ps, self._bs, self._ss, self._tr
        window, minp, alpha, oma = self.window, self.min_count, self.ewm_alpha, self._oma
        for i, (s, t, val) in enumerate(zip(sl.tolist(), ts.tolist(), vals.tolist(), strict=True)):
            out[i] = detect(
                val,
                t,
                fs[s],
                gs[s],
                bs[s],
                ss[s],
                ps[s],
                tr[s] if self._has_t else None,
                window,
                minp,
                alpha,
                oma,
            )
        cols = list(zip(*out, strict=True)) if n else [(), (), (), ()]
        res = (
            np.array(cols[0], dtype=np.float64),
            np.array(cols[1], dtype=np.float64),
            np.array(cols[2], dtype=np.uint8),
            np.array(cols[3], dtype=np.uint8),
        )
        return res if dominant else res[:3]

    def configure(self, slots, **detectors) -> None:
        """Set detector settings (``robust_threshold``, ``lo``, ``hi``, ...) for the given slots."""
        sl = check_batch(slots, np.zeros(np.size(slots), np.int64), np.zeros(np.size(slots)))[0]
        if len(sl) and sl.max() >= len(self._fs):
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
                    self._ps[s][j] = v
        if detectors.get("time_window_ms", 0) and not self._has_t:
            self._tr = new_tsring(len(self._fs), self.window).tolist()
            self._has_t = True

    def settings(self, slot) -> dict:
        """The detector settings of one slot."""
        s = check_slot(slot)
        if s >= len(self._fs):
            return dict(self.defaults)
        return dict(zip(PARAM_FIELDS, self._ps[s], strict=True))

    def silent(self, now_ms) -> np.ndarray:
        """Slots heard from before whose ``silence_ms`` (> 0) has passed by ``now_ms`` (timer-driven)."""
        last = np.array([g[I_LAST_TS] for g in self._gs], dtype=np.int64)
        sil = np.array([p[P_SILENCE_MS] for p in self._ps], dtype=np.float64)
        return silent_slots(last, sil, int(now_ms))

    def _slot(self, slot) -> int | None:
        s = check_slot(slot)
        return s if s < len(self._fs) else None

    def mean(self, slot) -> float:
        """Mean of the real values in the slot's window; NaN when it has none."""
        s = self._slot(slot)
        return NAN if s is None else calc_mean(self._fs[s], F_SHIFT, self._gs[s], I_NOBS)

    def var(self, slot) -> float:
        """Sample variance (ddof=1) of the slot's window; NaN below 2 real values."""
        s = self._slot(slot)
        return NAN if s is None else calc_var(self._fs[s], F_SHIFT, self._gs[s], I_NOBS)

    def tmean(self, slot) -> float:
        """Mean of the slot's time window (see ``_rolling.pyx``); NaN when it has no value."""
        s = self._slot(slot)
        return NAN if s is None else calc_mean(self._fs[s], F_TSHIFT, self._gs[s], I_TNOBS)

    def tvar(self, slot) -> float:
        """Sample variance (ddof=1) of the slot's time window; NaN below 2 values."""
        s = self._slot(slot)
        return NAN if s is None else calc_var(self._fs[s], F_TSHIFT, self._gs[s], I_TNOBS)

    def tcount(self, slot) -> int:
        """Values in the slot's time window."""
        s = self._slot(slot)
        return 0 if s is None else int(self._gs[s][I_TNOBS])

    def cusum(self, slot) -> float:
        """Larger of the change detector's two CUSUMs (residual sd; it fires above shift_threshold)."""
        s = self._slot(slot)
        return NAN if s is None else max(self._fs[s][F_CUP], self._fs[s][F_CDOWN])

    def resolution(self, slot) -> float:
        """Learned resolution: smallest non-zero step between consecutive real readings (0 = none yet)."""
        s = self._slot(slot)
        return NAN if s is None else self._fs[s][F_RES]

    def kind(self, slot) -> str:
        """The slot's kind as the detectors see it (``_common.classify``)."""
        s = self._slot(slot)
        if s is None:
            return "unknown"
        return classify(np.array(self._ss[s]), self._fs[s][F_RES], self._gs[s][I_NUP], self._gs[s][I_NDOWN])

    def count(self, slot) -> int:
        """Real (non-NaN) values in the slot's window."""
        s = self._slot(slot)
        return 0 if s is None else int(self._gs[s][I_NOBS])

    def min(self, slot) -> float:
        """Smallest real value in the slot's window; NaN when it has none."""
        s = self._slot(slot)
        return NAN if s is None or not self._ss[s] else self._ss[s][0]

    def max(self, slot) -> float:
        """Largest real value in the slot's window; NaN when it has none."""
        s = self._slot(slot)
        return NAN if s is None or not self._ss[s] else self._ss[s][-1]

    def median(self, slot) -> float:
        """Median of the real values in the slot's window; NaN when it has none."""
        s = self._slot(slot)
        return NAN if s is None else calc_median(self._ss[s], len(self._ss[s]))

    def mad(self, slot) -> float:
        """Median absolute deviation from the median (unscaled); NaN when the window has no value."""
        s = self._slot(slot)
        if s is None:
            return NAN
        srt = self._ss[s]
        return calc_mad(srt, len(srt), calc_median(srt, len(srt)))

    def ewm_mean(self, slot) -> float:
        """Exponentially weighted mean (weight ``ewm_alpha`` on the newest real value); NaN before any."""
        s = self._slot(slot)
        return NAN if s is None else self._fs[s][F_EWM_MEAN]

    def ewm_var(self, slot) -> float:
        """Exponentially weighted variance (West's incremental form, not bias-corrected)."""
        s = self._slot(slot)
        return NAN if s is None else self._fs[s][F_EWM_VAR]

    def last_ts(self, slot) -> int | None:
        """Newest timestamp seen for the slot (ms), None if never heard from."""
        s = self._slot(slot)
        if s is None or self._gs[s][I_LAST_TS] == NEVER:
            return None
        return int(self._gs[s][I_LAST_TS])

    def to_bytes(self) -> bytes:
        """Snapshot of the whole state (versioned; loads in either twin)."""
        w = self.window
        srt = np.full((len(self._ss), w), np.nan)
        for i, row in enumerate(self._ss):
            srt[i, : len(row)] = row
        return _snapshot.dump(
            "RollingStats",
            params_of(self),
            {"fstate": FLOAT_FIELDS, "istate": INT_FIELDS, "pstate": PARAM_FIELDS},
            state_arrays(
                np.array(self._tr, dtype=np.int64).reshape(len(self._tr), w if self._has_t else 0),
                fstate=np.array(self._fs, dtype=np.float64).reshape(-1, len(FLOAT_FIELDS)),
                istate=np.array(self._gs, dtype=np.int64).reshape(-1, len(INT_FIELDS)),
                pstate=np.array(self._ps, dtype=np.float64).reshape(-1, len(PARAM_FIELDS)),
                buf=np.array(self._bs, dtype=np.float64).reshape(-1, w),
                sorted=srt,
            ),
        )

    @classmethod
    def from_bytes(cls, data) -> RollingStats:
        """Restore a snapshot made by ``to_bytes`` of either twin (or of an older layout)."""
        params, fields, arrays = _snapshot.load(data, "RollingStats")
        upgrade_snapshot(params, fields, arrays)
        self = cls(capacity=1, **params)
        self._set_state(*restore_state(fields, arrays, self.window, self.defaults))
        return self

    def __reduce__(self):
        return (type(self).from_bytes, (self.to_bytes(),))

    def __repr__(self) -> str:
        return (
            f"RollingStats(window={self.window}, min_count={self.min_count}, "
            f"z_threshold={self.z_threshold!r}, nslots={self.nslots})"
        )
