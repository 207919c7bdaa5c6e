"""`iotstream devices|tokens add|revoke|list` on a tokens file, and the flags that turn auth on."""

import json

import pytest

from iotstream.auth import Authenticator, FileTokens
from iotstream.cli.main import build_parser, main
from iotstream.cli.options import node_config


def test_devices_add_prints_tokens_once_and_they_authenticate(tmp_path, capsys):
    path = str(tmp_path / "tokens.jsonl")
    assert main(["devices", "add", "dev-1", "dev-2", "--tokens-file", path, "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert set(made) == {"dev-1", "dev-2"}
    auth = Authenticator(FileTokens(path))
    assert auth.identify((("authorization", f"Bearer {made['dev-2']}"),)).subject == "dev-2"
    assert main(["tokens", "add", "reader", "dash", "--tokens-file", path]) == 0
    assert "reader dash: iot_" in capsys.readouterr().out
    assert main(["devices", "list", "--tokens-file", path, "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["subject"] for r in listed] == ["dev-1", "dev-2"]  # devices only, no token in the output
    assert not any(t in json.dumps(listed) for t in made.values())
    assert main(["devices", "revoke", "dev-1", "--tokens-file", path]) == 0
    assert [(r["role"], r["subject"]) for r in FileTokens(path).list()] == [
        ("device", "dev-2"),
        ("reader", "dash"),
    ]


@pytest.mark.parametrize(
    "argv,roles,auth",
    [
        (["serve"], ["ingest", "process", "query"], False),
        (["serve", "--auth"], ["ingest", "process", "query"], True),
        (["ingest", "--kafka", "k:9092"], ["ingest"], True),
        (["ingest", "--kafka", "k:9092", "--insecure-no-auth"], ["ingest"], False),
        (["query-server"], ["query"], True),
    ],
)
def test_auth_is_on_for_distributed_roles_unless_asked_off(argv, roles, auth):
    cfg = node_config(build_parser().parse_args(argv), roles)
    assert cfg.auth is auth


def test_limit_and_tls_flags_reach_the_config():
    args = build_parser().parse_args(
        [
            "serve",
            "--rate-limit",
            "500",
            "--max-streams-per-device",
            "2",
            "--max-message-bytes",
            "65536",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--metrics-port",
            "0",
        ]
    )
    cfg = node_config(args, ["ingest", "process", "query"])
    assert (
        cfg.limits.rate_readings_per_s,
        cfg.limits.max_streams_per_device,
        cfg.limits.max_message_bytes,
    ) == (500, 2, 65536)
    assert cfg.tls.cert == "c.pem" and cfg.tls.client_ca is None and cfg.metrics_port == 0
    with pytest.raises(SystemExit):
        node_config(
            build_parser().parse_args(["serve", "--tls-cert", "c.pem"]), ["ingest", "process", "query"]
        )
