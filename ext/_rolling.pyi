"""Type stub for the compiled kernels (``_rolling.pyx``); ``rolling_py`` has the same signatures."""

import numpy as np
import numpy.typing as npt

FLAG_ZSCORE: int

class RollingStats:
    window: int  # int64_t, readonly
    min_count: int  # int64_t, readonly (clamped to >= 2)
    z_threshold: float  # double, readonly
    def __init__(
        self, window: int = ..., min_count: int = ..., z_threshold: float = ..., capacity: int = ...
    ) -> None: ...
    @property
    def nslots(self) -> int: ...
    def update(
        self,
        slots: npt.ArrayLike,  # const int64_t[::1], each >= 0
        ts_ms: npt.ArrayLike,  # const int64_t[::1]
        values: npt.ArrayLike,  # const float64_t[::1]
    ) -> tuple[
        npt.NDArray[np.float64],  # z
        npt.NDArray[np.float64],  # score in [0, 1)
        npt.NDArray[np.uint8],  # flags
    ]: ...
    def mean(self, slot: int) -> float: ...
    def var(self, slot: int) -> float: ...
    def count(self, slot: int) -> int: ...
    def to_bytes(self) -> bytes: ...
    @classmethod
    def from_bytes(cls, data: bytes) -> RollingStats: ...
