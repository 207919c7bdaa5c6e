"""Option groups shared by the commands, and the node Config they describe."""

from __future__ import annotations

import logging
import sys

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
        kafka = KafkaConfig(
            bootstrap=args.kafka,
            namespace=args.namespace,
            partitions=args.partitions,
            group=getattr(args, "group", ""),
        )
    return Config(
        host=getattr(args, "host", "127.0.0.1"),
        port=getattr(args, "port", 0),
        roles=frozenset(roles),
        data_dir=getattr(args, "data_dir", "./iotstream-data"),
        clickhouse_url=getattr(args, "clickhouse", None),
        kafka=kafka,
        rules_path=getattr(args, "rules", None),
        max_chunk_messages=getattr(args, "chunk_messages", 1000),
        snapshot_every_s=getattr(args, "snapshot_every", 5.0),
        max_keys=getattr(args, "max_keys_per_partition", 2_000_000),
        key_idle_ms=int(getattr(args, "key_idle_hours", 24.0) * 3_600_000),
        log_max_bytes=int(getattr(args, "log_max_mb", 512) * 1024 * 1024),
        unavailable_after_s=getattr(args, "unavailable_after", 30.0),
        webhooks_path=getattr(args, "webhooks", None),
        webhooks_state=getattr(args, "webhooks_state", None),
        http_port=getattr(args, "http_port", None),
        http_host=getattr(args, "http_host", "127.0.0.1"),
        **security_config(args, roles),
    )


def security_config(args, roles) -> dict:
    """Config fields for auth, TLS, metrics and limits from the flags `security` and `metrics` add."""
    from iotstream.common.tls import ServerTLS
    from iotstream.ingest import Limits

    out = {
        "metrics_port": getattr(args, "metrics_port", None),
        "metrics_host": getattr(args, "metrics_host", "127.0.0.1"),
    }
    if not hasattr(args, "tls_cert"):
        return out
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("iotstream: --tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise SystemExit("iotstream: --tls-client-ca needs --tls-cert and --tls-key")
    distributed = set(roles) != {"ingest", "process", "query"}
    auth = args.auth or (distributed and not args.insecure_no_auth)
    limits = Limits(
        max_readings=args.max_batch_readings,
        max_message_bytes=args.max_message_bytes,
        max_streams_per_device=args.max_streams_per_device,
        rate_readings_per_s=args.rate_limit,
        burst_readings=args.rate_burst,
        reject_after_s=args.rate_reject_after,
        max_sends_per_device=args.max_sends_per_device,
        max_metrics_per_device=args.max_metrics_per_device,
    )
    return {
        **out,
        "auth": auth,
        "tokens_file": args.tokens_file,
        "limits": limits,
        "tls": ServerTLS(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None,
    }


def listen(parser, port=50051):
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=port, help=f"gRPC port, 0 picks a free one (default {port})"
    )


def kafka(parser, required):
    parser.add_argument(
        "--kafka",
        metavar="BOOTSTRAP",
        required=required,
        help="Kafka bootstrap servers, e.g. 127.0.0.1:9092"
        + ("" if required else " (default: the durable local log)"),
    )
    parser.add_argument(
        "--namespace",
        default="iotstream",
        help="topics NS.readings/.state/.deadletter/.anomalies, group NS-processor (default iotstream)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=8,
        help="readings partitions when this node creates the topic (default 8)",
    )


def keys(parser):
    g = parser.add_argument_group("rolling state")
    g.add_argument(
        "--max-keys-per-partition",
        type=int,
        default=2_000_000,
        help="(device, metric) keys with rolling state per partition; past it readings are stored "
        "unscored, counted as KEYS_OVER_LIMIT (default 2000000)",
    )
    g.add_argument(
        "--key-idle-hours",
        type=float,
        default=24.0,
        help="a key without a reading this long is dropped and comes back cold (default 24)",
    )


def rules(parser):
    parser.add_argument(
        "--rules",
        metavar="FILE",
        help='detector rules, TOML (see README "Detection rules"; default: built-in rules)',
    )


def storage(parser):
    parser.add_argument(
        "--data-dir",
        default="./iotstream-data",
        help="embedded ClickHouse (chDB) data folder, one process at a time (default ./iotstream-data)",
    )
    parser.add_argument(
        "--clickhouse",
        metavar="URL",
        help="ClickHouse server instead, e.g. http://user:pass@host:8123/iotstream",
    )


def security(parser, default_auth: bool):
    g = parser.add_argument_group("auth and TLS")
    if default_auth:
        g.add_argument(
            "--insecure-no-auth",
            action="store_true",
            help="serve without checking tokens (auth is on by default for this role)",
        )
        parser.set_defaults(auth=False)
    else:
        g.add_argument(
            "--auth",
            action="store_true",
            help="check a bearer token on every Ingest/Query call (default: open, for a local demo)",
        )
        parser.set_defaults(insecure_no_auth=False)
    g.add_argument(
        "--tokens-file", help="token registry as a file (default: the auth_tokens table in ClickHouse)"
    )
    g.add_argument("--tls-cert", help="server certificate (PEM); with --tls-key turns TLS on")
    g.add_argument("--tls-key", help="server private key (PEM)")
    g.add_argument("--tls-client-ca", help="CA (PEM) client certificates must chain to: mutual TLS")
    g = parser.add_argument_group("limits")
    g.add_argument(
        "--max-message-bytes",
        type=int,
        default=8 * 1024 * 1024,
        help="largest gRPC message accepted (default 8 MiB)",
    )
    g.add_argument(
        "--max-batch-readings",
        type=int,
        default=10_000,
        help="readings per batch; past it readings are rejected (default 10000)",
    )
    g.add_argument(
        "--max-streams-per-device",
        type=int,
        default=8,
        help="concurrent streams one device may hold, 0 = no cap (default 8)",
    )
    g.add_argument(
        "--rate-limit",
        type=float,
        default=0.0,
        help="readings/s per device; over it batches are held back (default 0 = no limit)",
    )
    g.add_argument(
        "--rate-burst", type=int, default=0, help="token bucket size in readings (default: 1 s of rate)"
    )
    g.add_argument(
        "--rate-reject-after",
        type=float,
        default=30.0,
        help="held back this many seconds without a break: refuse with a retry delay (default 30)",
    )
    g.add_argument(
        "--max-sends-per-device",
        type=int,
        default=8,
        help="unary Send calls one device may have in progress, 0 = no cap (default 8)",
    )
    g.add_argument(
        "--max-metrics-per-device",
        type=int,
        default=1000,
        help="distinct metrics one device may send (per ingest node), 0 = no cap (default 1000)",
    )


def metrics(parser):
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus /metrics on this port (0 picks one; default off)",
    )
    parser.add_argument("--metrics-host", default="127.0.0.1", help="metrics address (default 127.0.0.1)")


def operator(parser):
    from iotstream.alerts import webhooks
    from iotstream.console import server as console

    console.add_flags(parser)
    webhooks.add_flags(parser)


def client_tls(parser):
    g = parser.add_argument_group("auth and TLS")
    g.add_argument("--tls", action="store_true", help="TLS with the system's CA roots")
    g.add_argument("--tls-ca", help="CA (PEM) to trust for the server's certificate; implies TLS")
    g.add_argument("--tls-cert", help="client certificate (PEM) for mutual TLS")
    g.add_argument("--tls-key", help="client private key (PEM)")
    g.add_argument("--tls-server-name", help="name to check the server certificate against")
