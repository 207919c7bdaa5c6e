"""Rolling statistics kernels: ``rolling.py``, compiled by Cython when built, else run as plain Python.

One source serves both: ``setup.py`` compiles ``rolling.py`` into an extension module of the same name,
which Python imports in its place. If it is missing (not built, or built for another Python) the source
itself runs and a warning is logged. ``IOTSTREAM_PURE_PYTHON=1`` forces the source; ``load_pure()`` loads
it whatever is built (the parity tests' reference). ``IMPLEMENTATION`` says which one is in use
("cython" or "python"). Both give bit-identical results and snapshots.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

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


def load_pure() -> ModuleType:
    """``rolling.py`` executed as plain Python (module ``iotstream.ext.rolling_pure``), even where the
    compiled module exists: the reference the compiled one is compared with."""
    name = f"{__name__}.rolling_pure"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("rolling.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _kernel() -> ModuleType:
    if os.environ.get("IOTSTREAM_PURE_PYTHON", "") not in ("", "0"):
        return load_pure()
    try:
        rolling = importlib.import_module(f"{__name__}.rolling")
    except ImportError as exc:  # a build that does not load (e.g. for another platform)
        logger.warning(
            "iotstream.ext: compiled kernels do not load (%s); using the pure-Python source, "
            "which is about two orders of magnitude slower",
            exc,
        )
        return load_pure()
    if not rolling.COMPILED:
        logger.warning(
            "iotstream.ext: compiled kernels not built; using the pure-Python source, "
            "which is about two orders of magnitude slower"
        )
    return rolling


_KERNEL = _kernel()
RollingStats = _KERNEL.RollingStats
IMPLEMENTATION = "cython" if _KERNEL.COMPILED else "python"

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
    "load_pure",
    "load_rules",
    "parse_rules",
]
