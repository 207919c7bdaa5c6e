"""Normal signals as real sensors make them: quantized, binary, counters, daily cycles (no anomalies).

The simulator's own signals are full-precision Gaussian noise around a daily cycle; real fleets are mostly
not. Each kind of ``NORMAL`` is a perfectly normal signal of one real sensor type, generated in time (so
the same kind sampled every 1 s, 10 s or 60 s is the same physical process), for measuring false alarms:
``bench/detection.py --normal`` and the false-alarm test stream them through the default rules, and
``iotstream simulate --quantize`` rounds the simulator's own fleet to real sensors' resolutions.
"""

from __future__ import annotations

import math

import numpy as np

DAY_MS = 86_400_000

# kind -> what it models (the rows of issue 11's table, plus counters and daily cycles)
NORMAL = {
    "temperature_q": "temperature at 0.1 degC resolution, noise sd 0.03",
    "temperature_q_cycle": "temperature at 0.1 degC resolution, noise sd 0.05, daily cycle of +-3 degC",
    "humidity_q": "relative humidity at 1 % resolution, noise sd 0.3",
    "door": "door contact 0/1, open 1 % of the time (openings of 30 s on average)",
    "gaussian": "full-precision Gaussian noise (what the simulator makes)",
    "cycle": "full-precision daily cycle of +-3 with noise sd 0.2",
    "counter": "pulse counter: Poisson counts at 2/s, wrapping to 0 at 2**16",
}
# the steps real sensors report in, per simulator metric (iotstream.client.simulate.METRICS)
RESOLUTION = {"temperature": 0.1, "humidity": 1.0, "pressure": 0.1}
DOOR_OPEN_S, DOOR_SHARE = 30.0, 0.01
COUNTER_RATE, COUNTER_WRAP = 2.0, 2**16


def daily(t_ms: np.ndarray, amplitude: float, phase: float) -> np.ndarray:
    return amplitude * np.sin(2 * math.pi * (t_ms % DAY_MS) / DAY_MS + phase)


def normal_signal(
    kind: str, n: int, interval_ms: int, rng: np.random.Generator, start_ms: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` readings of one key of ``kind``, one every ``interval_ms``: ``(time_ms, values)``."""
    t = start_ms + interval_ms * np.arange(n, dtype=np.int64)
    phase = rng.uniform(0, 2 * math.pi)
    if kind == "temperature_q":
        v = np.round((21.0 + rng.normal(0, 0.03, n)) * 10) / 10
    elif kind == "temperature_q_cycle":
        v = np.round((21.0 + daily(t, 3.0, phase) + rng.normal(0, 0.05, n)) * 10) / 10
    elif kind == "humidity_q":
        v = np.round(45.0 + rng.normal(0, 0.3, n))
    elif kind == "door":
        v = door(n, interval_ms / 1000, rng)
    elif kind == "gaussian":
        v = 20.0 + rng.normal(0, 1.0, n)
    elif kind == "cycle":
        v = 20.0 + daily(t, 3.0, phase) + rng.normal(0, 0.2, n)
    elif kind == "counter":
        start = rng.integers(0, COUNTER_WRAP)
        counts = (start + np.cumsum(rng.poisson(COUNTER_RATE * interval_ms / 1000, n))) % COUNTER_WRAP
        v = counts.astype(np.float64)
    else:
        msg = f"unknown normal signal kind {kind!r}; known: {sorted(NORMAL)}"
        raise ValueError(msg)
    return t, v


def door(n: int, dt_s: float, rng: np.random.Generator) -> np.ndarray:
    """Two-state Markov chain in continuous time, sampled every ``dt_s``: open DOOR_SHARE of the time."""
    p_open = -math.expm1(-dt_s * DOOR_SHARE / ((1 - DOOR_SHARE) * DOOR_OPEN_S))
    p_close = -math.expm1(-dt_s / DOOR_OPEN_S)
    u = rng.random(n)
    out = np.empty(n)
    state = 0.0
    for i in range(n):  # a Python loop, but only for the test sizes (a day at 1 s is 86,400 steps)
        if state == 0.0 and u[i] < p_open or state == 1.0 and u[i] < p_close:
            state = 1.0 - state
        out[i] = state
    return out


def quantize(data):
    """Round a simulated device's readings (``iotstream.client.simulate.DeviceData``) to RESOLUTION, in
    place."""
    from iotstream.client.simulate import METRICS

    for m, name in enumerate(METRICS):
        sel = data.metric == m
        data.values[sel] = np.round(data.values[sel] / RESOLUTION[name]) * RESOLUTION[name]
    return data
