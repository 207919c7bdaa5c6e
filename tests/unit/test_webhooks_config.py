"""Webhook configuration, filters, signatures and backoff: pure logic."""

import hashlib
import hmac

import pytest

from iotstream.alerts import webhooks
from iotstream.v1 import query_pb2 as pb


def write(tmp_path, text):
    path = tmp_path / "hooks.toml"
    path.write_text(text)
    return str(path)


def test_a_full_hook_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", "abc")
    [hook] = webhooks.load_hooks(
        write(
            tmp_path,
            """
[[webhook]]
name = "ops"
url = "https://example.invalid/x"
secret_env = "HOOK_SECRET"
min_severity = "medium"
metrics = ["temp*", "hum*"]
devices = ["plant-a-*"]
events = ["opened", "closed"]
max_attempts = 3
backoff_s = 0.5
""",
        )
    )
    assert hook.secret == b"abc" and hook.min_severity == pb.SEVERITY_MEDIUM and hook.max_attempts == 3
    row = {"device_id": "plant-a-7", "metric": "temperature", "severity": pb.SEVERITY_HIGH}
    assert hook.wants("opened", row)
    assert not hook.wants("escalated", row)  # not among its events
    assert not hook.wants("opened", {**row, "severity": pb.SEVERITY_LOW})
    assert not hook.wants("opened", {**row, "device_id": "plant-b-1"})
    assert not hook.wants("opened", {**row, "metric": "pressure"})
    assert [hook.delay(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]


@pytest.mark.parametrize(
    "text,words",
    [
        ('[[webhook]]\nurl = "ftp://x"\nsecret = "s"', "url must be http"),
        ('[[webhook]]\nurl = "http://x"', "needs a secret"),
        ('[[webhook]]\nurl = "http://x"\nsecret = "s"\nmin_severity = "urgent"', "min_severity"),
        ('[[webhook]]\nurl = "http://x"\nsecret = "s"\nevents = ["acked"]', "events must be"),
        ('[[webhook]]\nurl = "http://x"\nsecret = "s"\nretries = 3', "unknown key(s) ['retries']"),
        ('[[webhook]]\nurl = "http://x"\nsecret = "s"\nbackoff_s = -1', "positive numbers"),
        ('[hooks]\nurl = "http://x"', "unknown table"),
        (
            '[[webhook]]\nname = "a"\nurl = "http://x"\nsecret = "s"\n[[webhook]]\nname = "a"\nurl = "http://y"\n'
            'secret = "s"',
            "unique",
        ),
        ("not toml [", "webhooks file"),
    ],
)
def test_bad_files_are_refused_naming_the_problem(tmp_path, text, words):
    with pytest.raises(webhooks.WebhookConfigError, match=None) as err:
        webhooks.load_hooks(write(tmp_path, text))
    assert words in str(err.value)


def test_signature_is_hmac_sha256_over_timestamp_and_body():
    body = b'{"event":"opened"}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert webhooks.sign(b"k", "1700000000", body) == "sha256=" + expected


def test_idempotency_key_depends_on_episode_and_event_only():
    row = {
        "device_id": "d",
        "metric": "m",
        "kind": "zscore",
        "opened_ms": 1,
        "updated_ms": 2,
        "closes_ms": 3,
        "readings": 1,
        "time_ms": 1,
        "value": 1.0,
        "score": 0.6,
        "zscore": 5.0,
        "severity": 2,
        "acked_by": "",
        "deleted": 0,
    }
    k1, _ = webhooks.payload("opened", row, 0)
    k2, _ = webhooks.payload("opened", {**row, "readings": 5, "updated_ms": 9}, 0)
    k3, _ = webhooks.payload("closed", row, 0)
    k4, _ = webhooks.payload("escalated", {**row, "severity": 3}, 0)
    assert k1 == k2 and len({k1, k3, k4}) == 3
