"""simulate: a fleet of devices over real gRPC streams."""

from __future__ import annotations

import argparse
import asyncio
import json

from iotstream.client.simulate import KINDS

from . import options


def cmd_simulate(args) -> int:
    from iotstream.client.simulate import run_fleet
    from iotstream.common.tls import client_tls

    tokens = json.loads(open(args.tokens).read()) if args.tokens else None
    summary, _ = asyncio.run(
        run_fleet(
            args.target,
            args.devices,
            args.readings,
            args.batch,
            args.rate,
            args.anomalies,
            args.seed,
            args.interval_ms,
            args.prefix,
            progress=True,
            tokens=tokens,
            tls=client_tls(args),
            kinds=args.kinds.split(","),
            quantize=args.quantize,
        )
    )
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{summary['devices']} devices: sent {summary['sent']:,} readings, acked {summary['acked']:,}, "
            f"rejected {summary['rejected']:,} in {summary['seconds']} s = {summary['readings_per_s']:,.0f} "
            f"readings/s; ack p50 {summary['ack_p50_ms']} ms, p99 {summary['ack_p99_ms']} ms; "
            f"{summary['injected_anomalies']} anomalies injected"
        )
    return 0 if summary["acked"] + summary["rejected"] == summary["sent"] else 1


def check_kinds(text: str) -> str:
    unknown = sorted(set(text.split(",")) - set(KINDS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown kind(s) {unknown}; known: {', '.join(KINDS)}")
    return text


def add_parser(sub) -> None:
    s = sub.add_parser(
        "simulate",
        help="stream a simulated fleet to an ingest server",
        description="N devices, each on its own bidirectional stream, send R readings over 3 "
        "metrics with injected spikes; waits for every ack and prints a summary.",
    )
    s.add_argument(
        "--target", default="127.0.0.1:50051", help="ingest server HOST:PORT (default 127.0.0.1:50051)"
    )
    s.add_argument("--devices", type=int, default=10, help="number of devices (default 10)")
    s.add_argument("--readings", type=int, default=1000, help="readings per device (default 1000)")
    s.add_argument("--batch", type=int, default=100, help="readings per batch (default 100)")
    s.add_argument(
        "--rate", type=float, default=None, help="total readings/s cap (default: as fast as acked)"
    )
    s.add_argument(
        "--anomalies",
        type=float,
        default=0.001,
        help="anomalies injected per reading, for each kind (default 0.001)",
    )
    s.add_argument(
        "--kinds",
        default="spike",
        type=check_kinds,
        help="comma-separated anomaly kinds to inject, of " + ",".join(KINDS) + " (default spike)",
    )
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument(
        "--interval-ms", type=int, default=1000, help="time between a device's samples (default 1000)"
    )
    s.add_argument("--prefix", default="sim", help="device id prefix (default 'sim')")
    s.add_argument(
        "--quantize",
        action="store_true",
        help="round readings to real sensors' steps (0.1 degC, 1 %%RH, 0.1 hPa; iotstream.client.signals)",
    )
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    s.add_argument("--tokens", help="JSON file {device_id: token} (as printed by `devices add --json`)")
    options.client_tls(s)
    s.set_defaults(fn=cmd_simulate)
