"""Rolling statistics kernels: the compiled ``_rolling`` module, or its pure-Python twin ``rolling_py``.

The compiled module is picked at import time; if it is missing (not built, or built for another Python)
the twin is used and a warning is logged. ``IOTSTREAM_PURE_PYTHON=1`` forces the twin. ``IMPLEMENTATION``
says which one is in use ("cython" or "python"). Both give bit-identical results and snapshots.
"""

from __future__ import annotations

import logging
import os

from ._common import (
    ANOMALY_FLAGS,
    FLAG_LATE,
    FLAG_NAMES,
    FLAG_RATE,
    FLAG_ROBUST,
    FLAG_SHIFT,
    FLAG_SILENCE,
    FLAG_STUCK,
    FLAG_THRESHOLD,
    FLAG_ZSCORE,
    SILENCE_SCORE,
)
from .rules import RuleBook, Rules, load_rules, parse_rules
from .tracker import Episode, EpisodeEvent, EpisodeTracker

logger = logging.getLogger(__name__)

if os.environ.get("IOTSTREAM_PURE_PYTHON", "") not in ("", "0"):
    from .rolling_py import RollingStats

    IMPLEMENTATION = "python"
else:
    try:
        from ._rolling import RollingStats  # type: ignore[assignment]  # the compiled twin
    except ImportError as exc:
        logger.warning(
            "iotstream.ext: compiled kernels unavailable (%s); using the pure-Python twin, "
            "which is about two orders of magnitude slower",
            exc,
        )
        from .rolling_py import RollingStats

        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "cython"

__all__ = [
    "ANOMALY_FLAGS",
    "FLAG_LATE",
    "FLAG_NAMES",
    "FLAG_RATE",
    "FLAG_ROBUST",
    "FLAG_SHIFT",
    "FLAG_SILENCE",
    "FLAG_STUCK",
    "FLAG_THRESHOLD",
    "FLAG_ZSCORE",
    "IMPLEMENTATION",
    "Episode",
    "EpisodeEvent",
    "EpisodeTracker",
    "RollingStats",
    "RuleBook",
    "Rules",
    "SILENCE_SCORE",
    "load_rules",
    "parse_rules",
]
