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
    ANOMALY_FLAGS,
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
    restore_state,
    silent_slots,
    state_arrays,
    xlogx_table,
)

__all__ = ["FLAG_ZSCORE", "RollingStats"]

(F_SHIFT, F_MEAN, F_CMEAN, F_SSQDM, F_CSSQ, F_SABS, F_PREV, F_RPREV, F_EWM_MEAN, F_EWM_VAR,
 F_TSHIFT, F_TMEAN, F_TCMEAN, F_TSSQDM, F_TCSSQ, F_TSABS, F_TPREV,
 F_LMEAN, F_LVAR, F_HSUM, F_HW) = range(len(FLOAT_FIELDS))
(I_POS, I_NFILL, I_NOBS, I_NSAME, I_LAST_TS, I_PREV_TS, I_RUN_TS, I_EWM_N,
 I_TNOBS, I_TNSAME, I_TN, I_LN, I_HN, I_SRUN) = range(len(INT_FIELDS))
(P_ZTHR, P_RTHR, P_LO, P_HI, P_MAX_RATE, P_STUCK_N, P_STUCK_MS, P_SILENCE_MS, P_STHR,
 P_TWIN) = range(len(PARAM_FIELDS))
assert FLOAT_FIELDS[F_HW] == "hw" and INT_FIELDS[I_SRUN] == "srun" and PARAM_FIELDS[P_TWIN] == "time_window_ms"
# offsets inside a Welford block (count window at F_SHIFT / I_NOBS, time window at F_TSHIFT / I_TNOBS)
V_SHIFT, V_MEAN, V_CMEAN, V_SSQDM, V_CSSQ, V_SABS, V_PREV = range(7)
C_NOBS, C_NSAME = range(2)
NB = SHIFT_BINS
H_W, H_LOG, H_CNT = 0, NB, 2 * NB  # histogram row: weights, their logs, recent counts
LOG_PRIOR = [math.log(q) for q in PRIOR]
PRIOR_SUM = lsum(PRIOR)
HALF_BINS = float(NB // 2)
BIN_MASK = FLAGGED_BIN - 1

RECOMPUTE_RATIO = 1e4
DRIFT_RATIO = 1e8
TINY_SSQDM = 1e-280
HUGE_SSQDM = 1e280
DBL_MAX = 1.7976931348623157e308
MAD_SCALE = 1.4826
MEANAD_SCALE = 1.2533
NAN = math.nan
INF = math.inf

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


def calc_rz(val: float, s: list, n: int, minp: int) -> float:
    if n < minp or val != val:
        return NAN
    med = calc_median(s, n)
    dev = val - med
    mad = calc_mad(s, n, med)
    if mad > 0.0:
        return dev / (MAD_SCALE * mad)
    acc = 0.0
    for j in range(n):
        acc += abs(s[j] - med)
    mad = MEANAD_SCALE * (acc / n)
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
# Combined score

def calc_score(e: float, em1: float) -> float:
    if not (e > 0.0):
        return 0.0
    a = em1 * e
    if a > DBL_MAX:
        a = DBL_MAX
    u = math.log1p(a)
    return u / (1.0 + u)


# ----------------------------------------------------------------------
# Distribution shift

def calc_bin(val: float, f: list) -> int:
    """Histogram bin of u = (val - long-run mean) / long-run sd: floor(u / width) + NB/2, clamped."""
    d = val - f[F_LMEAN]
    sd2 = f[F_LVAR]
    if sd2 > 0.0:
        t = (d / math.sqrt(sd2)) / SHIFT_BIN_WIDTH + HALF_BINS
    elif d == 0.0:
        t = HALF_BINS
    elif d > 0.0:
        t = INF
    else:
        t = -INF
    if not (t >= 0.0):
        return 0
    if t >= NB:
        return NB - 1
    return int(t)


def learn_long(val: float, f: list, g: list, window: int) -> None:
    """Add an unflagged reading to the long-run mean and variance (EW, deviations clipped once warm)."""
    n = g[I_LN]
    if not (abs(val) <= DBL_MAX):
        return
    if n == 0:
        f[F_LMEAN] = val
        f[F_LVAR] = 0.0
    else:
        a = LONG_ALPHA if n >= LONG_N else 1.0 / (n + 1)
        d = val - f[F_LMEAN]
        if n >= window and f[F_LVAR] > 0.0:
            c = CLIP_SD * math.sqrt(f[F_LVAR])
            if d > c:
                d = c
            elif d < -c:
                d = -c
        f[F_LMEAN] = f[F_LMEAN] + a * d
        f[F_LVAR] = (1.0 - a) * (f[F_LVAR] + a * d * d)
    g[I_LN] = n + 1


def learn_hist(k: int, f: list, h: list) -> None:
    """Add bin ``k`` to the long-run histogram; older weights decay lazily (each new one is larger)."""
    w = f[F_HW]
    h[H_W + k] += w
    f[F_HSUM] += w
    h[H_LOG + k] = math.log(h[H_W + k])
    w = w * HIST_GROWTH
    if w >= HIST_RESCALE:
        tot = 0.0
        for i in range(NB):
            h[H_W + i] = h[H_W + i] / w
            tot += h[H_W + i]
        floor = HIST_FLOOR * tot
        tot = 0.0
        for i in range(NB):
            if h[H_W + i] < floor:
                h[H_W + i] = floor
            tot += h[H_W + i]
            h[H_LOG + i] = math.log(h[H_W + i])
        f[F_HSUM] = tot
        w = 1.0
    f[F_HW] = w


def calc_kl(f: list, h: list, n: int, xlogx: list, logn: list) -> float:
    """Relative entropy (nats) of the ring's n binned readings against the long-run histogram."""
    q = 0.0
    t = 0.0
    for i in range(NB):
        c = h[H_CNT + i]
        q += xlogx[int(c)]
        t += c * h[H_LOG + i]
    return (q - t) / n - logn[n] + math.log(f[F_HSUM])


def rebuild(f: list, g: list, b: list, bn: list, h: list, window: int) -> None:
    """A shift flagged for 2 windows in a row is the new normal: the long-run reference restarts from
    the window (mean, variance, bins) and the histogram from the prior."""
    n = 0
    k0 = f[F_PREV]
    s1 = s2 = 0.0
    for v in b:
        if v == v:
            s1 += v - k0
            n += 1
    g[I_SRUN] = 0
    if n < 2:
        return
    m = k0 + s1 / n
    for v in b:
        if v == v:
            d = v - m
            s2 += d * d
    f[F_LMEAN] = m
    f[F_LVAR] = s2 / (n - 1)
    g[I_LN] = n
    for i in range(NB):
        h[H_W + i] = PRIOR[i]
        h[H_LOG + i] = LOG_PRIOR[i]
        h[H_CNT + i] = 0.0
    for j in range(window):
        v = b[j]
        if v == v:
            k = calc_bin(v, f)
            bn[j] = k
            h[H_CNT + k] += 1.0
        else:
            bn[j] = NO_BIN
    g[I_HN] = n
    f[F_HSUM] = PRIOR_SUM
    f[F_HW] = 1.0


# ----------------------------------------------------------------------
# One reading

def step(val: float, ts: int, k: int, f: list, g: list, b: list, srt: list, tr: list, bn: list, h: list,
         twin: float, window: int, alpha: float, oma: float) -> None:
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
        ob = bn[pos]
        if ob != NO_BIN:
            h[H_CNT + (ob & BIN_MASK)] -= 1.0
            g[I_HN] -= 1
            if not ob & FLAGGED_BIN:
                learn_hist(ob, f, h)
    else:
        g[I_NFILL] += 1
    b[pos] = val
    bn[pos] = k
    if k != NO_BIN:
        h[H_CNT + k] += 1.0
        g[I_HN] += 1
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


def detect(val: float, ts: int, f: list, g: list, b: list, srt: list, p: list, tr: list, bn: list,
           h: list, window: int, minp: int, alpha: float, oma: float, em1: float, xlogx: list,
           logn: list) -> tuple[float, float, int]:
    """Score one reading against its slot's state, then add it; returns ``(z, score, flags)``."""
    flags = 0
    e = 0.0
    z = calc_z(val, f, g, b, minp)
    x = abs(z) / p[P_ZTHR]
    if x > e:
        e = x
    if abs(z) > p[P_ZTHR]:
        flags |= FLAG_ZSCORE
    if p[P_RTHR] < INF:
        rz = calc_rz(val, srt, g[I_NOBS], minp)
        x = abs(rz) / p[P_RTHR]
        if x > e:
            e = x
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
        flags |= FLAG_THRESHOLD
    k = NO_BIN
    if val == val and p[P_STHR] < INF and g[I_LN] >= window:
        k = calc_bin(val, f)
    pos = g[I_POS]
    step(val, ts, k, f, g, b, srt, tr, bn, h, p[P_TWIN], window, alpha, oma)
    if val == val:
        x = 0.0
        if p[P_STUCK_N] > 0.0 and g[I_NSAME] >= p[P_STUCK_N]:
            x = g[I_NSAME] / p[P_STUCK_N]
        if (p[P_STUCK_MS] > 0.0 and g[I_NSAME] >= 2 and g[I_RUN_TS] != NEVER
                and ts - g[I_RUN_TS] >= p[P_STUCK_MS]):
            if (ts - g[I_RUN_TS]) / p[P_STUCK_MS] > x:
                x = (ts - g[I_RUN_TS]) / p[P_STUCK_MS]
        if x > 0.0:
            flags |= FLAG_STUCK
            if x > e:
                e = x
        if k != NO_BIN and z == z and p[P_STHR] < INF and 2 * g[I_HN] >= window:
            kl = calc_kl(f, h, g[I_HN], xlogx, logn)
            x = kl / p[P_STHR]
            if x > e:
                e = x
            if kl > p[P_STHR]:
                flags |= FLAG_SHIFT
        # the long-run reference learns only from readings no detector flagged
        if flags & ANOMALY_FLAGS:
            if k != NO_BIN:
                bn[pos] = k | FLAGGED_BIN
            if flags & FLAG_SHIFT:
                g[I_SRUN] += 1
                if g[I_SRUN] >= 2 * window:
                    rebuild(f, g, b, bn, h, window)
            else:
                g[I_SRUN] = 0
        else:
            g[I_SRUN] = 0
            if p[P_STHR] < INF:
                learn_long(val, f, g, window)
    return z, calc_score(e, em1), flags


# ----------------------------------------------------------------------
# Python face

class RollingStats:
    """Per-slot rolling statistics and anomaly detectors over count windows (see ``_rolling.pyx``)."""

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
        self._xlogx = xlogx_table(window)
        self._logn = log_table(window)
        self._set_state(new_fstate(capacity), new_istate(capacity), new_pstate(capacity, self.defaults),
                        np.full((capacity, window), np.nan), new_sorted(capacity, window),
                        new_tsring(capacity, window if self.defaults["time_window_ms"] > 0 else 0),
                        new_bins(capacity, window), new_hist(capacity))

    def _set_state(self, fs, gs, ps, buf, srt, tsr, bins, hist) -> None:
        self._fs = fs.tolist()
        self._gs = gs.tolist()
        self._ps = ps.tolist()
        self._bs = buf.tolist()
        self._ss = [[v for v in row if v == v] for row in srt.tolist()]
        self._tr = tsr.tolist()
        self._has_t = tsr.shape[1] > 0
        self._bn = bins.tolist()
        self._hs = hist.tolist()

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
        self._bn.extend(new_bins(extra, self.window).tolist())
        self._hs.extend(new_hist(extra).tolist())

    def update(self, slots, ts_ms, values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Score each reading against its slot's window, then add it; returns ``(z, score, flags)``."""
        sl, ts, vals = check_batch(slots, ts_ms, values)
        n = len(sl)
        if n and sl.max() >= len(self._fs):
            self._grow(int(sl.max()) + 1)
        z_out = [0.0] * n
        sc_out = [0.0] * n
        fl_out = [0] * n
        fs, gs, ps, bs, ss = self._fs, self._gs, self._ps, self._bs, self._ss
        tr, bn, hs, xlogx, logn = self._tr, self._bn, self._hs, self._xlogx, self._logn
        window, minp, alpha, oma, em1 = self.window, self.min_count, self.ewm_alpha, self._oma, self._em1
        for i, (s, t, val) in enumerate(zip(sl.tolist(), ts.tolist(), vals.tolist(), strict=True)):
            z_out[i], sc_out[i], fl_out[i] = detect(val, t, fs[s], gs[s], bs[s], ss[s], ps[s],
                                                    tr[s] if self._has_t else None, bn[s], hs[s], window,
                                                    minp, alpha, oma, em1, xlogx, logn)
        return (np.array(z_out, dtype=np.float64), np.array(sc_out, dtype=np.float64),
                np.array(fl_out, dtype=np.uint8))

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

    def divergence(self, slot) -> float:
        """Relative entropy of the slot's recent window against its long-run histogram (NaN until the
        window is half full of binned readings)."""
        s = self._slot(slot)
        if s is None or 2 * self._gs[s][I_HN] < self.window or self._gs[s][I_HN] == 0:
            return NAN
        return calc_kl(self._fs[s], self._hs[s], self._gs[s][I_HN], self._xlogx, self._logn)

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
            srt[i, :len(row)] = row
        return _snapshot.dump(
            "RollingStats", params_of(self),
            {"fstate": FLOAT_FIELDS, "istate": INT_FIELDS, "pstate": PARAM_FIELDS},
            state_arrays(np.array(self._tr, dtype=np.int64).reshape(len(self._tr), w if self._has_t else 0),
                         fstate=np.array(self._fs, dtype=np.float64).reshape(-1, len(FLOAT_FIELDS)),
                         istate=np.array(self._gs, dtype=np.int64).reshape(-1, len(INT_FIELDS)),
                         pstate=np.array(self._ps, dtype=np.float64).reshape(-1, len(PARAM_FIELDS)),
                         buf=np.array(self._bs, dtype=np.float64).reshape(-1, w), sorted=srt,
                         bins=np.array(self._bn, dtype=np.uint8).reshape(-1, w),
                         hist=np.array(self._hs, dtype=np.float64).reshape(-1, 3 * NB)))

    @classmethod
    def from_bytes(cls, data) -> RollingStats:
        """Restore a snapshot made by ``to_bytes`` of either twin (or of an older layout)."""
        params, fields, arrays = _snapshot.load(data, "RollingStats")
        self = cls(capacity=1, **params)
        self._set_state(*restore_state(fields, arrays, self.window, self.defaults))
        return self

    def __reduce__(self):
        return (type(self).from_bytes, (self.to_bytes(),))

    def __repr__(self) -> str:
        return (f"RollingStats(window={self.window}, min_count={self.min_count}, "
                f"z_threshold={self.z_threshold!r}, nslots={self.nslots})")
