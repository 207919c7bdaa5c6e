"""devices and tokens: the token registry, in its store or through a running server's Admin service."""

from __future__ import annotations

import json
import os
import sys

from . import options


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
                print(
                    "Shown once; only its SHA-256 is stored. Send it as 'authorization: Bearer <token>'.",
                    file=sys.stderr,
                )
        elif args.action == "revoke":
            for name in args.names:
                n = registry.revoke(role, name)
                print(
                    f"{role} {name}: {n} token(s) revoked" if n else f"{role} {name}: no live token",
                    file=sys.stderr,
                )
        else:
            for r in registry.list():
                if (r["role"] == "device") != (args.command == "devices"):
                    continue
                row = {"role": r["role"], "subject": r["subject"], "sha256_prefix": r["token_sha256"][:12]}
                print(
                    json.dumps(row)
                    if args.json
                    else f"{r['role']:<7} {r['subject']}  sha256:{r['token_sha256'][:12]}"
                )
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
                made = {
                    n: stub.AddToken(pb.AddTokenRequest(role=role, subject=n), timeout=30, metadata=md).token
                    for n in args.names
                }
                print(
                    json.dumps(made) if args.json else "\n".join(f"{role} {n}: {t}" for n, t in made.items())
                )
            elif args.action == "revoke":
                for n in args.names:
                    r = stub.RevokeTokens(
                        pb.RevokeTokensRequest(role=role, subject=n), timeout=30, metadata=md
                    )
                    print(f"{role} {n}: {r.revoked} token(s) revoked", file=sys.stderr)
            else:
                listed = stub.ListTokens(
                    pb.ListTokensRequest(role="device" if args.command == "devices" else ""),
                    timeout=30,
                    metadata=md,
                ).tokens
                for t in listed:
                    if (t.role == "device") != (args.command == "devices"):
                        continue
                    row = {"role": t.role, "subject": t.subject, "sha256_prefix": t.sha256_prefix}
                    print(
                        json.dumps(row) if args.json else f"{t.role:<7} {t.subject}  sha256:{t.sha256_prefix}"
                    )
        except grpc.RpcError as exc:
            print(
                f"iotstream {args.command} {args.action}: {exc.code().name}: {exc.details()}", file=sys.stderr
            )
            return 1
    return 0


def add_parsers(sub) -> None:
    for command, what in (("devices", "device tokens"), ("tokens", "reader and admin tokens")):
        d = sub.add_parser(
            command,
            help=f"add, revoke or list {what}",
            description=f"Manage {what} in the registry the servers read (the auth_tokens table "
            "in ClickHouse, or --tokens-file). A token is printed once; only its "
            "SHA-256 is stored. Running servers pick changes up within 5 s; "
            "with --target, a running server's Admin service does it.",
        )
        acts = d.add_subparsers(dest="action", required=True)
        for action in ("add", "revoke", "list"):
            a = acts.add_parser(action, help=f"{action} {what}")
            if action != "list":
                if command == "tokens":
                    a.add_argument("role", choices=["reader", "admin"])
                a.add_argument("names", nargs="+", metavar="DEVICE_ID" if command == "devices" else "NAME")
            options.storage(a)
            a.add_argument("--database", default="iotstream", help="ClickHouse database (default iotstream)")
            a.add_argument("--tokens-file", help="a tokens file instead of ClickHouse")
            a.add_argument("--json", action="store_true", help="JSON output ({name: token} for add)")
            a.add_argument(
                "--target",
                help="a running server HOST:PORT instead: its Admin service, with an admin --token",
            )
            a.add_argument(
                "--token",
                default=os.environ.get("IOTSTREAM_TOKEN"),
                help="admin token for --target (default $IOTSTREAM_TOKEN)",
            )
            options.client_tls(a)
            a.set_defaults(fn=cmd_tokens)
        if command == "devices":
            from iotstream.cli import configure

            configure.add_parsers(
                acts, options.storage, options.client_tls, os.environ.get("IOTSTREAM_TOKEN")
            )
