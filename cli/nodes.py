"""serve, ingest, process, query-server and demo: run a node until a signal, or once for a demo."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time

from . import options
from .options import node_config, say


def warn_open(config, what: str, port: int) -> None:
    """Say loudly what a node without auth or TLS exposes."""
    if not config.auth and ("ingest" in config.roles or "query" in config.roles):
        line = "=" * 100
        say(
            f"{line}\nWARNING: iotstream {what} runs WITHOUT AUTHENTICATION: anyone who reaches "
            f"{config.host}:{port} can send readings\nas any device and read everything. Fine for a "
            f"local demo; otherwise pass --auth (and --tls-cert/--tls-key).\n{line}",
            logging.WARNING,
        )
    elif config.tls is None and config.host not in ("127.0.0.1", "localhost", "::1"):
        say(
            f"WARNING: iotstream {what}: tokens travel in plain text on {config.host}; pass "
            "--tls-cert/--tls-key",
            logging.WARNING,
        )


def run_node(config, what: str) -> int:
    """Run a Node until SIGINT/SIGTERM, then stop it gracefully."""
    from iotstream.node import Node

    async def main():
        node = Node(config)
        port = await node.start()
        warn_open(config, what, port)
        where = f"serving on {config.host}:{port}" if port else "running"
        if node.metrics_port:
            where += f", metrics on {config.metrics_host}:{node.metrics_port}"
        if node.console is not None:
            where += f", console on http{'s' if config.tls else ''}://{config.http_host}:{node.console.port}/"
        queue = f"Kafka {config.kafka.bootstrap}" if config.kafka else "durable local log"
        storage = config.clickhouse_url or f"ClickHouse data in {config.data_dir}"
        say(f"iotstream {what} {where} ({queue}; {storage}); Ctrl-C stops")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await asyncio.wait(
            [asyncio.create_task(stop.wait()), asyncio.create_task(node.failed.wait())],
            return_when=asyncio.FIRST_COMPLETED,
        )
        say(f"iotstream {what}: stopping (draining acks, queue and state)")
        await node.stop()
        if node.failed.is_set():
            say(f"iotstream {what}: failed: {node.failure}")
            return 1
        say(f"iotstream {what}: stopped")
        return 0

    try:
        config.check()
    except ValueError as exc:
        print(f"iotstream {what}: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(main())


def cmd_serve(args) -> int:
    return run_node(node_config(args, ["ingest", "process", "query"]), "serve")


def cmd_ingest(args) -> int:
    return run_node(node_config(args, ["ingest"]), "ingest")


def cmd_process(args) -> int:
    return run_node(node_config(args, ["process"]), "process")


def cmd_query_server(args) -> int:
    return run_node(node_config(args, ["query"]), "query-server")


def cmd_demo(args) -> int:
    """serve + simulate + query in one go, to see the whole path work."""
    from iotstream.client.simulate import run_fleet
    from iotstream.node import Config, Node
    from iotstream.v1 import query_pb2 as pb

    async def main():
        server = Node(Config(port=0, data_dir=args.data_dir))
        port = await server.start()
        target = f"127.0.0.1:{port}"
        print(f"embedded server on {target}, data in {args.data_dir}", file=sys.stderr)
        try:
            print(f"simulating {args.devices} devices x {args.readings} readings ...", file=sys.stderr)
            summary, _ = await run_fleet(
                target,
                args.devices,
                args.readings,
                args.batch,
                progress=True,
                seed=int(time.time()),
                anomalies=0.001,
            )
            import grpc

            from iotstream.v1 import query_pb2_grpc

            async with grpc.aio.insecure_channel(target) as channel:
                stub = query_pb2_grpc.QueryStub(channel)
                # An ack means durable in the local log; the processor stores a moment later.
                deadline = time.monotonic() + 120
                while True:
                    stats = await stub.GetStats(pb.GetStatsRequest(), timeout=30)
                    if (
                        stats.readings >= summary["acked"]
                        and stats.queue_readings == 0
                        or time.monotonic() > deadline
                    ):
                        break
                    await asyncio.sleep(0.2)  # polling the stored count
                anomalies = await stub.ListAnomalies(pb.ListAnomaliesRequest(page_size=5), timeout=30)
        finally:
            await server.stop()
        print(
            f"ingest: {summary['acked']:,} readings acked at {summary['readings_per_s']:,.0f} readings/s "
            f"(ack p50 {summary['ack_p50_ms']} ms, p99 {summary['ack_p99_ms']} ms)"
        )
        print(
            f"store:  {stats.readings:,} readings, {stats.devices} devices, {stats.anomalies} anomalies "
            f"({summary['injected_anomalies']} spikes injected)"
        )
        for a in anomalies.anomalies:
            print(
                f"  anomaly {a.kind:<8} {a.device_id} {a.metric} value={a.value:.2f} z={a.zscore:+.1f} "
                f"score={a.score:.3f}"
            )

    asyncio.run(main())
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser(
        "serve",
        help="run ingest + processor + query in one process",
        description="Run ingest, processor and query in one process: with the durable local log "
        "and embedded ClickHouse (chDB) by default, or with --kafka between them.",
    )
    options.listen(s)
    options.kafka(s, required=False)
    options.storage(s)
    s.add_argument(
        "--log-max-mb",
        type=float,
        default=512,
        help="local log size cap in MiB: at the cap ingest pushes back (default 512)",
    )
    s.add_argument(
        "--unavailable-after",
        type=float,
        default=30.0,
        help="seconds a full local log pushes back before calls get UNAVAILABLE (default 30)",
    )
    options.rules(s)
    options.keys(s)
    options.security(s, default_auth=False)
    options.metrics(s)
    options.operator(s)
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser(
        "ingest",
        help="run the ingest role alone (distributed, needs --kafka)",
        description="The stateless gRPC ingest role: validates batches and hands them to Kafka; "
        "an Ack means the batch is in Kafka. Run any number behind a load balancer.",
    )
    options.listen(s)
    options.kafka(s, required=True)
    if "--data-dir" not in s._option_string_actions:
        options.storage(s)  # where the token registry is, unless --tokens-file
    options.security(s, default_auth=True)
    options.metrics(s)
    s.set_defaults(fn=cmd_ingest)

    s = sub.add_parser(
        "process",
        help="run the processor role alone (distributed, needs --kafka)",
        description="One member of the processor consumer group: reads Kafka, runs the rolling "
        "statistics, writes ClickHouse exactly once, snapshots its state to Kafka.",
    )
    options.kafka(s, required=True)
    options.storage(s)
    options.rules(s)
    options.keys(s)
    s.add_argument("--group", default="", help="consumer group (default NAMESPACE-processor)")
    s.add_argument(
        "--chunk-messages",
        type=int,
        default=1000,
        help="Kafka messages (batches) per ClickHouse insert at most (default 1000)",
    )
    s.add_argument(
        "--snapshot-every",
        type=float,
        default=5.0,
        help="seconds between state snapshots per partition (default 5; a state whose snapshot takes "
        "longer than a tenth of that, ~10^5 keys and more, is saved every 10x its last snapshot's time)",
    )
    options.metrics(s)
    s.set_defaults(fn=cmd_process)

    s = sub.add_parser(
        "query-server",
        help="run the Query gRPC service alone",
        description="Serve the Query RPCs over a ClickHouse server (--clickhouse) or an embedded "
        "data folder that no other process has open.",
    )
    options.listen(s)
    options.storage(s)
    options.security(s, default_auth=True)
    options.metrics(s)
    options.operator(s)
    s.set_defaults(fn=cmd_query_server)

    s = sub.add_parser(
        "demo",
        help="serve + simulate + query once, then stop",
        description="Start the embedded server, stream a simulated fleet through it, print "
        "what got stored and the newest anomalies, and stop.",
    )
    s.add_argument(
        "--data-dir", default="./iotstream-data", help="ClickHouse data folder (default ./iotstream-data)"
    )
    s.add_argument("--devices", type=int, default=50, help="number of devices (default 50)")
    s.add_argument("--readings", type=int, default=6000, help="readings per device (default 6000)")
    s.add_argument("--batch", type=int, default=500, help="readings per batch (default 500)")
    s.set_defaults(fn=cmd_demo)
