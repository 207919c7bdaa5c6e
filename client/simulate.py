"""A fleet of simulated devices, each an iotstream.client.DeviceClient on its own Ingest/Stream, with
labelled anomalies. (The client brings reconnects, resends and pushback, so a simulated fleet behaves as
real devices do when the server restarts or throttles.)

Signals are realistic enough to exercise the detectors: a daily cycle, a slow drift, Gaussian noise,
and injected spikes whose positions are returned as labels. `device_signal(..., kinds=...)` also injects
the other labelled kinds of KINDS (level shifts, drifts, noise bursts, stuck runs, dropouts); the detection
benchmark (bench/detection.py) scores the detectors against these labels.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from iotstream.client.device import KEEPALIVE_OPTIONS, DeviceClient
from iotstream.v1 import ingest_pb2 as pb

METRICS = ("temperature", "humidity", "pressure")
# (level, daily amplitude, noise sd, drift per day) per metric
PROFILES = ((21.0, 3.0, 0.2, 0.5), (45.0, 8.0, 1.0, -1.0), (1013.0, 4.0, 0.5, 0.2))
DAY_MS = 86_400_000
WARMUP_POINTS = 40  # no spikes before the detectors have a window to judge them against
STREAMS_PER_CHANNEL = 100  # HTTP/2 caps concurrent streams per connection
MAX_INFLIGHT = 16  # batches sent ahead of their acks, per stream


# Labelled anomaly kinds. A spike is one reading; the others are segments of one metric's readings.
KINDS = ("spike", "level_shift", "drift", "noise_burst", "stuck", "dropout")
# Per segment kind: (shortest, longest) length in time points, and (smallest, largest) size in units of the
# metric's noise sd: the offset of a level shift, the offset a drift reaches at its end (and then keeps, like
# a sensor that has aged), the noise sd factor of a burst; stuck (the value freezes) and dropout (no readings)
# have no size.
SEGMENTS = {
    "level_shift": ((120, 400), (4.0, 8.0)),
    "drift": ((200, 500), (6.0, 12.0)),
    "noise_burst": ((30, 150), (4.0, 8.0)),
    "stuck": ((30, 200), (0.0, 0.0)),
    "dropout": ((30, 300), (0.0, 0.0)),
}
SEGMENT_WARMUP_POINTS = 300  # a slow change needs a long-run baseline to stand out against
SEGMENT_GAP_POINTS = 300  # normal points between two segments of one metric, so each is judged on its own


@dataclass(frozen=True)
class Anomaly:
    """One labelled anomaly of one metric: its readings from `start_ms` to `end_ms` inclusive (for a dropout,
    the readings that are missing; for a spike, the one reading)."""

    kind: str
    metric: int  # index into METRICS
    start_ms: int
    end_ms: int


@dataclass
class DeviceData:
    device_id: str
    time_ms: np.ndarray  # int64, per reading
    metric: np.ndarray  # uint32 index into METRICS, per reading
    values: np.ndarray  # float64, per reading
    spikes: np.ndarray  # indices of injected spike readings
    anomalies: list[Anomaly] = field(default_factory=list)  # every label, spikes included, by start time


def device_signal(
    device_id: str,
    readings: int,
    end_ms: int,
    interval_ms: int,
    anomaly_fraction: float,
    rng: np.random.Generator,
    kinds: Sequence[str] = ("spike",),
) -> DeviceData:
    """`readings` readings cycling over METRICS, one time point per cycle, ending at `end_ms`.

    Each kind in `kinds` (see KINDS) gets `round(anomaly_fraction * readings)` injected anomalies: spikes
    of 12-20 noise sd after WARMUP_POINTS, and segments as in SEGMENTS on random metrics after
    SEGMENT_WARMUP_POINTS, never closer than SEGMENT_GAP_POINTS to another segment of the same metric (a
    segment that finds no room is left out). Dropped readings are removed, so `spikes` indexes the returned
    arrays. With the default `kinds=("spike",)` the output is what it always was for the same generator.
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        msg = f"unknown anomaly kind(s) {unknown}; known: {list(KINDS)}"
        raise ValueError(msg)
    index = np.arange(readings)
    point = index // len(METRICS)
    metric = (index % len(METRICS)).astype(np.uint32)
    n_points = int(point[-1]) + 1 if readings else 0
    time_ms = end_ms - (n_points - 1 - point).astype(np.int64) * interval_ms
    prof = np.array(PROFILES)[metric]
    phase = rng.uniform(0, 2 * math.pi)
    days = time_ms / DAY_MS
    values = (
        prof[:, 0] * rng.uniform(0.95, 1.05)
        + prof[:, 1] * np.sin(2 * math.pi * days + phase)
        + prof[:, 3] * (days - days[0] if readings else 0)
        + rng.normal(0, 1, readings) * prof[:, 2]
    )
    if "spike" in kinds:
        eligible = np.flatnonzero(point >= WARMUP_POINTS)
        n_spikes = min(len(eligible), int(round(anomaly_fraction * readings)))
        spikes = np.sort(rng.choice(eligible, n_spikes, replace=False)) if n_spikes else np.empty(0, np.int64)
        values[spikes] += rng.choice([-1, 1], n_spikes) * rng.uniform(12, 20, n_spikes) * prof[spikes, 2]
    else:
        spikes = np.empty(0, np.int64)
    segments = [k for k in kinds if k != "spike"]
    if not segments:
        labels = [Anomaly("spike", int(metric[i]), int(time_ms[i]), int(time_ms[i])) for i in spikes.tolist()]
        return DeviceData(device_id, time_ms, metric, values, spikes, labels)
    keep = np.ones(readings, dtype=bool)
    placed = _place_segments(segments, int(round(anomaly_fraction * readings)), readings, rng)
    # additive changes first, then freezing (a stuck sensor repeats what it last showed), then dropping
    order = sorted(placed, key=lambda seg: (seg[0] in ("stuck", "dropout"), seg[0] == "dropout"))
    for kind, m, rows, size, sign in order:
        sd = PROFILES[m][2]
        if kind == "level_shift":
            values[rows] += sign * size * sd
        elif kind == "drift":
            values[rows] += sign * size * sd * np.arange(1, len(rows) + 1) / len(rows)
            later = np.arange(rows[-1] + len(METRICS), readings, len(METRICS))
            values[later] += sign * size * sd
        elif kind == "noise_burst":
            values[rows] += rng.normal(0, sd * math.sqrt(size * size - 1), len(rows))
        elif kind == "stuck":
            values[rows] = values[rows[0] - len(METRICS)]
        else:
            keep[rows] = False
    labels = [
        Anomaly(kind, m, int(time_ms[rows[0]]), int(time_ms[rows[-1]])) for kind, m, rows, _, _ in placed
    ]
    # a spike inside another anomaly is part of it (frozen or dropped, or drowned in a burst), not its own
    inside = np.zeros(readings, dtype=bool)
    for _, _, rows, _, _ in placed:
        inside[rows] = True
    spikes = spikes[~inside[spikes]]
    labels += [Anomaly("spike", int(metric[i]), int(time_ms[i]), int(time_ms[i])) for i in spikes.tolist()]
    labels.sort(key=lambda a: (a.start_ms, a.metric, a.kind))
    new_index = np.cumsum(keep) - 1
    spikes = new_index[spikes].astype(np.int64)
    return DeviceData(device_id, time_ms[keep], metric[keep], values[keep], spikes, labels)


def _place_segments(kinds: list[str], per_kind: int, readings: int, rng: np.random.Generator):
    """Random non-overlapping segments: (kind, metric, reading indices, size, sign) per placed segment."""
    n_metrics = len(METRICS)
    taken: list[list[tuple[int, int]]] = [[] for _ in METRICS]
    placed = []
    for kind in kinds:
        (short, long), (small, large) = SEGMENTS[kind]
        for _ in range(per_kind):
            m = int(rng.integers(n_metrics))
            length = int(rng.integers(short, long + 1))
            size, sign = float(rng.uniform(small, large)), int(rng.choice([-1, 1]))
            last = (readings - 1 - m) // n_metrics  # last point of metric m
            for _try in range(50):
                if last - length < SEGMENT_WARMUP_POINTS:
                    break
                start = int(rng.integers(SEGMENT_WARMUP_POINTS, last - length + 1))
                if all(
                    start + length + SEGMENT_GAP_POINTS <= a or b + SEGMENT_GAP_POINTS <= start
                    for a, b in taken[m]
                ):
                    taken[m].append((start, start + length))
                    rows = np.arange(start, start + length) * n_metrics + m
                    placed.append((kind, m, rows, size, sign))
                    break
    return placed


def batches(data: DeviceData, size: int) -> list[pb.ReadingBatch]:
    out = []
    for seq, start in enumerate(range(0, len(data.values), size), start=1):
        sl = slice(start, start + size)
        base = int(data.time_ms[sl][0])
        out.append(
            pb.ReadingBatch(
                device_id=data.device_id,
                seq=seq,
                base_time_ms=base,
                time_offset_ms=(data.time_ms[sl] - base).tolist(),
                metric_names=METRICS,
                metric_index=data.metric[sl].tolist(),
                values=data.values[sl].tolist(),
            )
        )
    return out


@dataclass
class Tally:
    sent: int = 0
    acked: int = 0
    rejected: int = 0
    batches: int = 0
    ack_ms: list[float] = field(default_factory=list)


class RateLimit:
    """Shared token bucket over all streams, in readings per second (None: unlimited)."""

    def __init__(self, rate: float | None):
        self.rate = rate
        self.start = time.monotonic()
        self.granted = 0

    async def wait(self, readings: int) -> None:
        if not self.rate:
            return
        self.granted += readings
        delay = self.start + self.granted / self.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def stream_device(
    channel, data: DeviceData, batch_size: int, tally: Tally, limit: RateLimit, token: str | None = None
) -> None:
    """Record the device's readings a batch at a time (paced by `limit`) and wait until all are acked."""

    def on_ack(ack: pb.Ack, seconds: float) -> None:
        tally.ack_ms.append(seconds * 1000)
        tally.acked += ack.accepted
        tally.rejected += len(ack.rejected)
        tally.batches += 1

    client = DeviceClient(
        "",
        data.device_id,
        token,
        batch_readings=batch_size,
        max_inflight=MAX_INFLIGHT,
        channel=channel,
        on_ack=on_ack,
        on_rejected=lambda rejected: None,
    )
    await client.start()
    try:
        times, metric, values = data.time_ms.tolist(), data.metric.tolist(), data.values.tolist()
        for start in range(0, len(values), batch_size):
            end = min(start + batch_size, len(values))
            await limit.wait(end - start)
            await client.room()
            for i in range(start, end):
                client.record(METRICS[metric[i]], values[i], times[i])
            tally.sent += end - start
        await client.flush()
    finally:
        await client.close()


async def run_fleet(
    target: str,
    devices: int,
    readings: int,
    batch: int = 100,
    rate: float | None = None,
    anomalies: float = 0.001,
    seed: int = 0,
    interval_ms: int = 1000,
    prefix: str = "sim",
    progress: bool = False,
    tokens: dict[str, str] | None = None,
    tls=None,
    kinds: Sequence[str] = ("spike",),
    quantize: bool = False,
) -> tuple[dict, list[DeviceData]]:
    """Stream every device's readings and wait for every ack; returns (summary, the generated data).

    `tokens` maps device ids to their bearer tokens (servers with auth on); `tls` is an
    iotstream.common.tls.ClientTLS (servers with TLS on)."""
    from iotstream.common.tls import aio_channel

    rng = np.random.default_rng(seed)
    end_ms = time.time_ns() // 1_000_000
    fleet = [
        device_signal(f"{prefix}-{i:05d}", readings, end_ms, interval_ms, anomalies, rng, kinds)
        for i in range(devices)
    ]
    if quantize:  # real sensors' resolutions (iotstream.client.signals.RESOLUTION)
        from iotstream.client.signals import quantize as to_resolution

        fleet = [to_resolution(d) for d in fleet]
    n_channels = math.ceil(devices / STREAMS_PER_CHANNEL)
    channels = [aio_channel(target, tls, KEEPALIVE_OPTIONS) for _ in range(n_channels)]
    tally, limit = Tally(), RateLimit(rate)
    started = time.perf_counter()
    reporter = asyncio.create_task(report_progress(tally, devices * readings)) if progress else None
    try:
        await asyncio.gather(
            *(
                stream_device(
                    channels[i // STREAMS_PER_CHANNEL],
                    d,
                    batch,
                    tally,
                    limit,
                    (tokens or {}).get(d.device_id),
                )
                for i, d in enumerate(fleet)
            )
        )
    finally:
        if reporter:
            reporter.cancel()
        for ch in channels:
            await ch.close()
    elapsed = time.perf_counter() - started
    lat = np.array(tally.ack_ms) if tally.ack_ms else np.zeros(1)
    summary = {
        "devices": devices,
        "sent": tally.sent,
        "acked": tally.acked,
        "rejected": tally.rejected,
        "batches": tally.batches,
        "batch_size": batch,
        "seconds": round(elapsed, 3),
        "readings_per_s": round(tally.acked / elapsed, 1) if elapsed else 0.0,
        "ack_p50_ms": round(float(np.percentile(lat, 50)), 2),
        "ack_p99_ms": round(float(np.percentile(lat, 99)), 2),
        "injected_anomalies": int(sum(len(d.anomalies) for d in fleet)),
        "injected_by_kind": {k: sum(a.kind == k for d in fleet for a in d.anomalies) for k in kinds},
    }
    return summary, fleet


async def report_progress(tally: Tally, total: int) -> None:
    while True:
        await asyncio.sleep(1.0)
        print(f"  sent {tally.sent:,}/{total:,} readings, acked {tally.acked:,}", file=sys.stderr, flush=True)
