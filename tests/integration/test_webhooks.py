"""Alert webhooks against local HTTP receivers this test starts: opened/escalated/closed in order, filters,
HMAC signatures checked here with hmac, retries until a failing receiver recovers, dead letters after the
last try, delivery counters, and an event pending at shutdown delivered after a restart."""

import hashlib
import hmac
import json
import sqlite3
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pytest
from conftest import ServerThread
from waiting import poll

from iotstream.clickhouse.store import StoreConfig
from iotstream.node import Config

SECRET = "s3cret-for-tests"


def now_ms():
    return time.time_ns() // 1_000_000


def flagged(rows) -> pa.Table:
    """(device_id, metric, time_ms, score) flagged readings, as the processor writes them."""
    return pa.table(
        {
            "device_id": [r[0] for r in rows],
            "metric": [r[1] for r in rows],
            "time": pa.array([r[2] for r in rows], pa.timestamp("ms", tz="UTC")),
            "value": [42.0] * len(rows),
            "kind": ["zscore"] * len(rows),
            "score": [float(r[3]) for r in rows],
            "zscore": [8.0] * len(rows),
        }
    )


class Receiver:
    """An HTTP server recording every POST; answers `statuses` in turn, then 200."""

    def __init__(self, statuses=()):
        self.statuses = list(statuses)
        self.requests: list[dict] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.changed:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.requests.append({"headers": dict(self.headers), "body": body, "status": status})
                    receiver.changed.notify_all()
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}/hook"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, n: int, timeout: float = 60) -> list[dict]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.requests) >= n, timeout), (
                f"{len(self.requests)} of {n} requests in {timeout} s: {[r['body'] for r in self.requests]}"
            )
            return list(self.requests)

    def stop(self):
        self.http.shutdown()
        self.http.server_close()


def events(requests):
    return [(json.loads(r["body"])["event"], json.loads(r["body"])["episode"]["device_id"]) for r in requests]


def verified(request) -> dict:
    """The body, after checking the signature as a receiver would."""
    h = request["headers"]
    expected = hmac.new(
        SECRET.encode(), h["X-Iotstream-Timestamp"].encode() + b"." + request["body"], hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(h["X-Iotstream-Signature"], "sha256=" + expected)
    assert abs(int(h["X-Iotstream-Timestamp"]) - time.time()) < 60
    body = json.loads(request["body"])
    assert h["Idempotency-Key"] == body["idempotency_key"] and h["X-Iotstream-Event"] == body["event"]
    return body


def hooks_file(tmp_path, *hooks) -> str:
    lines = []
    for h in hooks:
        lines.append("[[webhook]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in h.items()]
        lines.append(f'secret = "{SECRET}"')
    path = tmp_path / f"hooks-{uuid.uuid4().hex[:6]}.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def node_with(chdb_dir, tmp_path):
    started = []

    def start(hooks_path, quiet_ms=60_000, database=None, state=None):
        srv = ServerThread(
            Config(
                port=0,
                data_dir=chdb_dir,
                database=database or "t_" + uuid.uuid4().hex[:12],
                store=StoreConfig(episode_quiet_ms=quiet_ms),
                webhooks_path=hooks_path,
                webhooks_state=state or str(tmp_path / "outbox.sqlite"),
            )
        )
        started.append(srv)
        return srv

    yield start
    for srv in started:
        if srv.server.store is not None:
            srv.stop()


def deliveries(srv, hook, result):
    return (
        srv.server.metrics.registry.get_sample_value(
            "iotstream_webhook_deliveries_total", {"hook": hook, "result": result}
        )
        or 0
    )


def settle(srv, hook, result, n, timeout=10):
    """Wait for a delivery counter to reach n: it moves just after the receiver has answered."""
    poll(lambda: deliveries(srv, hook, result) >= n, timeout, f"{hook} {result}: {n} deliveries", 0.02)
    return deliveries(srv, hook, result)


def test_opened_escalated_closed_with_filters_and_signatures(node_with, tmp_path):
    every, plant_high = Receiver(), Receiver()
    path = hooks_file(
        tmp_path,
        {"name": "every", "url": every.url},
        {
            "name": "plant-high",
            "url": plant_high.url,
            "min_severity": "high",
            "metrics": ["temp*"],
            "devices": ["plant-*"],
        },
    )
    srv = node_with(path, quiet_ms=8_000)  # episodes stay open 8 s after their last flagged reading
    try:
        store, t0 = srv.server.store, now_ms()
        store.insert_anomalies(flagged([("plant-1", "temperature", t0, 0.55)]))  # low
        assert events(every.wait(1)) == [("opened", "plant-1")]
        store.insert_anomalies(
            flagged(
                [
                    ("plant-1", "temperature", t0 + 100, 0.75),  # now high: escalated
                    ("other-1", "temperature", t0, 0.9),  # wrong device for plant-high
                    ("plant-2", "humidity", t0, 0.9),
                ]
            )
        )  # wrong metric for plant-high
        got = every.wait(7)  # + escalated, 2 opened, then 3 closed
        assert sorted(events(got[1:4])) == [
            ("escalated", "plant-1"),
            ("opened", "other-1"),
            ("opened", "plant-2"),
        ]
        assert sorted(events(got[4:])) == [
            ("closed", "other-1"),
            ("closed", "plant-1"),
            ("closed", "plant-2"),
        ]
        assert events(plant_high.wait(2)) == [("escalated", "plant-1"), ("closed", "plant-1")]
        bodies = [verified(r) for r in got + plant_high.requests]
        escalated = next(b for b in bodies if b["event"] == "escalated")
        assert escalated["episode"]["severity"] == "high" and escalated["episode"]["readings"] == 2
        assert all(b["episode"]["state"] == "closed" for b in bodies if b["event"] == "closed")
        assert len({b["idempotency_key"] for b in bodies[:7]}) == 7  # one per event
        assert settle(srv, "every", "delivered", 7) == 7 and settle(srv, "plant-high", "delivered", 2) == 2
        assert deliveries(srv, "every", "failed") == 0
    finally:
        every.stop()
        plant_high.stop()


def test_a_failing_receiver_gets_retries_until_it_recovers(node_with, tmp_path):
    flaky = Receiver(statuses=[503, 500, 429])
    srv = node_with(hooks_file(tmp_path, {"name": "flaky", "url": flaky.url, "backoff_s": 0.05}))
    try:
        srv.server.store.insert_anomalies(flagged([("dev-1", "temperature", now_ms(), 0.6)]))
        got = flaky.wait(4)
        assert [r["status"] for r in got] == [503, 500, 429, 200]
        assert len({r["body"] for r in got}) == 1 and len({r["headers"]["Idempotency-Key"] for r in got}) == 1
        assert verified(got[-1])["event"] == "opened"
        assert settle(srv, "flaky", "delivered", 1) == 1
        assert deliveries(srv, "flaky", "failed") == 3 and deliveries(srv, "flaky", "dead") == 0
    finally:
        flaky.stop()


def test_dead_letter_after_the_last_try_and_at_once_on_a_client_error(node_with, tmp_path):
    down, refuses = Receiver(statuses=[500] * 10), Receiver(statuses=[400] * 10)
    state = str(tmp_path / "dead.sqlite")
    srv = node_with(
        hooks_file(
            tmp_path,
            {"name": "down", "url": down.url, "max_attempts": 3, "backoff_s": 0.05},
            {"name": "refuses", "url": refuses.url, "max_attempts": 3, "backoff_s": 0.05},
        ),
        state=state,
    )
    try:
        srv.server.store.insert_anomalies(flagged([("dev-1", "temperature", now_ms(), 0.6)]))
        assert len(down.wait(3)) == 3 and len(refuses.wait(1)) == 1
        assert settle(srv, "down", "dead", 1) == 1 and settle(srv, "refuses", "dead", 1) == 1
        with sqlite3.connect(state) as db:  # read the outbox file as it is on disk
            dead = db.execute(
                "SELECT hook, event, attempts, error FROM dead_letters ORDER BY hook"
            ).fetchall()
            pending = db.execute("SELECT count() FROM pending").fetchone()[0]
        assert dead == [("down", "opened", 3, "HTTP 500"), ("refuses", "opened", 1, "HTTP 400")]
        assert pending == 0
        assert len(refuses.requests) == 1  # a 400 is not retried
    finally:
        down.stop()
        refuses.stop()


def test_an_event_pending_at_shutdown_is_delivered_after_a_restart(node_with, tmp_path):
    gone = Receiver()
    gone.stop()  # nothing listens there: every try is refused
    database, state = "t_" + uuid.uuid4().hex[:12], str(tmp_path / "restart.sqlite")
    first = node_with(
        hooks_file(tmp_path, {"name": "ops", "url": gone.url, "backoff_s": 0.05}),
        database=database,
        state=state,
    )
    first.server.store.insert_anomalies(flagged([("dev-9", "temperature", now_ms(), 0.6)]))
    settle(first, "ops", "failed", 2, timeout=30)
    first.stop()
    back = Receiver()
    try:
        second = node_with(
            hooks_file(tmp_path, {"name": "ops", "url": back.url}), database=database, state=state
        )
        [request] = back.wait(1)
        body = verified(request)
        assert (body["event"], body["episode"]["device_id"]) == ("opened", "dev-9")
        second.server.store.insert_anomalies(flagged([("dev-9", "humidity", now_ms(), 0.6)]))
        later = back.wait(2)  # the saved cursor: the new episode comes, the old one does not come again
        assert events(later) == [("opened", "dev-9"), ("opened", "dev-9")]
        assert json.loads(later[1]["body"])["episode"]["metric"] == "humidity"
    finally:
        back.stop()


def test_an_episode_merged_away_by_a_late_reading_is_closed(node_with, tmp_path):
    hook = Receiver()
    srv = node_with(hooks_file(tmp_path, {"name": "all", "url": hook.url}), quiet_ms=8_000)
    try:
        store, t = srv.server.store, now_ms()
        store.insert_anomalies(flagged([("dev-m", "temperature", t - 10_000, 0.6)]))  # A: closed 2 s ago
        store.insert_anomalies(flagged([("dev-m", "temperature", t, 0.6)]))  # B: open
        first = hook.wait(2)
        assert events(first) == [("closed", "dev-m"), ("opened", "dev-m")]
        b_id = json.loads(first[1]["body"])["episode"]["id"]
        # A reading 5 s before B, 5 s after A: both gaps within the quiet period, so A absorbs B.
        store.insert_anomalies(flagged([("dev-m", "temperature", t - 5_000, 0.6)]))
        later = [verified(r) for r in hook.wait(4)[2:]]
        by_event = {b["event"]: b["episode"] for b in later}
        assert set(by_event) == {"opened", "closed"}
        assert by_event["closed"]["id"] == b_id and by_event["closed"]["state"] == "merged"
        assert by_event["opened"]["readings"] == 3 and by_event["opened"]["state"] == "open"
    finally:
        hook.stop()
