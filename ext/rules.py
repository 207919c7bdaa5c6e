"""Per-metric detector rules, read from a TOML file (``tomllib``), with defaults when absent.

File format::

    # rules.toml: every key is optional; [default] applies to every metric, a [metrics.NAME] table
    # overrides it for metrics whose name equals NAME or matches it as a glob ("vibration.*").
    [default]
    z_threshold = 6.0          # |z| over the count window
    robust_threshold = 8.0     # |robust z| (median/MAD); inf or "off" disables
    shift_threshold = 10.0     # CUSUM of standardized residuals (sd) to report a change; "off" disables
    silence_ms = 300000        # report a key not heard from for 5 min (0 = off)
    time_window_ms = 60000     # also keep mean/variance over the last minute (0 = off)

    [metrics.temperature]
    lo = -40.0                 # static limits
    hi = 85.0
    max_rate = 5.0             # largest |change| per second
    stuck_count = 30           # the same value 30 times in a row ...
    stuck_ms = 600000          # ... or for 10 min (0 = off)

An exact metric name wins over globs; globs are tried in file order. Unknown keys are errors naming the
table and the key, so a typo never silently disables a detector.
"""

from __future__ import annotations

import fnmatch
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ._common import check_detectors


@dataclass(frozen=True)
class Rules:
    """Detector settings of one metric (the per-slot settings of ``RollingStats.configure``)."""

    z_threshold: float = 6.0
    robust_threshold: float = 8.0
    lo: float = -math.inf
    hi: float = math.inf
    max_rate: float = math.inf
    stuck_count: int = 0
    stuck_ms: int = 0
    silence_ms: int = 0
    shift_threshold: float = 10.0
    time_window_ms: int = 0

    def __post_init__(self) -> None:
        check_detectors(**asdict(self))

    def settings(self) -> dict[str, float]:
        """Keyword arguments for ``RollingStats.configure``."""
        return {k: float(v) for k, v in asdict(self).items()}


_KEYS = {f.name for f in fields(Rules)}


@dataclass(frozen=True)
class RuleBook:
    """Rules for every metric: ``default`` plus per-metric overrides (exact names and globs)."""

    default: Rules = field(default_factory=Rules)
    metrics: dict[str, Rules] = field(default_factory=dict)

    def for_metric(self, metric: str) -> Rules:
        if metric in self.metrics:
            return self.metrics[metric]
        for pattern, rules in self.metrics.items():
            if fnmatch.fnmatchcase(metric, pattern):
                return rules
        return self.default

    def apply(self, stats, slots, metric: str) -> None:
        """Configure ``slots`` (all of metric ``metric``) of a ``RollingStats``."""
        stats.configure(slots, **self.for_metric(metric).settings())


def _values(table: dict, where: str) -> dict:
    out = {}
    for k, v in table.items():
        if k not in _KEYS:
            msg = f"{where}: unknown key {k!r}; known: {sorted(_KEYS)}"
            raise ValueError(msg)
        if v == "off":
            v = 0 if k in ("stuck_count", "stuck_ms", "silence_ms", "time_window_ms") else math.inf
        if isinstance(v, bool) or not isinstance(v, int | float):
            msg = f'{where}: {k} must be a number or "off", got {v!r}'
            raise ValueError(msg)
        out[k] = v
    return out


def parse_rules(text: str, source: str = "<rules>") -> RuleBook:
    """Parse rules TOML; errors name ``source``, the table and the key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = f"{source}: {exc}"
        raise ValueError(msg) from exc
    extra = set(doc) - {"default", "metrics"}
    if extra:
        msg = f"{source}: unknown top-level table(s) {sorted(extra)}; expected [default] and [metrics.*]"
        raise ValueError(msg)
    try:
        default = Rules(**_values(doc.get("default", {}), f"{source} [default]"))
        metrics = {
            name: replace(default, **_values(tab, f"{source} [metrics.{name}]"))
            for name, tab in doc.get("metrics", {}).items()
        }
    except ValueError as exc:
        if str(exc).startswith(source):
            raise
        msg = f"{source}: {exc}"
        raise ValueError(msg) from exc
    return RuleBook(default, metrics)


def load_rules(path: str | Path | None) -> RuleBook:
    """Rules from ``path``; built-in defaults when ``path`` is None or the file does not exist."""
    if path is None or not Path(path).exists():
        return RuleBook()
    return parse_rules(Path(path).read_text(), str(path))
