"""Flags of `serve` and `process` reach the node's Config with the documented defaults."""

from iotstream.cli.main import build_parser
from iotstream.cli.options import node_config
from iotstream.processor.state import IDLE_MS, MAX_KEYS

ROLES = ["ingest", "process", "query"]


def test_key_limits_reach_the_node_config():
    args = build_parser().parse_args(["serve", "--max-keys-per-partition", "5", "--key-idle-hours", "2"])
    cfg = node_config(args, ROLES)
    assert (cfg.max_keys, cfg.key_idle_ms) == (5, 2 * 3_600_000)
    process = build_parser().parse_args(
        ["process", "--kafka", "127.0.0.1:9", "--max-keys-per-partition", "7"]
    )
    assert node_config(process, ["process"]).max_keys == 7


def test_key_limits_default_to_the_processor_defaults():
    cfg = node_config(build_parser().parse_args(["serve"]), ROLES)
    assert (cfg.max_keys, cfg.key_idle_ms) == (MAX_KEYS, IDLE_MS)
