"""Fleet scale: thousands of long-lived, mostly idle devices, each an iotstream.client.DeviceClient, against
one server process.

    python -m iotstream.bench.fleet [--streams 10000] [--per-connection 100] [--interval 10] [--batch 10]
                          [--duration 30] [--kafka BOOTSTRAP] [--serve-arg ARG] [--no-floor] [--json]

Real fleets keep a stream open per device and trickle a small batch every few seconds; a gateway runs many
devices in one process. This runs --streams DeviceClients in this process, sharing ceil(streams /
per-connection) client connections (HTTP/2 caps concurrent streams per connection; the server allows 1,000),
against `iotstream serve` in its own process, so each side's RSS is its own. Each device records --batch
readings when it starts (sealed as one batch at once), then --batch more every --interval seconds (start
times spread evenly); the client library streams them, resends after refusals and reads the Acks.

Reported (one JSON object, also bench/results/fleet.json):
- connect_s: from the first channel opened until every device had its first batch acked, and
  connect_p99_ms per device;
- server: rss_bytes_per_stream (server RSS with the fleet connected and trickling - RSS before it, after a
  warm-up on one stream) / streams, the same from USS; CPU seconds and cores over the steady state;
- client (this process, the gateway): client_rss_bytes_per_device (RSS with the fleet running - RSS
  before the clients were made) / devices, client CPU seconds and cores over the steady state, and CPU
  microseconds per device per second;
- ack_p50_ms / ack_p99_ms of the steady-state batches (sent after the whole fleet connected);
- the floor, measured in the same run (skip with --no-floor): the same fleet then runs against
  bench/echo_server.py (bare grpc.aio, same server options); floor_rss_bytes_per_stream, floor_ack_p99_ms,
  and rss_per_stream_vs_floor, what `serve` holds per stream over what gRPC itself holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import time

from iotstream.bench.harness import ServerProcess, machine, pct, write_result
from iotstream.bench.loadgen import grpc_message, grpc_template
from iotstream.client.device import KEEPALIVE_OPTIONS, DeviceClient  # noqa: E402

CLIENT_OPTIONS = [("grpc.use_local_subchannel_pool", 1), *KEEPALIVE_OPTIONS]
METRICS = ("temperature", "humidity", "pressure")


class Fleet:
    def __init__(self, args):
        self.args = args
        self.first_ack: list[float] = []
        self.connect_ms: list[float] = []
        self.steady_from = math.inf
        self.steady_ack_ms: list[float] = []
        self.acked = 0
        self.clients: list[DeviceClient] = []
        self.stop = asyncio.Event()

    async def device(self, channel, i: int, t0: float) -> None:
        """Start a client, record a batch at once and one every --interval s until told to stop."""
        args = self.args
        first = True

        def on_ack(_ack, seconds: float) -> None:
            nonlocal first
            now = time.perf_counter()
            self.acked += 1
            if first:
                self.first_ack.append(now)
                self.connect_ms.append((now - t0) * 1000)
                first = False
            elif now - seconds >= self.steady_from:
                self.steady_ack_ms.append(seconds * 1000)

        # batch_age_s past the interval: a batch is sealed when --batch readings are in, as firmware does.
        client = DeviceClient(
            "",
            f"fleet-{i:05d}",
            batch_readings=args.batch,
            batch_age_s=args.interval * 2,
            max_unacked_batches=64,
            channel=channel,
            on_ack=on_ack,
        )
        self.clients.append(client)
        await client.start()
        n = 0
        try:
            while True:
                for _ in range(args.batch):
                    client.record(METRICS[n % 3], 20.0 + (n % 17) * 0.1)
                    n += 1
                if n == args.batch:  # spread the fleet's sends evenly over the interval
                    delay = args.interval * (i % 1000) / 1000
                else:
                    delay = args.interval
                try:
                    await asyncio.wait_for(self.stop.wait(), delay)
                    break
                except TimeoutError:
                    pass
        finally:
            await client.close(timeout=30)


async def warm_up(target: str, batch: int) -> None:
    """One stream, a few batches: loads every code path and the store before the baseline RSS."""
    import grpc

    async with grpc.aio.insecure_channel(target) as ch:
        call = ch.stream_stream("/iotstream.v1.Ingest/Stream")()
        template = grpc_template("fleet-warmup", batch, 0)
        for seq in range(1, 21):
            await call.write(grpc_message(template, seq))
        await call.done_writing()
        async for _ in call:
            pass


async def run(args, server: ServerProcess, echo: bool) -> dict:
    import grpc

    await warm_up(server.target, args.batch)
    await asyncio.sleep(2.0)
    import psutil

    proc, me = psutil.Process(server.proc.pid), psutil.Process()
    rss0, uss0 = proc.memory_info().rss, proc.memory_full_info().uss
    client_rss0 = me.memory_info().rss
    fleet = Fleet(args)
    n_conn = math.ceil(args.streams / args.per_connection)
    t0 = time.perf_counter()
    channels = [grpc.aio.insecure_channel(server.target, options=CLIENT_OPTIONS) for _ in range(n_conn)]
    await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in channels)), args.connect_timeout)
    devices = []
    for i in range(args.streams):
        devices.append(asyncio.create_task(fleet.device(channels[i // args.per_connection], i, t0)))
        if args.connect_rate and i % 100 == 99:  # arrivals paced in groups of 100
            await asyncio.sleep(max(0.0, t0 + (i + 1) / args.connect_rate - time.perf_counter()))
    deadline = t0 + args.connect_timeout
    while len(fleet.first_ack) < args.streams and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    connected = len(fleet.first_ack)
    connect_s = (max(fleet.first_ack) - t0) if fleet.first_ack else None
    fleet.steady_from = time.perf_counter()
    cpu0, self0 = server.cpu_seconds(), resource.getrusage(resource.RUSAGE_SELF)
    rss_samples, client_rss = [], []
    end = fleet.steady_from + args.duration
    while time.perf_counter() < end:
        await asyncio.sleep(min(2.0, max(0.0, end - time.perf_counter())))
        rss_samples.append(proc.memory_info().rss)
        client_rss.append(me.memory_info().rss)
    uss1 = proc.memory_full_info().uss
    cpu1, self1 = server.cpu_seconds(), resource.getrusage(resource.RUSAGE_SELF)
    steady = time.perf_counter() - fleet.steady_from
    fleet.stop.set()
    await asyncio.wait(devices, timeout=60)
    unacked = sum(len(c.buffer.batches) for c in fleet.clients)
    for ch in channels:
        await ch.close()
    rss1 = max(rss_samples) if rss_samples else proc.memory_info().rss
    client_rss1 = max(client_rss) if client_rss else me.memory_info().rss
    client_cpu = self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime
    stats = [c.stats for c in fleet.clients]
    errors = sum(c.failed is not None for c in fleet.clients) + (args.streams - connected)
    sent_per_s = args.streams / args.interval
    return {
        "benchmark": "fleet",
        "server": "echo" if echo else "iotstream",
        "server_grpc_options": args.grpc_option,
        "mode": "kafka" if args.kafka else "embedded",
        "streams": args.streams,
        "connections": n_conn,
        "streams_per_connection": args.per_connection,
        "interval_s": args.interval,
        "batch_readings": args.batch,
        "duration_s": round(steady, 1),
        "streams_connected": connected,
        "connect_s": round(connect_s, 2) if connect_s else None,
        "connect_p50_ms": pct(fleet.connect_ms, 50),
        "connect_p99_ms": pct(fleet.connect_ms, 99),
        "rss_before_bytes": rss0,
        "rss_fleet_bytes": rss1,
        "rss_bytes_per_stream": round((rss1 - rss0) / max(connected, 1)),
        "uss_bytes_per_stream": round((uss1 - uss0) / max(connected, 1)),
        "offered_batches_per_s": round(sent_per_s, 1),
        "offered_readings_per_s": round(sent_per_s * args.batch, 1),
        "acked_batches": fleet.acked,
        "steady_batches": len(fleet.steady_ack_ms),
        "ack_p50_ms": pct(fleet.steady_ack_ms, 50),
        "ack_p99_ms": pct(fleet.steady_ack_ms, 99),
        "ack_max_ms": pct(fleet.steady_ack_ms, 100),
        "server_cpu_s": round(cpu1 - cpu0, 2),
        "server_cores": round((cpu1 - cpu0) / steady, 3),
        "client_cpu_s": round(client_cpu, 2),
        "client_cores": round(client_cpu / steady, 3),
        "client_cpu_us_per_device_per_s": round(client_cpu / steady / args.streams * 1e6, 2),
        "client_rss_before_bytes": client_rss0,
        "client_rss_fleet_bytes": client_rss1,
        "client_rss_bytes_per_device": round((client_rss1 - client_rss0) / args.streams),
        "connect_rate": args.connect_rate or "all at once",
        "reconnects": sum(st.reconnects for st in stats),
        "pushbacks": sum(st.pushbacks for st in stats),
        "resent_batches": sum(st.resent for st in stats),
        "unacked_at_end": unacked,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=10_000, help="device streams (default 10000)")
    ap.add_argument(
        "--per-connection", type=int, default=100, help="streams per client connection (default 100)"
    )
    ap.add_argument(
        "--interval", type=float, default=10.0, help="seconds between a device's batches (default 10)"
    )
    ap.add_argument("--batch", type=int, default=10, help="readings per batch (default 10)")
    ap.add_argument("--duration", type=float, default=30.0, help="steady-state seconds measured (default 30)")
    ap.add_argument(
        "--connect-timeout", type=float, default=120.0, help="give the fleet this long to connect"
    )
    ap.add_argument(
        "--connect-rate",
        type=float,
        default=2000.0,
        help="new streams per second (default 2000); 0 opens them all at once, a reconnect storm",
    )
    ap.add_argument("--kafka", metavar="BOOTSTRAP", help="run `iotstream serve --kafka BOOTSTRAP`")
    ap.add_argument(
        "--echo",
        action="store_true",
        help="measure bench/echo_server.py instead: what gRPC alone costs per stream (the floor)",
    )
    ap.add_argument(
        "--grpc-option",
        action="append",
        default=[],
        metavar="KEY=INT",
        help="with --echo: extra server channel argument, e.g. grpc.server.max_pending_requests=20000",
    )
    ap.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `iotstream serve`, e.g. --serve-arg=--max-keys-per-partition=1 (no rolling "
        "state: what the detector's per-device state costs)",
    )
    ap.add_argument(
        "--no-floor",
        action="store_true",
        help="skip the floor: by default the same fleet then runs against bench/echo_server.py",
    )
    ap.add_argument("--server-cpus", help="taskset CPUs for the server (default: unpinned)")
    ap.add_argument("--out", help="JSON path (default bench/results/fleet.json)")
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    args = ap.parse_args(argv)
    if args.per_connection > 1000:
        ap.error("--per-connection above the server's grpc.max_concurrent_streams (1000) would queue streams")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 65536)), hard))

    echo_args = [a for o in args.grpc_option for a in ("--grpc-option", o)]
    with ServerProcess(
        kafka=args.kafka,
        cpus=args.server_cpus,
        module="iotstream.bench.echo_server" if args.echo else None,
        extra_args=echo_args if args.echo else args.serve_arg,
    ) as server:
        result = asyncio.run(run(args, server, args.echo))
    if not args.echo and not args.no_floor:
        # The same fleet against bare grpc.aio: the floor. Second, so this process's (the gateway's) RSS
        # before the first fleet is its own baseline.
        with ServerProcess(cpus=args.server_cpus, module="iotstream.bench.echo_server") as server:
            floor = asyncio.run(run(args, server, echo=True))
        result["floor_rss_bytes_per_stream"] = floor["rss_bytes_per_stream"]
        result["floor_uss_bytes_per_stream"] = floor["uss_bytes_per_stream"]
        result["floor_ack_p99_ms"] = floor["ack_p99_ms"]
        result["floor_errors"] = floor["errors"]
        result["rss_per_stream_vs_floor"] = round(
            result["rss_bytes_per_stream"] / max(floor["rss_bytes_per_stream"], 1), 2
        )
    result["machine"] = machine()
    path = write_result("fleet", result, args.out)
    if not args.json:
        print(
            f"{result['streams_connected']:,}/{args.streams:,} streams connected in {result['connect_s']} s; "
            f"{result['rss_bytes_per_stream']:,} B server RSS per stream "
            f"({result.get('rss_per_stream_vs_floor', '-')} x the grpc.aio floor); "
            f"ack p50 {result['ack_p50_ms']} ms "
            f"p99 {result['ack_p99_ms']} ms; server {result['server_cores']} cores; client "
            f"{result['client_rss_bytes_per_device']:,} B RSS and {result['client_cpu_us_per_device_per_s']} "
            "µs "
            f"CPU per device per second ({result['client_cores']} cores); wrote {path}",
            file=sys.stderr,
        )
    print(json.dumps(result))
    return 0 if result["streams_connected"] == args.streams and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
