"""The `iotstream` command: serve, simulate, query."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time

from iotstream.client.simulate import KINDS

DAY_MS = 86_400_000
log = logging.getLogger("iotstream")


def say(message: str, level: int = logging.INFO) -> None:
    """A node's own status line: a log record when logs are JSON (every stderr line parses), else printed."""
    from iotstream.common.logs import json_logs

    if json_logs():
        log.log(level, message)
    else:
        print(message, file=sys.stderr, flush=True)


def node_config(args, roles):
    from iotstream.bus.kafka import KafkaConfig
    from iotstream.node import Config

    kafka = None
    if getattr(args, "kafka", None):
        kafka = KafkaConfig(bootstrap=args.kafka, namespace=args.namespace, partitions=args.partitions,
                            group=getattr(args, "group", ""))
    return Config(host=getattr(args, "host", "127.0.0.1"), port=getattr(args, "port", 0), roles=frozenset(roles),
                  data_dir=getattr(args, "data_dir", "./iotstream-data"),
                  clickhouse_url=getattr(args, "clickhouse", None), kafka=kafka,
                  rules_path=getattr(args, "rules", None),
                  max_chunk_messages=getattr(args, "chunk_messages", 1000),
                  snapshot_every_s=getattr(args, "snapshot_every", 5.0), **security_config(args, roles))


def security_config(args, roles) -> dict:
    """Config fields for auth, TLS, metrics and limits from the flags `security` and `metrics` add."""
    from iotstream.ingest import Limits
    from iotstream.common.tls import ServerTLS

    out = {"metrics_port": getattr(args, "metrics_port", None),
           "metrics_host": getattr(args, "metrics_host", "127.0.0.1")}
    if not hasattr(args, "tls_cert"):
        return out
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("iotstream: --tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise SystemExit("iotstream: --tls-client-ca needs --tls-cert and --tls-key")
    distributed = set(roles) != {"ingest", "process", "query"}
    auth = args.auth or (distributed and not args.insecure_no_auth)
    limits = Limits(max_readings=args.max_batch_readings, max_message_bytes=args.max_message_bytes,
                    max_streams_per_device=args.max_streams_per_device, rate_readings_per_s=args.rate_limit,
                    burst_readings=args.rate_burst, reject_after_s=args.rate_reject_after)
    return {**out, "auth": auth, "tokens_file": args.tokens_file, "limits": limits,
            "tls": ServerTLS(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None}


def warn_open(config, what: str, port: int) -> None:
    """Say loudly what a node without auth or TLS exposes."""
    if not config.auth and ("ingest" in config.roles or "query" in config.roles):
        line = "=" * 100
        say(f"{line}\nWARNING: iotstream {what} runs WITHOUT AUTHENTICATION: anyone who reaches "
            f"{config.host}:{port} can send readings\nas any device and read everything. Fine for a "
            f"local demo; otherwise pass --auth (and --tls-cert/--tls-key).\n{line}", logging.WARNING)
    elif config.tls is None and config.host not in ("127.0.0.1", "localhost", "::1"):
        say(f"WARNING: iotstream {what}: tokens travel in plain text on {config.host}; pass --tls-cert/--tls-key",
            logging.WARNING)


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
        queue = f"Kafka {config.kafka.bootstrap}" if config.kafka else "in-process queue"
        storage = config.clickhouse_url or f"ClickHouse data in {config.data_dir}"
        say(f"iotstream {what} {where} ({queue}; {storage}); Ctrl-C stops")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await asyncio.wait([asyncio.create_task(stop.wait()), asyncio.create_task(node.failed.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
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
    from iotstream.node import Config, Node
    from iotstream.client.simulate import run_fleet
    from iotstream.v1 import query_pb2 as pb

    async def main():
        server = Node(Config(port=0, data_dir=args.data_dir))
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
            print(f"  anomaly {a.kind:<8} {a.device_id} {a.metric} value={a.value:.2f} z={a.zscore:+.1f} score={a.score:.3f}")

    asyncio.run(main())
    return 0


def cmd_simulate(args) -> int:
    from iotstream.client.simulate import run_fleet

    from iotstream.common.tls import client_tls

    tokens = json.loads(open(args.tokens).read()) if args.tokens else None
    summary, _ = asyncio.run(run_fleet(args.target, args.devices, args.readings, args.batch, args.rate,
                                       args.anomalies, args.seed, args.interval_ms, args.prefix,
                                       progress=True, tokens=tokens, tls=client_tls(args),
                                       kinds=args.kinds.split(",")))
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
            page_size=args.limit, page_token=args.page_token,
            min_severity=pb.Severity.Value(f"SEVERITY_{args.severity.upper()}") if args.severity else 0,
            state=pb.AnomalyState.Value(f"ANOMALY_{args.state.upper()}") if args.state else 0,
            acknowledged={None: 0, "yes": pb.ACKNOWLEDGED, "no": pb.UNACKNOWLEDGED}[args.acked])),
        "ack": lambda: ("AcknowledgeAnomaly", pb.AcknowledgeAnomalyRequest(id=args.id, by=args.by)),
        "watch": lambda: ("WatchAnomalies", pb.WatchAnomaliesRequest(
            cursor=args.cursor, device_id=args.device, metric=args.metric_name, kind=args.kind)),
        "stats": lambda: ("GetStats", pb.GetStatsRequest()),
    }
    from iotstream.auth import bearer
    from iotstream.common.tls import channel as open_channel
    from iotstream.common.tls import client_tls

    method, request = requests[args.what]()
    with open_channel(args.target, client_tls(args)) as channel:
        stub = pb_grpc.QueryStub(channel)
        try:
            if args.what == "watch":  # a stream: one JSON line per event, until Ctrl-C or --count events
                seen = 0
                for event in stub.WatchAnomalies(request, metadata=bearer(args.token)):
                    print(json.dumps(MessageToDict(event, preserving_proto_field_name=True)), flush=True)
                    seen += event.type != pb.AnomalyEvent.WATCHING
                    if args.count and seen >= args.count:
                        return 0
                return 0
            reply = getattr(stub, method)(request, timeout=args.timeout, metadata=bearer(args.token))
        except grpc.RpcError as exc:
            print(f"iotstream query {args.what}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
    as_dict = MessageToDict(reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    if args.what == "stats":  # uint64 fields come out as JSON strings in proto3 JSON; stats are counts
        as_dict = {k: int(v) if isinstance(v, str) and v.isdigit() else v for k, v in as_dict.items()}
    print(json.dumps(as_dict) if args.json else json.dumps(as_dict, indent=2))
    return 0


def token_registry(args):
    from iotstream import auth

    if args.tokens_file:
        return auth.FileTokens(args.tokens_file), None
    from iotstream.clickhouse import open_backend

    backend = open_backend(data_dir=args.data_dir, clickhouse_url=args.clickhouse, database=args.database)
    return auth.ClickHouseTokens(backend), backend


def cmd_tokens(args) -> int:
    """devices add|revoke|list and tokens add|revoke|list: the token registry, straight in its store."""
    role = "device" if args.command == "devices" else getattr(args, "role", None)
    if args.target:
        return tokens_over_grpc(args, role)
    registry, backend = token_registry(args)
    try:
        if args.action == "add":
            made = {name: registry.add(role, name) for name in args.names}
            if args.json:
                print(json.dumps(made))
            else:
                for name, token in made.items():
                    print(f"{role} {name}: {token}")
                print("Shown once; only its SHA-256 is stored. Send it as 'authorization: Bearer <token>'.",
                      file=sys.stderr)
        elif args.action == "revoke":
            for name in args.names:
                n = registry.revoke(role, name)
                print(f"{role} {name}: {n} token(s) revoked" if n else f"{role} {name}: no live token",
                      file=sys.stderr)
        else:
            for r in registry.list():
                if (r["role"] == "device") != (args.command == "devices"):
                    continue
                row = {"role": r["role"], "subject": r["subject"], "sha256_prefix": r["token_sha256"][:12]}
                print(json.dumps(row) if args.json else f"{r['role']:<7} {r['subject']}  sha256:{r['token_sha256'][:12]}")
    finally:
        if backend is not None:
            backend.close()
    return 0


def tokens_over_grpc(args, role) -> int:
    """The same commands against a running server's Admin service (needs an admin token)."""
    import grpc

    from iotstream.auth import bearer
    from iotstream.common.tls import channel as open_channel
    from iotstream.common.tls import client_tls
    from iotstream.v1 import admin_pb2 as pb
    from iotstream.v1 import admin_pb2_grpc

    md = bearer(args.token)
    with open_channel(args.target, client_tls(args)) as ch:
        stub = admin_pb2_grpc.AdminStub(ch)
        try:
            if args.action == "add":
                made = {n: stub.AddToken(pb.AddTokenRequest(role=role, subject=n), timeout=30, metadata=md).token
                        for n in args.names}
                print(json.dumps(made) if args.json else "\n".join(f"{role} {n}: {t}" for n, t in made.items()))
            elif args.action == "revoke":
                for n in args.names:
                    r = stub.RevokeTokens(pb.RevokeTokensRequest(role=role, subject=n), timeout=30, metadata=md)
                    print(f"{role} {n}: {r.revoked} token(s) revoked", file=sys.stderr)
            else:
                listed = stub.ListTokens(pb.ListTokensRequest(role="device" if args.command == "devices" else ""),
                                         timeout=30, metadata=md).tokens
                for t in listed:
                    if (t.role == "device") != (args.command == "devices"):
                        continue
                    row = {"role": t.role, "subject": t.subject, "sha256_prefix": t.sha256_prefix}
                    print(json.dumps(row) if args.json else f"{t.role:<7} {t.subject}  sha256:{t.sha256_prefix}")
        except grpc.RpcError as exc:
            print(f"iotstream {args.command} {args.action}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0


def check_kinds(text: str) -> str:
    unknown = sorted(set(text.split(",")) - set(KINDS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown kind(s) {unknown}; known: {', '.join(KINDS)}")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iotstream", description="Telemetry pipeline for device fleets.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="log lines as text (default) or one JSON object per line")
    sub = p.add_subparsers(dest="command", required=True)

    def listen(parser, port=50051):
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=port, help=f"gRPC port, 0 picks a free one (default {port})")

    def kafka(parser, required):
        parser.add_argument("--kafka", metavar="BOOTSTRAP", required=required,
                            help="Kafka bootstrap servers, e.g. 127.0.0.1:9092" + ("" if required else
                                 " (default: the in-process queue)"))
        parser.add_argument("--namespace", default="iotstream",
                            help="topics NS.readings/.state/.deadletter/.anomalies, group NS-processor "
                                 "(default iotstream)")
        parser.add_argument("--partitions", type=int, default=8,
                            help="readings partitions when this node creates the topic (default 8)")

    def rules(parser):
        parser.add_argument("--rules", metavar="FILE", help="detector rules, TOML (see README \"Detection rules\"; "
                            "default: built-in rules)")

    def storage(parser):
        parser.add_argument("--data-dir", default="./iotstream-data",
                            help="embedded ClickHouse (chDB) data folder, one process at a time (default ./iotstream-data)")
        parser.add_argument("--clickhouse", metavar="URL", help="ClickHouse server instead, e.g. "
                            "http://user:pass@host:8123/iotstream")

    def security(parser, default_auth: bool):
        g = parser.add_argument_group("auth and TLS")
        if default_auth:
            g.add_argument("--insecure-no-auth", action="store_true",
                           help="serve without checking tokens (auth is on by default for this role)")
            parser.set_defaults(auth=False)
        else:
            g.add_argument("--auth", action="store_true",
                           help="check a bearer token on every Ingest/Query call (default: open, for a local demo)")
            parser.set_defaults(insecure_no_auth=False)
        g.add_argument("--tokens-file", help="token registry as a file (default: the auth_tokens table in ClickHouse)")
        g.add_argument("--tls-cert", help="server certificate (PEM); with --tls-key turns TLS on")
        g.add_argument("--tls-key", help="server private key (PEM)")
        g.add_argument("--tls-client-ca", help="CA (PEM) client certificates must chain to: mutual TLS")
        g = parser.add_argument_group("limits")
        g.add_argument("--max-message-bytes", type=int, default=8 * 1024 * 1024,
                       help="largest gRPC message accepted (default 8 MiB)")
        g.add_argument("--max-batch-readings", type=int, default=10_000,
                       help="readings per batch; past it readings are rejected (default 10000)")
        g.add_argument("--max-streams-per-device", type=int, default=8,
                       help="concurrent streams one device may hold, 0 = no cap (default 8)")
        g.add_argument("--rate-limit", type=float, default=0.0,
                       help="readings/s per device; over it batches are held back (default 0 = no limit)")
        g.add_argument("--rate-burst", type=int, default=0, help="token bucket size in readings (default: 1 s of rate)")
        g.add_argument("--rate-reject-after", type=float, default=30.0,
                       help="held back this many seconds without a break: refuse with a retry delay (default 30)")

    def metrics(parser):
        parser.add_argument("--metrics-port", type=int, default=None,
                            help="serve Prometheus /metrics on this port (0 picks one; default off)")
        parser.add_argument("--metrics-host", default="127.0.0.1", help="metrics address (default 127.0.0.1)")

    def client(parser):
        g = parser.add_argument_group("auth and TLS")
        g.add_argument("--tls", action="store_true", help="TLS with the system's CA roots")
        g.add_argument("--tls-ca", help="CA (PEM) to trust for the server's certificate; implies TLS")
        g.add_argument("--tls-cert", help="client certificate (PEM) for mutual TLS")
        g.add_argument("--tls-key", help="client private key (PEM)")
        g.add_argument("--tls-server-name", help="name to check the server certificate against")

    s = sub.add_parser("serve", help="run ingest + processor + query in one process",
                       description="Run ingest, processor and query in one process: with the in-process queue "
                                   "and embedded ClickHouse (chDB) by default, or with --kafka between them.")
    listen(s)
    kafka(s, required=False)
    storage(s)
    rules(s)
    security(s, default_auth=False)
    metrics(s)
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("ingest", help="run the ingest role alone (distributed, needs --kafka)",
                       description="The stateless gRPC ingest role: validates batches and hands them to Kafka; "
                                   "an Ack means the batch is in Kafka. Run any number behind a load balancer.")
    listen(s)
    kafka(s, required=True)
    if "--data-dir" not in s._option_string_actions:
        storage(s)  # where the token registry is, unless --tokens-file
    security(s, default_auth=True)
    metrics(s)
    s.set_defaults(fn=cmd_ingest)

    s = sub.add_parser("process", help="run the processor role alone (distributed, needs --kafka)",
                       description="One member of the processor consumer group: reads Kafka, runs the rolling "
                                   "statistics, writes ClickHouse exactly once, snapshots its state to Kafka.")
    kafka(s, required=True)
    storage(s)
    rules(s)
    s.add_argument("--group", default="", help="consumer group (default NAMESPACE-processor)")
    s.add_argument("--chunk-messages", type=int, default=1000,
                   help="Kafka messages (batches) per ClickHouse insert at most (default 1000)")
    s.add_argument("--snapshot-every", type=float, default=5.0,
                   help="seconds between state snapshots per partition (default 5)")
    metrics(s)
    s.set_defaults(fn=cmd_process)

    s = sub.add_parser("query-server", help="run the Query gRPC service alone",
                       description="Serve the Query RPCs over a ClickHouse server (--clickhouse) or an embedded "
                                   "data folder that no other process has open.")
    listen(s)
    storage(s)
    security(s, default_auth=True)
    metrics(s)
    s.set_defaults(fn=cmd_query_server)

    for command, what in (("devices", "device tokens"), ("tokens", "reader and admin tokens")):
        d = sub.add_parser(command, help=f"add, revoke or list {what}",
                           description=f"Manage {what} in the registry the servers read (the auth_tokens table "
                                       "in ClickHouse, or --tokens-file). A token is printed once; only its "
                                       "SHA-256 is stored. Running servers pick changes up within 5 s; "
                                       "with --target, a running server's Admin service does it.")
        acts = d.add_subparsers(dest="action", required=True)
        for action in ("add", "revoke", "list"):
            a = acts.add_parser(action, help=f"{action} {what}")
            if action != "list":
                if command == "tokens":
                    a.add_argument("role", choices=["reader", "admin"])
                a.add_argument("names", nargs="+", metavar="DEVICE_ID" if command == "devices" else "NAME")
            storage(a)
            a.add_argument("--database", default="iotstream", help="ClickHouse database (default iotstream)")
            a.add_argument("--tokens-file", help="a tokens file instead of ClickHouse")
            a.add_argument("--json", action="store_true", help="JSON output ({name: token} for add)")
            a.add_argument("--target", help="a running server HOST:PORT instead: its Admin service, with an "
                                             "admin --token")
            a.add_argument("--token", default=os.environ.get("IOTSTREAM_TOKEN"),
                           help="admin token for --target (default $IOTSTREAM_TOKEN)")
            client(a)
            a.set_defaults(fn=cmd_tokens)
        if command == "devices":
            from iotstream import configure_cli

            configure_cli.add_parsers(acts, storage, client, os.environ.get("IOTSTREAM_TOKEN"))

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
                   help="anomalies injected per reading, for each kind (default 0.001)")
    s.add_argument("--kinds", default="spike", type=check_kinds,
                   help="comma-separated anomaly kinds to inject, of " + ",".join(KINDS) + " (default spike)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--interval-ms", type=int, default=1000, help="time between a device's samples (default 1000)")
    s.add_argument("--prefix", default="sim", help="device id prefix (default 'sim')")
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    s.add_argument("--tokens", help="JSON file {device_id: token} (as printed by `devices add --json`)")
    client(s)
    s.set_defaults(fn=cmd_simulate)

    q = sub.add_parser("query", help="call the Query service", description="Call one Query RPC and print the reply as JSON.")
    q.add_argument("--target", default="127.0.0.1:50051", help="server HOST:PORT (default 127.0.0.1:50051)")
    q.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds (default 10)")
    q.add_argument("--json", action="store_true", help="one JSON object on one line")
    q.add_argument("--token", default=os.environ.get("IOTSTREAM_TOKEN"),
                   help="reader or admin token (default $IOTSTREAM_TOKEN)")
    client(q)
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
    x.add_argument("--severity", choices=["low", "medium", "high"], help="at least this severity")
    x.add_argument("--state", choices=["open", "closed"], help="only episodes in this state")
    x.add_argument("--acked", choices=["yes", "no"], help="only acknowledged (yes) or unacknowledged (no) ones")
    since(x, 24.0 * 30)
    paged(x)
    x = qs.add_parser("ack", help="AcknowledgeAnomaly (admin token)")
    x.add_argument("id", help="the anomaly's id, from `query anomalies`")
    x.add_argument("--by", required=True, help="who acknowledges it")
    x = qs.add_parser("watch", help="WatchAnomalies: one JSON line per event, until Ctrl-C")
    x.add_argument("--device", default="", help="device id")
    x.add_argument("--metric", dest="metric_name", default="", help="metric")
    x.add_argument("--kind", default="", help="detector kind, e.g. zscore")
    x.add_argument("--cursor", default="", help="resume after the event that carried this cursor")
    x.add_argument("--count", type=int, default=0, help="stop after this many events (default: never)")
    qs.add_parser("stats", help="GetStats: rows, rates, devices online, rejections")
    for sub_q in qs.choices.values():  # also after the subcommand: `iotstream query stats --json`
        sub_q.add_argument("--target", default=argparse.SUPPRESS, help="server HOST:PORT")
        sub_q.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="one JSON object")
    q.set_defaults(fn=cmd_query)
    return p


def main(argv: list[str] | None = None) -> int:
    from iotstream.common import logs

    args = build_parser().parse_args(argv)
    logs.setup(logging.DEBUG if args.verbose else logging.INFO, args.log_format)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
