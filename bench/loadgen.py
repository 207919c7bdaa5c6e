"""One load generator for every server the benchmarks compare: gRPC Ingest/Stream or Ingest/Send with
ReadingBatch messages, or HTTP POST of the same readings as row-oriented JSON.

    python -m iotstream.bench.loadgen --target grpc://127.0.0.1:50051 --readings 1000 --streams 8 --window 8
    \\
        --duration 5 [--mode stream|send] [--rate MSG/S] [--json]
    python -m iotstream.bench.loadgen --target http://127.0.0.1:8000/ingest --readings 1 ...

Equivalent load: at most streams x window messages are outstanding at any time. A gRPC stream pipelines up
to `window` messages ahead of its acks (devices do); HTTP/1.1 cannot pipeline, so the HTTP load uses
streams x window keep-alive connections with one request each; unary Send uses streams x window concurrent
calls. Every message is built before the clock starts, except its seq (and, on gRPC, its base time), so
the generator spends its CPU on the transport. Each stream is one device; seq increases per message (the
processor stores a repeated (device, seq, readings) once, so repeats would measure deduplication).

`--rate` makes the load open-loop: messages are due at a fixed pace (spread over all streams), and a
message that cannot go out because its window is full goes late; achieved < offered shows the server
could not keep up. Without it the load is closed-loop (as fast as acks allow).

Figures cover the measurement interval only (after `--warmup` seconds): messages and readings acked in it,
and send-to-ack latency of the messages sent in it. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import resource
import sys
import time

import numpy as np

METRICS = ("temperature", "humidity", "pressure")
STREAMS_PER_CHANNEL = 100


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Meter:
    """Counts acks inside [start, end) and keeps send-to-ack latencies of messages sent inside it."""

    def __init__(self, warmup: float, duration: float):
        t0 = time.perf_counter()
        self.start, self.end = t0 + warmup, t0 + warmup + duration
        self.sent = self.acked = self.readings = self.rejected = self.errors = 0
        self.latency_ms: list[float] = []
        self.error_samples: list[str] = []

    def ack(self, sent_at: float, accepted: int, rejected: int = 0) -> None:
        now = time.perf_counter()
        if self.start <= now < self.end:
            self.acked += 1
            self.readings += accepted
            self.rejected += rejected
        if self.start <= sent_at < self.end:
            self.latency_ms.append((now - sent_at) * 1000)

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(f"{type(exc).__name__}: {exc}"[:300])

    @property
    def sending(self) -> bool:
        return time.perf_counter() < self.end


class Pacer:
    """Open-loop schedule: the k-th message overall is due at start + k / rate (None: no pacing)."""

    def __init__(self, rate: float | None):
        self.rate = rate
        self.t0 = time.perf_counter()
        self.k = 0

    async def wait(self) -> None:
        if not self.rate:
            return
        due = self.t0 + self.k / self.rate
        self.k += 1
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)


def signal(readings: int, stream: int) -> tuple[list[int], list[int], list[float]]:
    """Offsets (ms, newest at 0), metric indexes and values of one message: metrics cycle, 1 s apart."""
    rng = np.random.default_rng(stream)
    i = np.arange(readings)
    point = i // len(METRICS)
    offsets = ((point - point[-1]) * 1000).tolist()
    levels = np.array([21.0, 45.0, 1013.0])[i % len(METRICS)]
    return offsets, (i % len(METRICS)).tolist(), (levels + rng.normal(0, 0.5, readings)).round(3).tolist()


# ---- gRPC ------------------------------------------------------------------------------------------


def grpc_template(device: str, readings: int, stream: int) -> bytes:
    from iotstream.v1 import ingest_pb2 as pb

    offsets, index, values = signal(readings, stream)
    return pb.ReadingBatch(
        device_id=device,
        time_offset_ms=offsets,
        metric_names=METRICS[: min(readings, 3)],
        metric_index=index,
        values=values,
    ).SerializeToString()


def grpc_message(template: bytes, seq: int) -> bytes:
    """Protobuf merges concatenated messages: the template plus seq and the current time."""
    from iotstream.v1 import ingest_pb2 as pb

    return template + pb.ReadingBatch(seq=seq, base_time_ms=now_ms()).SerializeToString()


async def grpc_stream(channel, device: str, args, meter: Meter, pacer: Pacer) -> None:
    from iotstream.v1 import ingest_pb2 as pb

    call = channel.stream_stream("/iotstream.v1.Ingest/Stream")()  # bytes in, bytes out
    template = grpc_template(device, args.readings, hash(device) & 0xFFFF)
    window = asyncio.Semaphore(args.window)
    sent_at: collections.deque[float] = collections.deque()  # acks come back in order

    async def writer() -> None:
        seq = 0
        while meter.sending:
            await window.acquire()
            await pacer.wait()
            seq += 1
            msg = grpc_message(template, seq)
            sent_at.append(time.perf_counter())
            await call.write(msg)
        await call.done_writing()

    task = asyncio.create_task(writer())
    drain = asyncio.get_running_loop().call_at(
        asyncio.get_running_loop().time() + (meter.end - time.perf_counter()) + args.drain_timeout,
        call.cancel,
    )
    try:
        async for raw in call:
            ack = pb.StreamResponse.FromString(raw).ack
            meter.ack(sent_at.popleft(), ack.accepted, len(ack.rejected))
            window.release()
        await task
    except Exception as exc:  # grpc.aio.AioRpcError and friends: counted, the stream ends
        meter.error(exc)
    except asyncio.CancelledError:  # the drain deadline passed with acks outstanding
        meter.error(
            TimeoutError(f"{len(sent_at)} acks still outstanding {args.drain_timeout} s after the end")
        )
    finally:
        drain.cancel()
        task.cancel()


async def grpc_send(channel, device: str, args, meter: Meter, pacer: Pacer) -> None:
    from iotstream.v1 import ingest_pb2 as pb

    send = channel.unary_unary("/iotstream.v1.Ingest/Send")
    template = grpc_template(device, args.readings, hash(device) & 0xFFFF)
    seq = 0
    while meter.sending:
        await pacer.wait()
        seq += 1
        msg = grpc_message(template, seq)
        t = time.perf_counter()
        try:
            ack = pb.Ack.FromString(await send(msg, timeout=args.drain_timeout))
            meter.ack(t, ack.accepted, len(ack.rejected))
        except Exception as exc:
            meter.error(exc)


async def run_grpc(args, meter: Meter, pacer: Pacer) -> None:
    import grpc

    target = args.target.removeprefix("grpc://")
    workers = args.streams if args.mode == "stream" else args.streams * args.window
    n_channels = max(args.connections, math.ceil(workers / STREAMS_PER_CHANNEL))
    # A local subchannel pool per channel gives each its own TCP connection.
    channels = [
        grpc.aio.insecure_channel(
            target,
            options=[("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 8 << 20)],
        )
        for _ in range(n_channels)
    ]
    fn = grpc_stream if args.mode == "stream" else grpc_send
    try:
        await asyncio.gather(
            *(
                fn(channels[i % n_channels], f"{args.prefix}-{i:05d}", args, meter, pacer)
                for i in range(workers)
            )
        )
    finally:
        for ch in channels:
            await ch.close()


# ---- HTTP ------------------------------------------------------------------------------------------


def http_body(device: str, readings: int, stream: int) -> tuple[bytes, bytes]:
    """Row-oriented JSON as FastAPI prototypes take it, split around the seq. Reading times are absolute
    and fixed when the generator starts (a run lasts seconds; the server accepts 30 days back)."""
    offsets, index, values = signal(readings, stream)
    base = now_ms()
    rows = [
        {"time_ms": base + o, "metric": METRICS[m], "value": v}
        for o, m, v in zip(offsets, index, values, strict=True)
    ]
    head = json.dumps({"device_id": device})[:-1].encode() + b', "seq": '
    return head, b', "readings": ' + json.dumps(rows).encode() + b"}"


async def http_worker(session, device: str, args, meter: Meter, pacer: Pacer) -> None:
    head, tail = http_body(device, args.readings, hash(device) & 0xFFFF)
    headers = {"content-type": "application/json"}
    seq = 0
    while meter.sending:
        await pacer.wait()
        seq += 1
        t = time.perf_counter()
        try:
            async with session.post(args.target, data=head + str(seq).encode() + tail, headers=headers) as r:
                reply = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {reply[:200]!r}")
            meter.ack(t, json.loads(reply)["accepted"])
        except Exception as exc:
            meter.error(exc)


async def run_http(args, meter: Meter, pacer: Pacer) -> None:
    import aiohttp

    workers = args.streams * args.window
    conn = aiohttp.TCPConnector(limit=workers)
    timeout = aiohttp.ClientTimeout(total=args.drain_timeout)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        await asyncio.gather(
            *(http_worker(session, f"{args.prefix}-{i:05d}", args, meter, pacer) for i in range(workers))
        )


# ---- main ------------------------------------------------------------------------------------------


async def run(args) -> dict:
    meter, pacer = Meter(args.warmup, args.duration), Pacer(args.rate)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    if args.target.startswith("http"):
        await run_http(args, meter, pacer)
    else:
        await run_grpc(args, meter, pacer)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    lat = np.array(meter.latency_ms) if meter.latency_ms else np.zeros(0)

    def q(p):
        return round(float(np.percentile(lat, p)), 2) if len(lat) else None

    return {
        "target": args.target,
        "mode": "http" if args.target.startswith("http") else args.mode,
        "readings_per_message": args.readings,
        "streams": args.streams,
        "window": args.window,
        "outstanding_max": args.streams * args.window,
        "duration_s": args.duration,
        "offered_messages_per_s": args.rate,
        "messages": meter.acked,
        "readings": meter.readings,
        "rejected": meter.rejected,
        "errors": meter.errors,
        "error_samples": meter.error_samples,
        "messages_per_s": round(meter.acked / args.duration, 1),
        "readings_per_s": round(meter.readings / args.duration, 1),
        "ack_p50_ms": q(50),
        "ack_p99_ms": q(99),
        "ack_max_ms": round(float(lat.max()), 2) if len(lat) else None,
        "loadgen_cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 2),
    }


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True, help="grpc://HOST:PORT or http://HOST:PORT/ingest")
    ap.add_argument("--mode", choices=["stream", "send"], default="stream", help="gRPC call (default stream)")
    ap.add_argument("--readings", type=int, default=1000, help="readings per message (default 1000)")
    ap.add_argument("--streams", type=int, default=8, help="devices, one stream each (default 8)")
    ap.add_argument("--window", type=int, default=8, help="messages in flight per stream (default 8)")
    ap.add_argument("--connections", type=int, default=2, help="gRPC connections at least (default 2)")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds (default 5)")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring (default 1)")
    ap.add_argument("--rate", type=float, help="offered messages/s over all streams (default: closed loop)")
    ap.add_argument("--prefix", default="lg", help="device id prefix (default lg)")
    ap.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for outstanding acks after the end, and per call (default 30)",
    )
    ap.add_argument("--json", action="store_true", help="print only JSON (the default output anyway)")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)
    sys.exit(0 if result["messages"] else 1)


if __name__ == "__main__":
    main()
