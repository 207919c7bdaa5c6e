"""Types of ``rolling.py``'s public face (the source is typed for Cython, not for mypy)."""

from typing import TypedDict, Unpack

import numpy as np
import numpy.typing as npt

COMPILED: bool
FLAG_ZSCORE: int

class Detectors(TypedDict, total=False):
    """Per-slot detector settings besides z_threshold (``_common.check_detectors``)."""

    robust_threshold: float
    lo: float
    hi: float
    max_rate: float
    stuck_count: int
    stuck_ms: int
    silence_ms: int
    shift_threshold: float
    time_window_ms: int

class Settings(Detectors, total=False):
    z_threshold: float

class RollingStats:
    window: int  # int64_t, readonly
    min_count: int  # int64_t, readonly (clamped to [2, window])
    z_threshold: float  # double, readonly (default per-slot z threshold)
    ewm_alpha: float  # double, readonly
    defaults: dict[str, float]  # default per-slot detector settings (_common.PARAM_FIELDS)
    def __init__(
        self,
        window: int = ...,
        min_count: int = ...,
        z_threshold: float = ...,
        capacity: int = ...,
        *,
        ewm_alpha: float = ...,
        **detectors: Unpack[Detectors],
    ) -> None: ...
    @property
    def nslots(self) -> int: ...
    def update(
        self,
        slots: npt.ArrayLike,  # const int64_t[::1], each >= 0
        ts_ms: npt.ArrayLike,  # const int64_t[::1]
        values: npt.ArrayLike,  # const float64_t[::1]
        dominant: bool = ...,
    ) -> tuple[npt.NDArray[np.float64], ...]:  # z, combined score in [0, 1), flags (uint8 FLAG_* bits),
        ...  # and with dominant=True the flag of the strongest detector that fired (uint8; on an unflagged
        # reading FLAG_SHIFT while a change reported earlier holds, else 0)
    def configure(
        self,
        slots: npt.ArrayLike,  # int64
        **settings: Unpack[Settings],
    ) -> None: ...
    def settings(self, slot: int) -> dict[str, float]: ...
    def silent(self, now_ms: int) -> npt.NDArray[np.int64]: ...
    def mean(self, slot: int) -> float: ...
    def var(self, slot: int) -> float: ...
    def count(self, slot: int) -> int: ...
    def tmean(self, slot: int) -> float: ...
    def tvar(self, slot: int) -> float: ...
    def tcount(self, slot: int) -> int: ...
    def cusum(self, slot: int) -> float: ...
    def resolution(self, slot: int) -> float: ...
    def kind(self, slot: int) -> str: ...
    def min(self, slot: int) -> float: ...
    def max(self, slot: int) -> float: ...
    def median(self, slot: int) -> float: ...
    def mad(self, slot: int) -> float: ...
    def ewm_mean(self, slot: int) -> float: ...
    def ewm_var(self, slot: int) -> float: ...
    def last_ts(self, slot: int) -> int | None: ...
    def to_bytes(self) -> bytes: ...
    @classmethod
    def from_bytes(cls, data: bytes) -> RollingStats: ...
