"""The device client against a real server over real sockets: a network cut mid-stream, a server restart, a
client restart with its disk buffer, and server pushback. In every case each recorded reading is stored
exactly once, checked through the Query RPCs against the readings the test recorded."""

from __future__ import annotations

import collections
import math
import threading
import time

import pytest
from conftest import ServerThread
from security_fixtures import database
from tcp_proxy import TcpProxy
from waiting import poll

from iotstream.client.device import BlockingDeviceClient
from iotstream.ingest import Limits
from iotstream.node import Config
from iotstream.v1 import query_pb2 as qpb

FAST = {"backoff_s": 0.05, "backoff_max_s": 0.5}  # reconnect quickly: the tests cut and restart on purpose


def readings(n: int, start: int = 0) -> list[tuple[str, float, int]]:
    """Distinct readings (so a duplicate or a loss shows), a second apart, ending a little before now."""
    now = time.time_ns() // 1_000_000 - 60_000
    return [(("temp", "hum")[i % 2], float(i), now - 10 * n + 10 * i) for i in range(start, start + n)]


def history(srv: ServerThread, device: str) -> collections.Counter:
    """Every stored reading of `device` as (metric, value, time_ms), counted, read through GetHistory."""
    out: collections.Counter = collections.Counter()
    token = ""
    while True:
        page = srv.query.GetHistory(
            qpb.GetHistoryRequest(device_id=device, page_size=5000, page_token=token), timeout=30
        )
        for s in page.series:
            for t, v in zip(s.time_ms, s.values, strict=True):
                out[(s.metric, v, t)] += 1
        token = page.next_page_token
        if not token:
            return out


def record_all(client: BlockingDeviceClient, rows) -> None:
    for metric, value, t in rows:
        client.record(metric, value, t)


@pytest.fixture
def proxy(server):
    p = TcpProxy(server.port)
    yield p
    p.close()


def test_network_cut_mid_stream_resends_and_stores_once(server, proxy):
    rows = readings(2000)
    cut = set()

    def on_ack(_ack, _seconds):  # cut the first two connections at their first ack, batches still in flight
        if proxy.connections <= 2 and proxy.connections not in cut:
            cut.add(proxy.connections)
            proxy.cut(lose_replies=True)

    proxy.refusing = True  # everything is buffered first, so the window is full when the link comes up
    with BlockingDeviceClient(proxy.target, "cli-cut", batch_readings=100, on_ack=on_ack, **FAST) as client:
        record_all(client, rows)
        proxy.refusing = False
        client.flush(timeout=60)
        stats = client.stats
    assert cut == {1, 2} and proxy.connections >= 3
    assert stats.reconnects >= 3 and stats.resent > 0  # refused, then cut twice; in-flight batches went again
    assert history(server, "cli-cut") == collections.Counter(rows)
    assert server.query.GetDevice(qpb.GetDeviceRequest(device_id="cli-cut"), timeout=10).readings == len(rows)


def test_server_restart_loses_nothing(chdb_dir):
    config = Config(port=0, data_dir=chdb_dir, database=database())
    srv = ServerThread(config)
    proxy = TcpProxy(srv.port)
    first, second = readings(500), readings(500, start=500)
    client = BlockingDeviceClient(proxy.target, "cli-restart", batch_readings=50, **FAST)
    try:
        record_all(client, first)
        client.flush(timeout=30)
        srv.stop()  # drains: open streams get their acks, then UNAVAILABLE
        record_all(client, second)  # buffered while the server is down
        srv = ServerThread(config)
        proxy.upstream = srv.port
        client.flush(timeout=60)
        assert client.stats.reconnects >= 1
        assert history(srv, "cli-restart") == collections.Counter(first + second)
    finally:
        client.close()
        proxy.close()
        srv.stop()


def test_client_restart_resends_its_disk_buffer_and_the_server_stores_once(server, proxy, tmp_path):
    rows = readings(1000)
    buffer = str(tmp_path / "device-buffer.sqlite")

    def lose_acks(_ack, _seconds):
        proxy.muted = True  # after the first ack, the server's replies never arrive: it stores, we never know

    first = BlockingDeviceClient(
        proxy.target, "cli-disk", batch_readings=100, buffer_path=buffer, on_ack=lose_acks, **FAST
    )
    record_all(first, rows[:100])
    first.flush(timeout=30)
    record_all(first, rows[100:])
    stored = "SELECT count() AS n FROM $db.readings WHERE device_id = 'cli-disk'"
    poll(lambda: server.sql(stored)[0]["n"] == 1000, what="all readings stored")
    assert first.close(timeout=0.2) == 9  # sent and stored, but unacked: kept on disk
    proxy.muted = False

    second = BlockingDeviceClient(proxy.target, "cli-disk", buffer_path=buffer, **FAST)
    assert len(second.client.buffer.batches) == 9
    second.flush(timeout=30)
    assert second.stats.acked == 900 and second.close() == 0
    assert history(server, "cli-disk") == collections.Counter(rows)


@pytest.fixture
def throttled(chdb_dir):
    limits = Limits(rate_readings_per_s=2000, burst_readings=2000, max_delay_s=5.0, reject_after_s=0.5)
    srv = ServerThread(Config(port=0, data_dir=chdb_dir, database=database(), limits=limits))
    yield srv
    srv.stop()


def test_pushback_slows_the_device_and_nothing_is_dropped(throttled):
    rows = readings(8000)
    started = time.monotonic()
    with BlockingDeviceClient(throttled.target, "cli-push", batch_readings=500, **FAST) as client:
        record_all(client, rows)
        client.flush(timeout=60)
        stats = client.stats
    elapsed = time.monotonic() - started
    refused = throttled.server.live_stats()["rejected"].get("RATE_LIMITED", 0)
    assert refused > 0 and stats.pushbacks >= 1  # the server refused with a delay, and the client waited it
    assert elapsed >= (8000 - 2000) / 2000 * 0.9  # paced down to the device's rate
    assert stats.acked == 8000 and history(throttled, "cli-push") == collections.Counter(rows)


def test_rejected_readings_reach_the_caller(server):
    got = []
    done = threading.Event()

    def on_rejected(rejected):
        got.extend(rejected)
        done.set()

    now = time.time_ns() // 1_000_000
    with BlockingDeviceClient(server.target, "cli-bad", batch_readings=10, on_rejected=on_rejected) as client:
        client.record("temp", 1.0, now)
        client.record("temp", math.nan, now + 1)
        client.record("bad name", 2.0, now + 2)
        client.flush(timeout=10)
        assert done.wait(10)
        assert client.stats.acked == 1 and client.stats.rejected == 2
    assert [(r.metric, r.time_ms, r.reason) for r in got] == [
        ("temp", now + 1, "NON_FINITE_VALUE"),
        ("bad name", now + 2, "BAD_METRIC_NAME"),
    ]
    assert history(server, "cli-bad") == collections.Counter({("temp", 1.0, now): 1})
