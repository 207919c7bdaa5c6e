"""WatchAnomalies over real gRPC: opened, updated and closed episodes in order, filters, and resuming from
any event's cursor without a gap or a repeat. The quiet period is 1.5 s so that episodes close quickly;
flagged
readings are stamped AHEAD ms in the future so that an episode stays open long enough for a watcher to see it
open on a busy machine (open until its newest reading time + the quiet period).

The node runs the processor on embedded ClickHouse, so streams wait for its episode writes; the fallback poll
is set to 10 minutes here, so every event below comes from a wakeup (a write, or the next closure)."""

import threading
import time
import uuid

import grpc
import pyarrow as pa
import pytest
from conftest import ServerThread
from waiting import poll

from iotstream.clickhouse.store import StoreConfig
from iotstream.node import Config
from iotstream.node.assembly import QUERY
from iotstream.query.service import QueryLimits
from iotstream.v1 import query_pb2 as qpb

Q = 1_500
AHEAD = 5_000  # room for an insert and a first look on a starved machine (1.5 s failed 2 in 5 there)
E = qpb.AnomalyEvent


def now_ms():
    return time.time_ns() // 1_000_000


def soon():
    return now_ms() + AHEAD


def flagged(rows) -> pa.Table:
    """rows: (device_id, metric, time_ms, score)"""
    return pa.table(
        {
            "device_id": [r[0] for r in rows],
            "metric": [r[1] for r in rows],
            "time": pa.array([r[2] for r in rows], pa.timestamp("ms", tz="UTC")),
            "value": [1.0] * len(rows),
            "kind": ["zscore"] * len(rows),
            "score": [float(r[3]) for r in rows],
            "zscore": [9.0] * len(rows),
        }
    )


def watch_node(chdb_dir, watch_poll_s: float, **config) -> ServerThread:
    return ServerThread(
        Config(
            port=0,
            data_dir=chdb_dir,
            database="t_" + uuid.uuid4().hex[:12],
            store=StoreConfig(episode_quiet_ms=Q),
            query_limits=QueryLimits(watch_poll_s=watch_poll_s),
            **config,
        )
    )


@pytest.fixture
def quick(chdb_dir):
    srv = watch_node(chdb_dir, watch_poll_s=600)
    yield srv
    srv.stop()


class Watch:
    """A WatchAnomalies call; next() returns the next event (the call's deadline bounds every wait)."""

    def __init__(self, srv, timeout=30, **request):
        self.call = srv.query.WatchAnomalies(qpb.WatchAnomaliesRequest(**request), timeout=timeout)
        first = next(self.call)
        assert first.type == E.WATCHING and not first.HasField("anomaly")
        self.cursor = first.cursor

    def next(self):
        event = next(self.call)
        self.cursor = event.cursor
        return event

    def close(self):
        self.call.cancel()


def summary(event):
    a = event.anomaly
    return E.Type.Name(event.type), a.device_id, a.readings, a.state


def test_lifecycle_and_resume(quick):
    store = quick.server.store
    watch = Watch(quick)
    t = soon()
    store.insert_anomalies(flagged([("dev-1", "temp", t, 0.55)]))
    opened = watch.next()
    assert summary(opened) == ("OPENED", "dev-1", 1, qpb.ANOMALY_OPEN)
    store.insert_anomalies(flagged([("dev-1", "temp", t + 500, 0.65)]))
    updated = watch.next()
    assert summary(updated) == ("UPDATED", "dev-1", 2, qpb.ANOMALY_OPEN)
    assert updated.anomaly.id == opened.anomaly.id and updated.anomaly.severity == qpb.SEVERITY_MEDIUM
    closed = watch.next()  # comes by itself once the quiet period has passed
    assert summary(closed) == ("CLOSED", "dev-1", 2, qpb.ANOMALY_CLOSED)
    assert now_ms() >= closed.anomaly.closes_ms == t + 500 + Q
    watch.close()

    # Resume from the first event: what changed since comes as it is now (the update and the closing in one
    # event), and nothing before it.
    again = Watch(quick, cursor=opened.cursor)
    assert summary(again.next()) == summary(closed)
    store.insert_anomalies(flagged([("dev-2", "temp", soon(), 0.9)]))
    assert summary(again.next()) == ("OPENED", "dev-2", 1, qpb.ANOMALY_OPEN)
    again.close()
    # Resume from the last event: the next thing is something new.
    last = Watch(quick, cursor=closed.cursor)
    assert summary(last.next())[:2] == ("OPENED", "dev-2")  # missed while disconnected, still open
    store.insert_anomalies(flagged([("dev-3", "temp", soon(), 0.9)]))
    events = [summary(last.next()) for _ in range(3)]
    assert sorted(events) == [
        ("CLOSED", "dev-2", 1, qpb.ANOMALY_CLOSED),
        ("CLOSED", "dev-3", 1, qpb.ANOMALY_CLOSED),
        ("OPENED", "dev-3", 1, qpb.ANOMALY_OPEN),
    ]
    assert events.index(("OPENED", "dev-3", 1, qpb.ANOMALY_OPEN)) < events.index(
        ("CLOSED", "dev-3", 1, qpb.ANOMALY_CLOSED)
    )
    last.close()


def test_filter_and_old_episodes(quick):
    store = quick.server.store
    watch = Watch(quick, device_id="dev-b")
    t = soon()
    store.insert_anomalies(
        flagged([("dev-a", "temp", t, 0.9), ("dev-b", "temp", t, 0.5), ("dev-b", "hum", t - 3_600_000, 0.8)])
    )  # a late, long-closed episode
    first, second = watch.next(), watch.next()  # one insert: by key within it
    assert summary(first) == ("CLOSED", "dev-b", 1, qpb.ANOMALY_CLOSED) and first.anomaly.metric == "hum"
    assert summary(second) == ("OPENED", "dev-b", 1, qpb.ANOMALY_OPEN) and second.anomaly.metric == "temp"
    store.insert_anomalies(flagged([("dev-a", "temp", t + 100, 0.9), ("dev-b", "temp", t + 100, 0.95)]))
    third = watch.next()
    assert summary(third) == ("UPDATED", "dev-b", 2, qpb.ANOMALY_OPEN)
    assert third.anomaly.severity == qpb.SEVERITY_HIGH and third.anomaly.id == second.anomaly.id
    assert summary(watch.next()) == ("CLOSED", "dev-b", 2, qpb.ANOMALY_CLOSED)  # dev-a never comes
    watch.close()


def test_bad_cursor(quick):
    with pytest.raises(grpc.RpcError) as err:
        next(quick.query.WatchAnomalies(qpb.WatchAnomaliesRequest(cursor="nope"), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cursor" in err.value.details()


def test_cli_lists_acknowledges_and_watches(quick):
    import json
    import subprocess
    import sys

    def cli(*args):
        out = subprocess.run(
            [sys.executable, "-m", "iotstream.cli", "query", "--target", quick.target, "--json", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iotstream.cli",
            "query",
            "--target",
            quick.target,
            "watch",
            "--device",
            "cli-dev",
            "--count",
            "2",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert json.loads(watcher.stdout.readline())["type"] == "WATCHING"
        # opened just now (so that it is in "anomalies" up to now), open for 6.5 s (readings 1 s apart, within
        # the quiet period): the CLI subprocess below may take seconds to start on a loaded machine
        t = now_ms()
        quick.server.store.insert_anomalies(
            flagged(
                [("cli-dev", "temp", t - 100, 0.75)]
                + [("cli-dev", "temp", t + i * 1_000, 0.5) for i in range(1, 6)]
            )
        )
        [listed] = cli("anomalies", "--device", "cli-dev", "--severity", "high", "--state", "open")
        assert (
            listed["anomalies"][0]["readings"] == 6 and listed["anomalies"][0]["severity"] == "SEVERITY_HIGH"
        )
        [acked] = cli("ack", listed["anomalies"][0]["id"], "--by", "cli-user")
        assert acked["acknowledged_by"] == "cli-user"
        events = [json.loads(watcher.stdout.readline()) for _ in range(2)]
        assert [e["type"] for e in events] == ["OPENED", "CLOSED"]
        assert {e["anomaly"]["id"] for e in events} == {acked["id"]}
        assert watcher.wait(30) == 0  # --count 2 ends the stream
    finally:
        watcher.kill()
        watcher.stdout.close()


class CountingBackend:
    """The store's backend, counting the queries that read episodes (other parts of the node query too)."""

    def __init__(self, backend):
        self.backend, self.episode_reads = backend, 0

    def query(self, sql, params=None):
        if "anomaly_episodes" in sql:
            self.episode_reads += 1
        return self.backend.query(sql, params)

    def __getattr__(self, name):
        return getattr(self.backend, name)


def test_idle_watchers_cost_no_queries_and_wake_on_a_write(quick, chdb_dir):
    store = quick.server.store
    counting = store.backend = CountingBackend(store.backend)
    signal = quick.server.episodes_written
    watches = [Watch(quick, timeout=60) for _ in range(5)]
    poll(lambda: len(signal._waiters) == len(watches))  # every stream has looked and now waits
    before = counting.episode_reads
    # The positive signal: a query node of its own on the same database polls at the default fallback
    # (1 s); once its stream has looked twice, streams that polled (every 0.2 s before, or 1 s) would have.
    poller = ServerThread(
        Config(
            port=0,
            data_dir=chdb_dir,
            database=quick.config.database,
            roles=frozenset({QUERY}),  # default watch_poll_s
        )
    )
    try:
        polled = poller.server.store.backend = CountingBackend(poller.server.store.backend)
        control = Watch(poller, timeout=60)
        first = polled.episode_reads
        poll(lambda: polled.episode_reads >= first + 2)
        control.close()
    finally:
        poller.stop()
    assert counting.episode_reads == before  # idle all along
    got: list = []

    def read(watch):
        got.append(summary(watch.next()))

    readers = [threading.Thread(target=read, args=(w,)) for w in watches]
    for reader in readers:
        reader.start()
    store.insert_anomalies(flagged([("dev-w", "temp", soon(), 0.9)]))
    for reader in readers:
        reader.join(30)  # far below the 600 s fallback: the write woke them
    assert got == [("OPENED", "dev-w", 1, qpb.ANOMALY_OPEN)] * len(watches)
    for watch in watches:
        watch.close()


def test_query_node_polls_for_episodes_written_elsewhere(chdb_dir):
    """A query-only node has no processor of its own: its streams look every watch_poll_s."""
    srv = watch_node(chdb_dir, watch_poll_s=0.1, roles=frozenset({QUERY}))
    try:
        assert srv.server.episodes_written is None
        watch = Watch(srv)
        srv.server.store.insert_anomalies(flagged([("dev-q", "temp", soon(), 0.9)]))  # as a processor would
        assert summary(watch.next()) == ("OPENED", "dev-q", 1, qpb.ANOMALY_OPEN)
        watch.close()
    finally:
        srv.stop()
