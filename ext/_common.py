"""What the kernel (``rolling.py``) builds on: flag bits, the state layout, and argument checks (all outside
the hot loop)."""

from __future__ import annotations

import math

import numpy as np

FLAG_ZSCORE = 1  # |z| over the count window above the slot's z_threshold
FLAG_THRESHOLD = 2  # value outside the slot's static [lo, hi]
FLAG_RATE = 4  # |rate of change| per second above the slot's max_rate
FLAG_STUCK = 8  # same value for stuck_count readings or for stuck_ms
FLAG_ROBUST = 16  # |robust z| (median/MAD) above the slot's robust_threshold
FLAG_SHIFT = 32  # a change (level shift or drift) at its onset: CUSUM of standardized residuals
FLAG_LATE = 64  # timestamp older than the slot's newest one (informational, not an anomaly)
FLAG_SILENCE = 128  # slot not heard from for silence_ms (from RollingStats.silent, never from update)
FLAG_NAMES = {
    FLAG_ZSCORE: "zscore",
    FLAG_THRESHOLD: "threshold",
    FLAG_RATE: "rate",
    FLAG_STUCK: "stuck",
    FLAG_ROBUST: "robust",
    FLAG_SHIFT: "shift",
    FLAG_LATE: "late",
    FLAG_SILENCE: "silence",
}
ANOMALY_FLAGS = FLAG_ZSCORE | FLAG_THRESHOLD | FLAG_RATE | FLAG_STUCK | FLAG_ROBUST | FLAG_SHIFT

NEVER = -(2**63)  # timestamp sentinel: no reading yet

# Per-slot state columns. rolling.py finds its column indices here by name (compiled, a C enum in
# iotstream.ext.rolling.pxd that must agree); snapshots name the columns, so a layout change still loads
# old snapshots.
# shift..prev and tshift..tprev are two Welford blocks of the same layout (count window, time window),
# and so are nobs/nsame and tnobs/tnsame.
FLOAT_FIELDS = [
    "shift",
    "mean",
    "cmean",
    "ssqdm",
    "cssq",
    "sabs",
    "prev",
    "rprev",
    "ewm_mean",
    "ewm_var",
    "tshift",
    "tmean",
    "tcmean",
    "tssqdm",
    "tcssq",
    "tsabs",
    "tprev",
    "res",
    "level",
    "rmean",
    "rvar",
    "rcov",
    "dprev",
    "cup",
    "cdown",
    *(f"cal{k}" for k in range(8)),
    "sm",
    "sv",
    "sarm",
    "smean",
    *(f"prof{k}" for k in range(12)),
    "rsm",
    "rsv",
]
INT_FIELDS = [
    "pos",
    "nfill",
    "nobs",
    "nsame",
    "last_ts",
    "prev_ts",
    "run_ts",
    "ewm_n",
    "tnobs",
    "tnsame",
    "tn",
    "cn",
    "nup",
    "ndown",
    "first_ts",
]
FLOAT_DEFAULTS = {
    "shift": 0.0,
    "mean": 0.0,
    "cmean": 0.0,
    "ssqdm": 0.0,
    "cssq": 0.0,
    "sabs": 0.0,
    "prev": math.nan,
    "rprev": math.nan,
    "ewm_mean": math.nan,
    "ewm_var": math.nan,
    "tshift": 0.0,
    "tmean": 0.0,
    "tcmean": 0.0,
    "tssqdm": 0.0,
    "tcssq": 0.0,
    "tsabs": 0.0,
    "tprev": math.nan,
    "res": 0.0,
    "level": 0.0,
    "rmean": 0.0,
    "rvar": 0.0,
    "rcov": 0.0,
    "dprev": 0.0,
    "cup": 0.0,
    "cdown": 0.0,
    **{f"cal{k}": 0.5 ** (k + 1) for k in range(8)},
    "sm": 0.0,
    "sv": 0.0,
    "sarm": 1.0,
    "smean": 0.0,
    **{f"prof{k}": 0.0 for k in range(12)},
    "rsm": 0.0,
    "rsv": 0.0,
}
INT_DEFAULTS = {
    "pos": 0,
    "nfill": 0,
    "nobs": 0,
    "nsame": 0,
    "last_ts": NEVER,
    "prev_ts": NEVER,
    "run_ts": NEVER,
    "ewm_n": 0,
    "tnobs": 0,
    "tnsame": 0,
    "tn": 0,
    "cn": 0,
    "nup": 0,
    "ndown": 0,
    "first_ts": NEVER,
}
# Older layouts also held the histogram shift detector's columns (lmean, lvar, hsum, hw, ln, hn, srun)
# and arrays (bins, hist); a snapshot with them loads, and the change detector starts afresh.

# Per-slot detector settings (float64; counts and milliseconds are whole numbers).
PARAM_FIELDS = [
    "z_threshold",
    "robust_threshold",
    "lo",
    "hi",
    "max_rate",
    "stuck_count",
    "stuck_ms",
    "silence_ms",
    "shift_threshold",
    "time_window_ms",
]

# ----------------------------------------------------------------------
# Change detection (see rolling.py "Change at onset"; compiled or not it takes these very doubles)

LEVEL_TAU_MS = 200_000.0  # time constant of the level the residuals are taken from: a drift faster than
# ~2 sd per 200 s stands out, a daily cycle lags it by a fifth of an sd or less
LEVEL_ALPHA_MAX = 0.05  # ... but at slow sampling a reading moves it by at most this share of its
# residual, so a level shift still leaves residuals for a few readings
RVAR_ALPHA = 0.01  # weight of a residual in the residual variance (after the first 1/RVAR_ALPHA) ...
RMEAN_TAU_MS = 1_000_000.0  # time constant of the residual mean: the level's slowly changing lag behind
# a daily cycle is taken out, a drift's growing lag stands out
CLIP_SD = 4.0  # a residual moves the predictor and the CUSUM by at most this many sd
ALLOWANCE = 1.0  # CUSUM allowance k (sd per reading): changes of about 2 sd and more accumulate
WINDOW_SD_SHARE = 0.5  # the residual sd is at least this share of the count window's sd
RHO_MAX = 0.9  # largest lag-1 autocorrelation of the residuals the sd is scaled for
RCOV_ALPHA = 0.01  # weight of a residual pair in their lag-1 covariance, learnt only while both
# CUSUMs are 0, so a change's own run of same-signed residuals is not taken for
# the sensor's autocorrelation
SHIFT_THRESHOLD = 10.0  # default CUSUM decision interval (residual sd)
# A CUSUM over threshold fires only when the residuals' short mean is also unusual for the key: a sensor that
# wanders (long memory, heavy tails) piles up CUSUM evidence the lag-1 correction misses, but its short
# mean stays within its usual range; a real shift or drift takes it far outside.
SMEAN_ALPHA = 0.05  # weight of a residual in their short EW mean (about the last 20 readings)
SMEAN_VAR_ALPHA = 0.001  # ... whose mean square is learnt slowly (about 1,000 readings, from the first
# reading as a running mean), only while both CUSUMs are below half the threshold, so a change does
# not inflate it before it is reported
SMEAN_SD = 4.0  # the short mean must exceed this many of its learnt sd for the CUSUM to fire
# ----------------------------------------------------------------------
# Calibrated score (see rolling.py "Calibrated score"): per key, the share of its readings whose evidence
# (largest detector evidence over its threshold) exceeded each of CAL_LEVELS levels CAL_LEVEL0 * 2**k.

CAL_LEVELS = 8  # levels 1/16, 1/8, ..., 8 times a threshold: the state columns cal0..cal7
CAL_LEVEL0 = 0.0625
CAL_N = 10_000  # memory of the shares, in readings of the key (weight 1/CAL_N each once warm)
CAL_PRIOR = 100  # a new key starts as if it had seen this many readings of the prior shares 2**-(k+1)
# (FLOAT_DEFAULTS cal0..cal7): a new key's first large evidence is not yet taken for very rare
CAL_QMIN = 1e-3  # a share below this rests on too few readings: the tail is extrapolated from the last
# level above it, as a power law falling at least as (level / evidence) ** CAL_GAMMA
CAL_GAMMA = 2.0
SCORE_DECADES = 4.0  # score = u / (1 + u), u = -log10(tail) / SCORE_DECADES: 0.5 = once in 10**4 readings
TIE_WEIGHT = 1e-3  # the log-tail falls by TIE_WEIGHT * e too: equal shares still rank larger evidence higher
# A young key's shares cannot tell how rare a z-score far beyond its threshold is (its prior makes it look
# common): beyond the threshold thr, the tail of z and robust z evidence also falls by the Gaussian factor
# exp(-(z**2 - thr**2) / 2) (z = evidence * thr, at most CAL_LEVEL0 * 2**(CAL_LEVELS - 1) * thr) raised to
# 1 - n / CAL_N for a key of n readings, so the factor fades out as the key's own shares take over.

# ----------------------------------------------------------------------
# Time of day (see rolling.py "Time of day"): per key a profile of SEASON_BUCKETS values over the UTC day.

DAY_MS = 86_400_000
SEASON_BUCKETS = 12  # one per 2 hours, linearly interpolated between their centres: columns prof0..prof11
SEASON_MIN_MS = 2 * DAY_MS  # the comparison starts once a key spans two days (short-lived keys: never)
PROFILE_TAU_MS = 7_200_000.0  # a bucket learns with this time constant of in-bucket time: about a day
SMOOTH_TAU_MS = 1_800_000.0  # the residual from the profile is smoothed over about half an hour ...
SVAR_TAU_MS = 86_400_000.0  # ... and its departure from its own mean over about a day (a slow trend the
# profile lags behind is no departure) compared with its typical size (sd over about a day); mean and sd are
# learnt only while the departure is below half the threshold
SEASON_ALPHA_MAX = (
    0.5  # after a gap a reading moves a bucket, the smoothed residual, its size by at most this
)
SEASON_DEPARTED_SHARE = 0.1  # while the residual is above half the threshold the profile learns 10 times
# slower: a warm night is not learnt as normal overnight, a lasting change still is, over days
SEASON_Z = 6.0  # the smoothed residual is reported above this many times its typical size, once, and
# re-armed when it falls below half of it

# The robust z's scale (1.4826 MAD) is at least this share of the interdecile range's sd estimate,
# (q90 - q10) / 2.5631: on windows of 100 it binds for none of 20,000 Gaussian ones (the MAD's estimate is
# about twice it), 1 in 20,000 Student-t (3 d.o.f.), 11 % Cauchy; it binds where more than half the window
# sits in one tight cluster (a key jittering around two levels)
ROBUST_IDR_SHARE = 0.5

COUNTER_UPS = 100  # a key is a counter once it has stepped up this often ...
COUNTER_RATIO = 100  # ... and at least this many times as often as it stepped down (resets)


KINDS = (
    "unknown",
    "constant",
    "counter",
    "binary",
    "enumerated",
    "mostly-constant",
    "quantized",
    "continuous",
)


def score_for_tail(p: float) -> float:
    """The score of a reading whose evidence its key shows once in 1/p readings: a fleet-wide threshold
    that lets each key alarm on about a share p of its readings (the inverse of the kernel's mapping)."""
    u = -math.log10(p) / SCORE_DECADES
    return u / (1.0 + u)


# A silence has no evidence to calibrate: it is scored as the rarest share a key's memory resolves, once in
# CAL_N readings (0.5), so a fleet threshold at score_for_tail(p) passes silences for any p >= 1 / CAL_N.
SILENCE_SCORE = score_for_tail(1.0 / CAL_N)


def classify(window_sorted: np.ndarray, res: float, nup: int, ndown: int) -> str:
    """A key's kind from its sorted window, learned resolution and step counts (for operators; the
    kernel itself only treats counters apart, the resolution floor covers the rest):

    counter: stepped up COUNTER_UPS times and COUNTER_RATIO times as often as down; constant: never
    moved; binary / enumerated: 2 / at most 8 distinct values in the window; mostly-constant: one value
    holds 90 % of the window; quantized: at most half the window's values distinct; else continuous.
    """
    n = len(window_sorted)
    if n == 0:
        return "unknown"
    if nup >= COUNTER_UPS and ndown * COUNTER_RATIO <= nup:
        return "counter"
    if res == 0.0:
        return "constant"
    _, counts = np.unique(window_sorted, return_counts=True)
    if len(counts) <= 2:
        return "binary"
    if len(counts) <= 8:
        return "enumerated"
    if counts.max() >= 0.9 * n:
        return "mostly-constant"
    return "quantized" if 2 * len(counts) <= n else "continuous"


def new_tsring(n: int, window: int) -> np.ndarray:
    """Timestamp rings of the time windows; ``window`` 0 while no slot uses a time window (the ring costs
    8 bytes per reading of window, allocated on the first ``time_window_ms`` > 0)."""
    return np.full((n, window), NEVER, dtype=np.int64)


def state_arrays(tsring: np.ndarray, **arrays: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of a snapshot, in order; the timestamp ring only once allocated."""
    out = dict(arrays)
    if tsring.shape[1]:
        out["tsring"] = tsring
    return out


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
    return {
        "window": int(stats.window),
        "min_count": int(stats.min_count),
        "ewm_alpha": float(stats.ewm_alpha),
        **{k: float(v) for k, v in stats.defaults.items()},
    }


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


def check_detectors(z_threshold: float, **kw) -> dict[str, float]:
    """Validated per-slot detector settings (``PARAM_FIELDS`` minus z_threshold) with their defaults.

    robust_threshold: |robust z| limit (inf turns the robust detector off); lo, hi: static limits;
    max_rate: largest |change| per second; stuck_count / stuck_ms: identical readings in a row / for that
    long (0 = off); silence_ms: gap after which ``silent()`` reports the slot (0 = off);
    shift_threshold: CUSUM decision interval h, in residual sd, of the change detector (inf = off);
    time_window_ms: span of the time window (0 = off).
    """
    out = {
        "robust_threshold": 8.0,
        "lo": -math.inf,
        "hi": math.inf,
        "max_rate": math.inf,
        "stuck_count": 0.0,
        "stuck_ms": 0.0,
        "silence_ms": 0.0,
        "shift_threshold": SHIFT_THRESHOLD,
        "time_window_ms": 0.0,
    }
    out["z_threshold"] = float(z_threshold)
    for k, v in kw.items():
        if k not in out:
            msg = f"unknown detector setting {k!r}; known: {sorted(out)}"
            raise TypeError(msg)
        if v is not None:
            out[k] = float(v)
    for k in ("z_threshold", "robust_threshold", "max_rate", "shift_threshold"):
        if not out[k] > 0.0:
            msg = f"{k} must be > 0 (inf turns it off), got {out[k]!r}"
            raise ValueError(msg)
    for k in ("stuck_count", "stuck_ms", "silence_ms", "time_window_ms"):
        if not (0.0 <= out[k] < math.inf and out[k] == int(out[k])):
            msg = f"{k} must be a non-negative whole number (0 turns it off), got {out[k]!r}"
            raise ValueError(msg)
    if not out["lo"] <= out["hi"]:
        msg = f"lo must be <= hi, got lo={out['lo']!r}, hi={out['hi']!r}"
        raise ValueError(msg)
    return out


def check_alpha(ewm_alpha) -> float:
    a = float(ewm_alpha)
    if not 0.0 < a <= 1.0:
        msg = f"ewm_alpha must be in (0, 1], got {a!r}"
        raise ValueError(msg)
    return a


def new_pstate(n: int, detectors: dict[str, float]) -> np.ndarray:
    """Detector settings for ``n`` slots, all set to ``detectors``."""
    a = np.empty((n, len(PARAM_FIELDS)), dtype=np.float64)
    for j, name in enumerate(PARAM_FIELDS):
        a[:, j] = detectors[name]
    return a


def new_sorted(n: int, window: int) -> np.ndarray:
    return np.full((n, window), np.nan)


def sorted_from_buf(buf: np.ndarray) -> np.ndarray:
    """The sorted real values of each ring (NaN-padded at the end), for snapshots that lack them."""
    return np.sort(buf, axis=1)


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


def upgrade_snapshot(params: dict, fields: dict[str, list[str]], arrays: dict[str, np.ndarray]) -> None:
    """In place: a snapshot of the histogram layout (its fstate has "hsum") held shift_threshold as a
    relative entropy in nats (default 1.0); as a CUSUM threshold that would fire on noise, so a finite one
    becomes today's default, and inf (off) stays off."""
    if "hsum" not in fields["fstate"]:
        return
    if math.isfinite(params.get("shift_threshold", math.inf)):
        params["shift_threshold"] = SHIFT_THRESHOLD
    if "pstate" in arrays and "shift_threshold" in fields.get("pstate", []):
        col = arrays["pstate"][:, fields["pstate"].index("shift_threshold")]
        col[np.isfinite(col)] = SHIFT_THRESHOLD


def restore_state(
    fields: dict[str, list[str]], arrays: dict[str, np.ndarray], window: int, detectors: dict[str, float]
):
    """Validated ``(fstate, istate, pstate, buf, sorted, tsring)`` from a loaded snapshot.

    Columns are matched by name; a snapshot from an older layout gets defaults for the new columns,
    its slots get ``detectors`` when it has no per-slot settings, the sorted windows are rebuilt from the
    rings when missing, and without time rings the time windows start empty.
    """
    from ._snapshot import remap

    fs = np.ascontiguousarray(
        remap(arrays["fstate"], fields["fstate"], FLOAT_FIELDS, FLOAT_DEFAULTS), dtype=np.float64
    )
    gs = np.ascontiguousarray(
        remap(arrays["istate"], fields["istate"], INT_FIELDS, INT_DEFAULTS), dtype=np.int64
    )
    buf = np.ascontiguousarray(arrays["buf"], dtype=np.float64)
    n = buf.shape[0]
    if "pstate" in arrays:
        ps = remap(arrays["pstate"], fields["pstate"], PARAM_FIELDS, detectors)
    else:
        ps = new_pstate(n, detectors)
    ps = np.ascontiguousarray(ps, dtype=np.float64)
    srt = arrays["sorted"] if "sorted" in arrays else sorted_from_buf(buf)
    srt = np.ascontiguousarray(srt, dtype=np.float64)
    if "tsring" in arrays:
        tsr = np.ascontiguousarray(arrays["tsring"], dtype=np.int64)
    else:
        tsr = new_tsring(n, window if (ps[:, PARAM_FIELDS.index("time_window_ms")] > 0).any() else 0)
    if not (
        fs.shape[0] == gs.shape[0] == ps.shape[0] == srt.shape[0] == tsr.shape[0] == n >= 1
        and buf.shape[1] == srt.shape[1] == window
        and tsr.shape[1] in (0, window)
    ):
        msg = (
            f"inconsistent snapshot shapes: fstate {fs.shape}, istate {gs.shape}, pstate {ps.shape}, "
            f"buf {buf.shape}, sorted {srt.shape}, tsring {tsr.shape} for window={window}"
        )
        raise ValueError(msg)
    return fs, gs, ps, buf, srt, tsr


def silent_slots(last_ts: np.ndarray, silence_ms: np.ndarray, now_ms: int) -> np.ndarray:
    """Slots heard from at least once whose silence_ms (> 0) has elapsed by ``now_ms``."""
    heard = last_ts != NEVER
    gap = np.where(heard, now_ms - np.where(heard, last_ts, 0), 0)
    return np.flatnonzero(heard & (silence_ms > 0) & (gap >= silence_ms)).astype(np.int64)
