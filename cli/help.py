"""An example at the end of every subcommand's --help, kept apart from the parser that defines the flags."""

from __future__ import annotations

import argparse

# Keyed by the words after `iotstream`; every subcommand has one (tests/unit/test_cli_help.py checks).
EXAMPLES = {
    "serve": "iotstream serve --port 50051 --data-dir ./iotstream-data --http-port 8080",
    "ingest": "iotstream ingest --kafka 127.0.0.1:9092 --tokens-file tokens.json --port 50051",
    "process": "iotstream process --kafka 127.0.0.1:9092 --clickhouse http://default:@127.0.0.1:8123/iotstream",
    "query-server": "iotstream query-server --clickhouse http://default:@127.0.0.1:8123/iotstream "
    "--http-port 8080",
    "devices": "iotstream devices list",
    "devices add": "iotstream devices add sensor-0001 sensor-0002 --json > device-tokens.json",
    "devices revoke": "iotstream devices revoke sensor-0001",
    "devices list": "iotstream devices list --target 127.0.0.1:50051 --token $ADMIN_TOKEN",
    "devices configure": "iotstream devices configure sensor-0001 --sample-interval-ms 10000 "
    "--metric temperature --set mode=eco --target 127.0.0.1:50051 --token $ADMIN_TOKEN",
    "devices config": "iotstream devices config sensor-0001 --target 127.0.0.1:50051 --token $ADMIN_TOKEN",
    "tokens": "iotstream tokens add reader grafana",
    "tokens add": "iotstream tokens add reader grafana",
    "tokens revoke": "iotstream tokens revoke reader grafana",
    "tokens list": "iotstream tokens list --json",
    "demo": "iotstream demo --devices 20 --readings 3000",
    "simulate": "iotstream simulate --target 127.0.0.1:50051 --devices 50 --readings 600 --anomalies 0.01",
    "query": "iotstream query devices --status online",
    "query devices": "iotstream query devices --prefix sim- --status offline",
    "query device": "iotstream query device sim-00001",
    "query history": "iotstream query history sim-00001 --metric temperature --since-hours 0.5",
    "query aggregate": "iotstream query aggregate --device sim-00001 --metric temperature --func avg "
    "--func p95 --interval-s 300",
    "query anomalies": "iotstream query anomalies --severity high --state open --acked no",
    "query ack": "iotstream query ack <ID from query anomalies> --by alice",
    "query watch": "iotstream query watch --kind zscore    (then, after Ctrl-C: --since <printed cursor>)",
    "query stats": "iotstream query stats --json | jq .readings",
}


def subcommands(parser: argparse.ArgumentParser, prefix: str = ""):
    """(words, parser) of every subcommand under `parser`, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words = f"{prefix} {name}".strip()
                yield words, sub
                yield from subcommands(sub, words)


def add_examples(parser: argparse.ArgumentParser) -> None:
    for words, sub in subcommands(parser):
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
        sub.epilog = f"example:\n  {EXAMPLES[words]}"
