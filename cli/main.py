"""The `iotstream` command: one parser function per command, each in the module that runs it."""

from __future__ import annotations

import argparse
import logging

from . import nodes, query, simulate, tokens
from .help import add_examples


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iotstream", description="Telemetry pipeline for device fleets.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="log lines as text (default) or one JSON object per line",
    )
    sub = p.add_subparsers(dest="command", required=True)
    nodes.add_parsers(sub)
    tokens.add_parsers(sub)
    simulate.add_parser(sub)
    query.add_parser(sub)
    add_examples(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from iotstream.common import logs

    args = build_parser().parse_args(argv)
    logs.setup(logging.DEBUG if args.verbose else logging.INFO, args.log_format)
    return args.fn(args)
