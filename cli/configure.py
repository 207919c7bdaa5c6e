"""`iotstream devices configure|config`: set or show a device's desired configuration.

With --target the running server's Admin service does it, and the device's open streams get the new
configuration at once; without, it is written to the store, and running servers push it within
iotstream.auth.device_config.REFRESH_S.
"""

from __future__ import annotations

import json
import sys

from google.protobuf import json_format


def add_parsers(actions, storage, client, token_default) -> None:
    """Add `configure` and `config` to the `devices` subcommand."""
    a = actions.add_parser(
        "configure",
        help="set a device's desired configuration (a new version)",
        description=__doc__.splitlines()[0],
    )
    a.add_argument("device_id")
    a.add_argument(
        "--sample-interval-ms", type=int, default=0, help="sampling interval (0: the device's default)"
    )
    a.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="NAME",
        help="a metric the device should send (repeat; none: all)",
    )
    a.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="settings",
        help="a free setting for the firmware (repeat)",
    )
    s = actions.add_parser("config", help="show a device's desired configuration and the version it applied")
    s.add_argument("device_id")
    for p in (a, s):
        storage(p)
        p.add_argument("--database", default="iotstream", help="ClickHouse database (default iotstream)")
        p.add_argument("--target", help="a running server HOST:PORT instead: its Admin service")
        p.add_argument(
            "--token", default=token_default, help="admin token for --target (default $IOTSTREAM_TOKEN)"
        )
        client(p)
        p.set_defaults(fn=run)


def desired(args):
    from iotstream.v1 import ingest_pb2 as pb

    settings = {}
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        settings[key] = value
    return pb.DeviceConfig(sample_interval_ms=args.sample_interval_ms, metrics=args.metric, settings=settings)


def run(args) -> int:
    try:
        state = over_grpc(args) if args.target else in_store(args)
    except ValueError as exc:
        print(f"iotstream devices {args.action}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(json_format.MessageToDict(state, always_print_fields_with_no_presence=True)))
    return 0


def over_grpc(args):
    import grpc

    from iotstream.auth import bearer
    from iotstream.common.tls import channel as open_channel
    from iotstream.common.tls import client_tls
    from iotstream.v1 import admin_pb2 as pb
    from iotstream.v1 import admin_pb2_grpc

    with open_channel(args.target, client_tls(args)) as ch:
        stub = admin_pb2_grpc.AdminStub(ch)
        try:
            if args.action == "configure":
                return stub.ConfigureDevice(
                    pb.ConfigureDeviceRequest(device_id=args.device_id, config=desired(args)),
                    timeout=30,
                    metadata=bearer(args.token),
                )
            return stub.GetDeviceConfig(
                pb.GetDeviceConfigRequest(device_id=args.device_id), timeout=30, metadata=bearer(args.token)
            )
        except grpc.RpcError as exc:
            raise ValueError(f"{exc.code().name}: {exc.details()}") from None


def in_store(args):
    from iotstream.auth import device_config
    from iotstream.clickhouse import open_backend
    from iotstream.clickhouse.device_config import DeviceConfigs

    backend = open_backend(data_dir=args.data_dir, clickhouse_url=args.clickhouse, database=args.database)
    try:
        configs = DeviceConfigs(backend)
        if args.action == "configure":
            config = desired(args)
            device_config.check(args.device_id, config)
            configs.set(
                args.device_id,
                config.sample_interval_ms,
                list(config.metrics),
                dict(config.settings),
                device_config.now_ms(),
            )
        return device_config.state_message(configs.desired(args.device_id), configs.reported(args.device_id))
    finally:
        backend.close()
