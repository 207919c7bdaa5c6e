"""query: call one Query RPC and print the reply."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import options


def cmd_query(args) -> int:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from iotstream.v1 import query_pb2 as pb
    from iotstream.v1 import query_pb2_grpc as pb_grpc

    now = time.time_ns() // 1_000_000
    start = now - int(args.since_hours * 3_600_000) if hasattr(args, "since_hours") else 0
    requests = {
        "devices": lambda: (
            "ListDevices",
            pb.ListDevicesRequest(
                id_prefix=args.prefix,
                status=args.status.upper() if args.status else None,
                page_size=args.limit,
                page_token=args.page_token,
            ),
        ),
        "device": lambda: ("GetDevice", pb.GetDeviceRequest(device_id=args.device_id)),
        "history": lambda: (
            "GetHistory",
            pb.GetHistoryRequest(
                device_id=args.device_id,
                metrics=args.metric,
                start_ms=start,
                page_size=args.limit,
                page_token=args.page_token,
            ),
        ),
        "aggregate": lambda: (
            "Aggregate",
            pb.AggregateRequest(
                device_ids=args.device,
                metrics=args.metric,
                start_ms=start,
                interval_ms=args.interval_s * 1000,
                funcs=[f.upper() for f in args.func],
                merge_devices=args.merge,
            ),
        ),
        "anomalies": lambda: (
            "ListAnomalies",
            pb.ListAnomaliesRequest(
                device_id=args.device,
                metric=args.metric_name,
                kind=args.kind,
                start_ms=start,
                page_size=args.limit,
                page_token=args.page_token,
                min_severity=f"SEVERITY_{args.severity.upper()}" if args.severity else None,
                state=f"ANOMALY_{args.state.upper()}" if args.state else None,
                acknowledged={
                    None: pb.ACK_FILTER_UNSPECIFIED,
                    "yes": pb.ACKNOWLEDGED,
                    "no": pb.UNACKNOWLEDGED,
                }[args.acked],
            ),
        ),
        "ack": lambda: ("AcknowledgeAnomaly", pb.AcknowledgeAnomalyRequest(id=args.id, by=args.by)),
        "watch": lambda: (
            "WatchAnomalies",
            pb.WatchAnomaliesRequest(
                cursor=args.cursor, device_id=args.device, metric=args.metric_name, kind=args.kind
            ),
        ),
        "stats": lambda: ("GetStats", pb.GetStatsRequest()),
    }
    from iotstream.auth import bearer
    from iotstream.cli import render
    from iotstream.common.tls import channel as open_channel
    from iotstream.common.tls import client_tls

    method, request = requests[args.what]()
    human = not args.json and sys.stdout.isatty()  # tables for a person, JSON for a pipe or --json
    with open_channel(args.target, client_tls(args)) as channel:
        stub = pb_grpc.QueryStub(channel)
        try:
            if args.what == "watch":  # a stream: one line per event, until Ctrl-C or --count events
                return watch(stub.WatchAnomalies(request, metadata=bearer(args.token)), args, human)
            reply = getattr(stub, method)(request, timeout=args.timeout, metadata=bearer(args.token))
        except grpc.RpcError as exc:
            print(f"iotstream query {args.what}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
    if human:
        print(render.RENDER[args.what](reply))
        return 0
    as_dict = MessageToDict(
        reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    if args.what == "stats":  # uint64 fields come out as JSON strings in proto3 JSON; stats are counts
        as_dict = {k: int(v) if isinstance(v, str) and v.isdigit() else v for k, v in as_dict.items()}
    print(json.dumps(as_dict) if args.json else json.dumps(as_dict, indent=2))
    return 0


def watch(events, args, human: bool) -> int:
    """Print WatchAnomalies events as they come; on the way out, say how to resume after the last one."""
    from google.protobuf.json_format import MessageToDict

    from iotstream.cli import render
    from iotstream.v1 import query_pb2 as pb

    seen, cursor = 0, args.cursor
    try:
        for event in events:
            cursor = event.cursor
            line = (
                render.event(event)
                if human
                else json.dumps(MessageToDict(event, preserving_proto_field_name=True))
            )
            print(line, flush=True)
            seen += event.type != pb.AnomalyEvent.WATCHING
            if args.count and seen >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        if human and cursor:
            print(f"resume with: iotstream query watch --since {cursor}", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    q = sub.add_parser(
        "query",
        help="call the Query service",
        description="Call one Query RPC; print tables on a terminal, JSON when piped or with --json.",
    )
    q.add_argument("--target", default="127.0.0.1:50051", help="server HOST:PORT (default 127.0.0.1:50051)")
    q.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds (default 10)")
    q.add_argument("--json", action="store_true", help="one JSON object on one line")
    q.add_argument(
        "--token",
        default=os.environ.get("IOTSTREAM_TOKEN"),
        help="reader or admin token (default $IOTSTREAM_TOKEN)",
    )
    options.client_tls(q)
    qs = q.add_subparsers(dest="what", required=True)

    def paged(parser):
        parser.add_argument("--limit", type=int, default=0, help="page size (default: the server's)")
        parser.add_argument("--page-token", default="", help="token from the previous page")

    def since(parser, default):
        parser.add_argument(
            "--since-hours",
            type=float,
            default=default,
            help=f"start of the time range, hours before now (default {default})",
        )

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
    x.add_argument(
        "--func",
        action="append",
        default=[],
        choices=["min", "max", "avg", "sum", "count", "stddev", "p50", "p95", "p99"],
        help="function (repeatable; default avg, min, max, count)",
    )
    x.add_argument("--merge", action="store_true", help="aggregate all devices together")
    since(x, 24.0)
    x = qs.add_parser("anomalies", help="ListAnomalies, newest first")
    x.add_argument("--device", default="", help="device id")
    x.add_argument("--metric", dest="metric_name", default="", help="metric")
    x.add_argument("--kind", default="", help="detector kind, e.g. zscore")
    x.add_argument("--severity", choices=["low", "medium", "high"], help="at least this severity")
    x.add_argument("--state", choices=["open", "closed"], help="only episodes in this state")
    x.add_argument(
        "--acked", choices=["yes", "no"], help="only acknowledged (yes) or unacknowledged (no) ones"
    )
    since(x, 24.0 * 30)
    paged(x)
    x = qs.add_parser("ack", help="AcknowledgeAnomaly (admin token)")
    x.add_argument("id", help="the anomaly's id, from `query anomalies`")
    x.add_argument("--by", required=True, help="who acknowledges it")
    x = qs.add_parser("watch", help="WatchAnomalies: one line per event, until Ctrl-C")
    x.add_argument("--device", default="", help="device id")
    x.add_argument("--metric", dest="metric_name", default="", help="metric")
    x.add_argument("--kind", default="", help="detector kind, e.g. zscore")
    x.add_argument(
        "--since",
        "--cursor",
        dest="cursor",
        metavar="CURSOR",
        default="",
        help="resume after the event that carried this cursor (default: from now on)",
    )
    x.add_argument("--count", type=int, default=0, help="stop after this many events (default: never)")
    qs.add_parser("stats", help="GetStats: rows, rates, devices online, rejections")
    for sub_q in qs.choices.values():  # also after the subcommand: `iotstream query stats --json`
        sub_q.add_argument("--target", default=argparse.SUPPRESS, help="server HOST:PORT")
        sub_q.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="one JSON object")
    q.set_defaults(fn=cmd_query)
