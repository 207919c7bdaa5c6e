"""The `iotstream` command: serve, simulate, query."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time

DAY_MS = 86_400_000


def cmd_serve(args) -> int:
    from iotstream.server import Config, EmbeddedServer

    async def main():
        server = EmbeddedServer(Config(host=args.host, port=args.port, data_dir=args.data_dir))
        port = await server.start()
        print(f"iotstream serving on {args.host}:{port} (embedded: local queue, ClickHouse data in "
              f"{args.data_dir}); Ctrl-C stops", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("stopping: draining acks and the queue", file=sys.stderr, flush=True)
        await server.stop()

    asyncio.run(main())
    return 0


def cmd_demo(args) -> int:
    """serve + simulate + query in one go, to see the whole path work."""
    from iotstream.server import Config, EmbeddedServer
    from iotstream.simulate import run_fleet
    from iotstream.v1 import query_pb2 as pb

    async def main():
        server = EmbeddedServer(Config(port=0, data_dir=args.data_dir))
        port = await server.start()
        target = f"127.0.0.1:{port}"
        print(f"embedded server on {target}, data in {args.data_dir}", file=sys.stderr)
        try:
            print(f"simulating {args.devices} devices x {args.readings} readings ...", file=sys.stderr)
            summary, _ = await run_fleet(target, args.devices, args.readings, args.batch, progress=True,
                                         seed=int(time.time()), anomalies=0.001)
            import grpc

            from iotstream.v1 import query_pb2_grpc

            async with grpc.aio.insecure_channel(target) as channel:
                stub = query_pb2_grpc.QueryStub(channel)
                stats = await stub.GetStats(pb.GetStatsRequest(), timeout=30)
                anomalies = await stub.ListAnomalies(pb.ListAnomaliesRequest(page_size=5), timeout=30)
        finally:
            await server.stop()
        print(f"ingest: {summary['acked']:,} readings acked at {summary['readings_per_s']:,.0f} readings/s "
              f"(ack p50 {summary['ack_p50_ms']} ms, p99 {summary['ack_p99_ms']} ms)")
        print(f"store:  {stats.readings:,} readings, {stats.devices} devices, {stats.anomalies} anomalies "
              f"({summary['injected_anomalies']} spikes injected)")
        for a in anomalies.anomalies:
            print(f"  anomaly {a.device_id} {a.metric} value={a.value:.2f} z={a.zscore:+.1f} score={a.score:.3f}")

    asyncio.run(main())
    return 0


def cmd_simulate(args) -> int:
    from iotstream.simulate import run_fleet

    summary, _ = asyncio.run(run_fleet(args.target, args.devices, args.readings, args.batch, args.rate,
                                       args.anomalies, args.seed, args.interval_ms, args.prefix,
                                       progress=True))
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['devices']} devices: sent {summary['sent']:,} readings, acked {summary['acked']:,}, "
              f"rejected {summary['rejected']:,} in {summary['seconds']} s = {summary['readings_per_s']:,.0f} "
              f"readings/s; ack p50 {summary['ack_p50_ms']} ms, p99 {summary['ack_p99_ms']} ms; "
              f"{summary['injected_anomalies']} anomalies injected")
    return 0 if summary["acked"] + summary["rejected"] == summary["sent"] else 1


def cmd_query(args) -> int:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from iotstream.v1 import query_pb2 as pb
    from iotstream.v1 import query_pb2_grpc as pb_grpc

    now = time.time_ns() // 1_000_000
    start = now - int(args.since_hours * 3_600_000) if hasattr(args, "since_hours") else 0
    requests = {
        "devices": lambda: ("ListDevices", pb.ListDevicesRequest(
            id_prefix=args.prefix, status=pb.DeviceStatus.Value(args.status.upper()) if args.status else 0,
            page_size=args.limit, page_token=args.page_token)),
        "device": lambda: ("GetDevice", pb.GetDeviceRequest(device_id=args.device_id)),
        "history": lambda: ("GetHistory", pb.GetHistoryRequest(
            device_id=args.device_id, metrics=args.metric, start_ms=start, page_size=args.limit,
            page_token=args.page_token)),
        "aggregate": lambda: ("Aggregate", pb.AggregateRequest(
            device_ids=args.device, metrics=args.metric, start_ms=start, interval_ms=args.interval_s * 1000,
            funcs=[pb.AggFunc.Value(f.upper()) for f in args.func], merge_devices=args.merge)),
        "anomalies": lambda: ("ListAnomalies", pb.ListAnomaliesRequest(
            device_id=args.device, metric=args.metric_name, kind=args.kind, start_ms=start,
            page_size=args.limit, page_token=args.page_token)),
        "stats": lambda: ("GetStats", pb.GetStatsRequest()),
    }
    method, request = requests[args.what]()
    with grpc.insecure_channel(args.target) as channel:
        stub = pb_grpc.QueryStub(channel)
        try:
            reply = getattr(stub, method)(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"iotstream query {args.what}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    as_dict = MessageToDict(reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    if args.what == "stats":  # uint64 fields come out as JSON strings in proto3 JSON; stats are counts
        as_dict = {k: int(v) if isinstance(v, str) and v.isdigit() else v for k, v in as_dict.items()}
    print(json.dumps(as_dict) if args.json else json.dumps(as_dict, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iotstream", description="Telemetry pipeline for device fleets.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run ingest + processor + query in one process (embedded)",
                       description="Run ingest, processor and query in one process, with an in-process "
                                   "queue and embedded ClickHouse (chDB) storing data in --data-dir.")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=50051, help="gRPC port, 0 picks a free one (default 50051)")
    s.add_argument("--data-dir", default="./iotstream-data", help="ClickHouse data folder (default ./iotstream-data)")
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("demo", help="serve + simulate + query once, then stop",
                       description="Start the embedded server, stream a simulated fleet through it, print "
                                   "what got stored and the newest anomalies, and stop.")
    s.add_argument("--data-dir", default="./iotstream-data", help="ClickHouse data folder (default ./iotstream-data)")
    s.add_argument("--devices", type=int, default=50, help="number of devices (default 50)")
    s.add_argument("--readings", type=int, default=6000, help="readings per device (default 6000)")
    s.add_argument("--batch", type=int, default=500, help="readings per batch (default 500)")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("simulate", help="stream a simulated fleet to an ingest server",
                       description="N devices, each on its own bidirectional stream, send R readings over 3 "
                                   "metrics with injected spikes; waits for every ack and prints a summary.")
    s.add_argument("--target", default="127.0.0.1:50051", help="ingest server HOST:PORT (default 127.0.0.1:50051)")
    s.add_argument("--devices", type=int, default=10, help="number of devices (default 10)")
    s.add_argument("--readings", type=int, default=1000, help="readings per device (default 1000)")
    s.add_argument("--batch", type=int, default=100, help="readings per batch (default 100)")
    s.add_argument("--rate", type=float, default=None, help="total readings/s cap (default: as fast as acked)")
    s.add_argument("--anomalies", type=float, default=0.001,
                   help="fraction of readings turned into spikes (default 0.001)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--interval-ms", type=int, default=1000, help="time between a device's samples (default 1000)")
    s.add_argument("--prefix", default="sim", help="device id prefix (default 'sim')")
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    s.set_defaults(fn=cmd_simulate)

    q = sub.add_parser("query", help="call the Query service", description="Call one Query RPC and print the reply as JSON.")
    q.add_argument("--target", default="127.0.0.1:50051", help="server HOST:PORT (default 127.0.0.1:50051)")
    q.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds (default 10)")
    q.add_argument("--json", action="store_true", help="one JSON object on one line")
    qs = q.add_subparsers(dest="what", required=True)

    def paged(parser):
        parser.add_argument("--limit", type=int, default=0, help="page size (default: the server's)")
        parser.add_argument("--page-token", default="", help="token from the previous page")

    def since(parser, default):
        parser.add_argument("--since-hours", type=float, default=default,
                            help=f"start of the time range, hours before now (default {default})")

    x = qs.add_parser("devices", help="ListDevices")
    x.add_argument("--prefix", default="", help="device id prefix")
    x.add_argument("--status", choices=["online", "offline"], help="only devices in this state")
    paged(x)
    x = qs.add_parser("device", help="GetDevice: latest values and status")
    x.add_argument("device_id")
    x = qs.add_parser("history", help="GetHistory: raw readings")
    x.add_argument("device_id")
    x.add_argument("--metric", action="append", default=[], help="metric (repeatable; default all)")
    since(x, 1.0)
    paged(x)
    x = qs.add_parser("aggregate", help="Aggregate: buckets over a time range")
    x.add_argument("--device", action="append", default=[], help="device id (repeatable; default all)")
    x.add_argument("--metric", action="append", default=[], help="metric (repeatable; default all)")
    x.add_argument("--interval-s", type=int, default=60, help="bucket width in seconds (default 60)")
    x.add_argument("--func", action="append", default=[],
                   choices=["min", "max", "avg", "sum", "count", "stddev", "p50", "p95", "p99"],
                   help="function (repeatable; default avg, min, max, count)")
    x.add_argument("--merge", action="store_true", help="aggregate all devices together")
    since(x, 24.0)
    x = qs.add_parser("anomalies", help="ListAnomalies, newest first")
    x.add_argument("--device", default="", help="device id")
    x.add_argument("--metric", dest="metric_name", default="", help="metric")
    x.add_argument("--kind", default="", help="detector kind, e.g. zscore")
    since(x, 24.0 * 30)
    paged(x)
    qs.add_parser("stats", help="GetStats: rows, rates, devices online, rejections")
    q.set_defaults(fn=cmd_query)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
