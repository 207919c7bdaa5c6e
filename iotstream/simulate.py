"""A fleet of simulated devices, each on its own bidirectional Ingest/Stream, with labelled anomalies.

Signals are realistic enough to exercise the detectors: a daily cycle, a slow drift, Gaussian noise,
and injected spikes whose positions are returned as labels.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from iotstream.v1 import ingest_pb2 as pb
from iotstream.v1 import ingest_pb2_grpc as pb_grpc

METRICS = ("temperature", "humidity", "pressure")
# (level, daily amplitude, noise sd, drift per day) per metric
PROFILES = ((21.0, 3.0, 0.2, 0.5), (45.0, 8.0, 1.0, -1.0), (1013.0, 4.0, 0.5, 0.2))
DAY_MS = 86_400_000
WARMUP_POINTS = 40  # no spikes before the detectors have a window to judge them against
STREAMS_PER_CHANNEL = 100  # HTTP/2 caps concurrent streams per connection
MAX_INFLIGHT = 16  # batches sent ahead of their acks, per stream


@dataclass
class DeviceData:
    device_id: str
    time_ms: np.ndarray  # int64, per reading
    metric: np.ndarray  # uint32 index into METRICS, per reading
    values: np.ndarray  # float64, per reading
    spikes: np.ndarray  # indices of injected spike readings


def device_signal(device_id: str, readings: int, end_ms: int, interval_ms: int, anomaly_fraction: float,
                  rng: np.random.Generator) -> DeviceData:
    """`readings` readings cycling over METRICS, one time point per cycle, ending at `end_ms`."""
    index = np.arange(readings)
    point = index // len(METRICS)
    metric = (index % len(METRICS)).astype(np.uint32)
    n_points = int(point[-1]) + 1 if readings else 0
    time_ms = end_ms - (n_points - 1 - point).astype(np.int64) * interval_ms
    prof = np.array(PROFILES)[metric]
    phase = rng.uniform(0, 2 * math.pi)
    days = time_ms / DAY_MS
    values = (prof[:, 0] * rng.uniform(0.95, 1.05) + prof[:, 1] * np.sin(2 * math.pi * days + phase)
              + prof[:, 3] * (days - days[0] if readings else 0) + rng.normal(0, 1, readings) * prof[:, 2])
    eligible = np.flatnonzero(point >= WARMUP_POINTS)
    n_spikes = min(len(eligible), int(round(anomaly_fraction * readings)))
    spikes = np.sort(rng.choice(eligible, n_spikes, replace=False)) if n_spikes else np.empty(0, np.int64)
    values[spikes] += rng.choice([-1, 1], n_spikes) * rng.uniform(12, 20, n_spikes) * prof[spikes, 2]
    return DeviceData(device_id, time_ms, metric, values, spikes)


def batches(data: DeviceData, size: int) -> list[pb.ReadingBatch]:
    out = []
    for seq, start in enumerate(range(0, len(data.values), size), start=1):
        sl = slice(start, start + size)
        base = int(data.time_ms[sl][0])
        out.append(pb.ReadingBatch(device_id=data.device_id, seq=seq, base_time_ms=base,
                                   time_offset_ms=(data.time_ms[sl] - base).tolist(), metric_names=METRICS,
                                   metric_index=data.metric[sl].tolist(), values=data.values[sl].tolist()))
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


async def stream_device(stub, data: DeviceData, batch_size: int, tally: Tally, limit: RateLimit,
                        token: str | None = None) -> None:
    call = stub.Stream(metadata=(("authorization", f"Bearer {token}"),) if token else None)
    sent_at: dict[int, float] = {}
    window = asyncio.Semaphore(MAX_INFLIGHT)
    items = batches(data, batch_size)

    async def send():
        for b in items:
            await window.acquire()
            await limit.wait(len(b.values))
            sent_at[b.seq] = time.perf_counter()
            await call.write(b)
            tally.sent += len(b.values)
        await call.done_writing()

    writer = asyncio.create_task(send())
    try:
        async for ack in call:
            tally.ack_ms.append((time.perf_counter() - sent_at.pop(ack.seq)) * 1000)
            tally.acked += ack.accepted
            tally.rejected += len(ack.rejected)
            tally.batches += 1
            window.release()
        await writer
    finally:
        writer.cancel()


async def run_fleet(target: str, devices: int, readings: int, batch: int = 100, rate: float | None = None,
                    anomalies: float = 0.001, seed: int = 0, interval_ms: int = 1000, prefix: str = "sim",
                    progress: bool = False, tokens: dict[str, str] | None = None,
                    tls=None) -> tuple[dict, list[DeviceData]]:
    """Stream every device's readings and wait for every ack; returns (summary, the generated data).

    `tokens` maps device ids to their bearer tokens (servers with auth on); `tls` is an
    iotstream.tls.ClientTLS (servers with TLS on)."""
    from iotstream.tls import aio_channel

    rng = np.random.default_rng(seed)
    end_ms = time.time_ns() // 1_000_000
    fleet = [device_signal(f"{prefix}-{i:05d}", readings, end_ms, interval_ms, anomalies, rng)
             for i in range(devices)]
    channels = [aio_channel(target, tls) for _ in range(math.ceil(devices / STREAMS_PER_CHANNEL))]
    tally, limit = Tally(), RateLimit(rate)
    started = time.perf_counter()
    reporter = asyncio.create_task(report_progress(tally, devices * readings)) if progress else None
    try:
        stubs = [pb_grpc.IngestStub(ch) for ch in channels]
        await asyncio.gather(*(stream_device(stubs[i // STREAMS_PER_CHANNEL], d, batch, tally, limit,
                                             (tokens or {}).get(d.device_id))
                               for i, d in enumerate(fleet)))
    finally:
        if reporter:
            reporter.cancel()
        for ch in channels:
            await ch.close()
    elapsed = time.perf_counter() - started
    lat = np.array(tally.ack_ms) if tally.ack_ms else np.zeros(1)
    summary = {
        "devices": devices, "sent": tally.sent, "acked": tally.acked, "rejected": tally.rejected,
        "batches": tally.batches, "batch_size": batch, "seconds": round(elapsed, 3),
        "readings_per_s": round(tally.acked / elapsed, 1) if elapsed else 0.0,
        "ack_p50_ms": round(float(np.percentile(lat, 50)), 2),
        "ack_p99_ms": round(float(np.percentile(lat, 99)), 2),
        "injected_anomalies": int(sum(len(d.spikes) for d in fleet)),
    }
    return summary, fleet


async def report_progress(tally: Tally, total: int) -> None:
    while True:
        await asyncio.sleep(1.0)
        print(f"  sent {tally.sent:,}/{total:,} readings, acked {tally.acked:,}", file=sys.stderr, flush=True)
