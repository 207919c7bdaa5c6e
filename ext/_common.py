"""What both twins share: flag bits, the state layout, and argument checks (all outside the hot loop)."""

from __future__ import annotations

import math

import numpy as np

FLAG_ZSCORE = 1       # |z| over the count window above the slot's z_threshold
FLAG_THRESHOLD = 2    # value outside the slot's static [lo, hi]
FLAG_RATE = 4         # |rate of change| per second above the slot's max_rate
FLAG_STUCK = 8        # same value for stuck_count readings or for stuck_ms
FLAG_ROBUST = 16      # |robust z| (median/MAD) above the slot's robust_threshold
FLAG_SHIFT = 32       # recent window's distribution far from the long-run one (relative entropy)
FLAG_LATE = 64        # timestamp older than the slot's newest one (informational, not an anomaly)
FLAG_SILENCE = 128    # slot not heard from for silence_ms (from RollingStats.silent, never from update)
FLAG_NAMES = {FLAG_ZSCORE: "zscore", FLAG_THRESHOLD: "threshold", FLAG_RATE: "rate", FLAG_STUCK: "stuck",
              FLAG_ROBUST: "robust", FLAG_SHIFT: "shift", FLAG_LATE: "late", FLAG_SILENCE: "silence"}
ANOMALY_FLAGS = FLAG_ZSCORE | FLAG_THRESHOLD | FLAG_RATE | FLAG_STUCK | FLAG_ROBUST | FLAG_SHIFT

NEVER = -(2**63)  # timestamp sentinel: no reading yet

# Per-slot state columns. The Cython module mirrors this order in a cdef enum and refuses to import
# when the two disagree; snapshots name the columns, so a layout change still loads old snapshots.
# shift..prev and tshift..tprev are two Welford blocks of the same layout (count window, time window),
# and so are nobs/nsame and tnobs/tnsame.
FLOAT_FIELDS = ["shift", "mean", "cmean", "ssqdm", "cssq", "sabs", "prev", "rprev", "ewm_mean", "ewm_var",
                "tshift", "tmean", "tcmean", "tssqdm", "tcssq", "tsabs", "tprev",
                "lmean", "lvar", "hsum", "hw"]
INT_FIELDS = ["pos", "nfill", "nobs", "nsame", "last_ts", "prev_ts", "run_ts", "ewm_n",
              "tnobs", "tnsame", "tn", "ln", "hn", "srun"]
FLOAT_DEFAULTS = {"shift": 0.0, "mean": 0.0, "cmean": 0.0, "ssqdm": 0.0, "cssq": 0.0, "sabs": 0.0,
                  "prev": math.nan, "rprev": math.nan, "ewm_mean": math.nan, "ewm_var": math.nan,
                  "tshift": 0.0, "tmean": 0.0, "tcmean": 0.0, "tssqdm": 0.0, "tcssq": 0.0, "tsabs": 0.0,
                  "tprev": math.nan, "lmean": 0.0, "lvar": 0.0, "hsum": 0.0, "hw": 1.0}
INT_DEFAULTS = {"pos": 0, "nfill": 0, "nobs": 0, "nsame": 0, "last_ts": NEVER, "prev_ts": NEVER,
                "run_ts": NEVER, "ewm_n": 0, "tnobs": 0, "tnsame": 0, "tn": 0, "ln": 0, "hn": 0, "srun": 0}
# Per-slot detector settings (float64; counts and milliseconds are whole numbers).
PARAM_FIELDS = ["z_threshold", "robust_threshold", "lo", "hi", "max_rate", "stuck_count", "stuck_ms",
                "silence_ms", "shift_threshold", "time_window_ms"]

# ----------------------------------------------------------------------
# Distribution shift (the numbers both twins use; see _rolling.pyx "Distribution shift")

SHIFT_BINS = 16           # histogram bins of u = (x - long-run mean) / long-run sd ...
SHIFT_BIN_WIDTH = 0.5     # ... each 0.5 wide, centred on 0; the outer two take the tails beyond +-3.5
NO_BIN = 255              # ring entry with no bin (NaN, or the long-run reference was not warm yet)
FLAGGED_BIN = 128         # bit set on a ring entry whose reading was flagged (never learned)
LONG_ALPHA = 1.0 / 1000   # weight of a reading in the long-run mean and variance ...
LONG_N = 999              # ... after the first LONG_N (before: 1 / (n + 1), the plain mean and variance)
HIST_ALPHA = 1.0 / 2000   # weight of a reading in the long-run histogram
HIST_GROWTH = 1.0 / (1.0 - HIST_ALPHA)  # the histogram decays lazily: each new weight is this much larger
HIST_RESCALE = 2.0**20    # ... until it reaches this, when the histogram is rescaled to weight 1
HIST_FLOOR = 1e-4         # and every bin is raised to this share of the total (no bin ever has zero mass)
CLIP_SD = 4.0             # a reading moves the long-run mean by at most this many sd (times LONG_ALPHA)
PRIOR_WEIGHT = 20.0       # the histogram starts as a standard normal of this many readings


def _normal_bins() -> list[float]:
    edges = [(i - SHIFT_BINS // 2) * SHIFT_BIN_WIDTH for i in range(1, SHIFT_BINS)]
    cdf = [0.0] + [0.5 * math.erfc(-e / math.sqrt(2.0)) for e in edges] + [1.0]
    return [cdf[i + 1] - cdf[i] for i in range(SHIFT_BINS)]


PRIOR = [PRIOR_WEIGHT * q for q in _normal_bins()]  # starting histogram (weights)


def lsum(xs) -> float:
    """Left-to-right float sum, as the kernels add (``sum`` compensates from Python 3.12 on)."""
    t = 0.0
    for x in xs:
        t += x
    return t


FLOAT_DEFAULTS["hsum"] = lsum(PRIOR)


def xlogx_table(window: int) -> list[float]:
    """c * log(c) for c = 0..window (0 for c = 0): the entropy part of the relative entropy."""
    return [0.0] + [c * math.log(c) for c in range(1, window + 1)]


def log_table(window: int) -> list[float]:
    """log(c) for c = 0..window (-inf for c = 0, never used)."""
    return [-math.inf] + [math.log(c) for c in range(1, window + 1)]


def new_hist(n: int) -> np.ndarray:
    """Histogram state of ``n`` slots: per slot SHIFT_BINS weights, their logs, and the recent counts."""
    a = np.zeros((n, 3 * SHIFT_BINS), dtype=np.float64)
    a[:, :SHIFT_BINS] = PRIOR
    a[:, SHIFT_BINS:2 * SHIFT_BINS] = [math.log(q) for q in PRIOR]
    return a


def new_bins(n: int, window: int) -> np.ndarray:
    return np.full((n, window), NO_BIN, dtype=np.uint8)


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
    return {"window": int(stats.window), "min_count": int(stats.min_count),
            "ewm_alpha": float(stats.ewm_alpha), **{k: float(v) for k, v in stats.defaults.items()}}


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
    shift_threshold: relative entropy (nats) of the recent window's histogram against the long-run one
    (inf = off); time_window_ms: span of the time window (0 = off).
    """
    out = {"robust_threshold": 8.0, "lo": -math.inf, "hi": math.inf, "max_rate": math.inf,
           "stuck_count": 0.0, "stuck_ms": 0.0, "silence_ms": 0.0, "shift_threshold": 1.0,
           "time_window_ms": 0.0}
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


def restore_state(fields: dict[str, list[str]], arrays: dict[str, np.ndarray], window: int,
                  detectors: dict[str, float]):
    """Validated ``(fstate, istate, pstate, buf, sorted, tsring, bins, hist)`` from a loaded snapshot.

    Columns are matched by name; a snapshot from an older layout gets defaults for the new columns,
    its slots get ``detectors`` when it has no per-slot settings, the sorted windows are rebuilt from the
    rings when missing, and without time rings or histograms the time windows start empty and the
    long-run reference of the shift detector starts over.
    """
    from ._snapshot import remap

    fs = np.ascontiguousarray(remap(arrays["fstate"], fields["fstate"], FLOAT_FIELDS, FLOAT_DEFAULTS),
                              dtype=np.float64)
    gs = np.ascontiguousarray(remap(arrays["istate"], fields["istate"], INT_FIELDS, INT_DEFAULTS),
                              dtype=np.int64)
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
    bins = np.ascontiguousarray(arrays["bins"] if "bins" in arrays else new_bins(n, window), dtype=np.uint8)
    hist = np.ascontiguousarray(arrays["hist"] if "hist" in arrays else new_hist(n), dtype=np.float64)
    if not (fs.shape[0] == gs.shape[0] == ps.shape[0] == srt.shape[0] == tsr.shape[0] == bins.shape[0]
            == hist.shape[0] == n >= 1 and buf.shape[1] == srt.shape[1] == bins.shape[1] == window
            and tsr.shape[1] in (0, window) and hist.shape[1] == 3 * SHIFT_BINS):
        msg = (f"inconsistent snapshot shapes: fstate {fs.shape}, istate {gs.shape}, pstate {ps.shape}, "
               f"buf {buf.shape}, sorted {srt.shape}, tsring {tsr.shape}, bins {bins.shape}, "
               f"hist {hist.shape} for window={window}")
        raise ValueError(msg)
    return fs, gs, ps, buf, srt, tsr, bins, hist


def silent_slots(last_ts: np.ndarray, silence_ms: np.ndarray, now_ms: int) -> np.ndarray:
    """Slots heard from at least once whose silence_ms (> 0) has elapsed by ``now_ms``."""
    heard = last_ts != NEVER
    gap = np.where(heard, now_ms - np.where(heard, last_ts, 0), 0)
    return np.flatnonzero(heard & (silence_ms > 0) & (gap >= silence_ms)).astype(np.int64)
