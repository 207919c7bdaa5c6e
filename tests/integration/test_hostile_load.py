"""Hostile-but-valid load over real gRPC against an embedded server: a compressed message whose name table
would once freeze the event loop, look-alike ids, the per-device cap on Send calls, revocation of open
calls, and the query guardrails (default deadline, bucket / row / result caps, page tokens, watch cap)."""

from __future__ import annotations

import base64
import json
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pyarrow as pa
import pytest
from conftest import ServerThread
from grpc_health.v1 import health_pb2, health_pb2_grpc
from security_fixtures import batch, bearer, code_of, database, now_ms
from waiting import poll

from iotstream.auth import ClickHouseTokens
from iotstream.ingest import Limits
from iotstream.node import Config
from iotstream.query.service import QueryLimits
from iotstream.v1 import ingest_pb2 as pb
from iotstream.v1 import query_pb2 as qpb

SERVING = health_pb2.HealthCheckResponse.SERVING
MIB = 1024 * 1024
BIG = [("grpc.max_receive_message_length", 64 * MIB), ("grpc.max_send_message_length", 64 * MIB)]


class HealthWatch:
    """Checks health with a 1 s deadline, back to back, in a thread, until stopped; keeps every outcome."""

    def __init__(self, target: str):
        self.channel = grpc.insecure_channel(target)
        self.stub = health_pb2_grpc.HealthStub(self.channel)
        self.outcomes: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            try:
                status = self.stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                self.outcomes.append("SERVING" if status == SERVING else str(status))
            except grpc.RpcError as exc:
                self.outcomes.append(exc.code().name)

    def __enter__(self):
        self.thread.start()
        poll(lambda: self.outcomes, what="first health answer")
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)
        self.channel.close()


def name_flood(names: list[str], readings: int, device: str = "dev-flood") -> pb.ReadingBatch:
    return pb.ReadingBatch(
        device_id=device,
        seq=1,
        base_time_ms=now_ms() - 1000,
        time_offset_ms=[0] * readings,
        metric_names=names,
        metric_index=[0] * readings,
        values=[1.0] * readings,
    )


def test_gzip_name_table_flood_is_refused_without_stalling_anyone(server):
    """The attack of issue 12: 3.5 million (invalid) names, 7 MB, gzip-compressed to a few kB on the wire,
    every reading using name 0. Health answers within 1 s throughout, another device is acked meanwhile,
    and the attack gets its answer within its deadline, storing nothing."""
    attack = name_flood([""] * 3_500_000, 10).SerializeToString()  # before the watch: one GIL here
    assert 6_000_000 < len(attack) < Limits().max_message_bytes
    send = server.channel.unary_unary("/iotstream.v1.Ingest/Send", response_deserializer=pb.Ack.FromString)
    with HealthWatch(server.target) as health:
        ack = send(attack, timeout=20, compression=grpc.Compression.Gzip)
        assert server.ingest.Send(batch("dev-bystander", 3), timeout=5).accepted == 3
    assert ack.accepted == 0 and {r.reason for r in ack.rejected} == {pb.TOO_MANY_METRIC_NAMES}
    assert "3500000 entries for 10 readings" in ack.rejected[0].detail
    assert health.outcomes and set(health.outcomes) == {"SERVING"}, health.outcomes
    assert server.sql("SELECT count() AS n FROM $db.readings WHERE device_id = 'dev-flood'")[0]["n"] == 0


def test_many_distinct_bad_names_are_checked_off_the_loop(server):
    """As many readings as names (the rule above allows it), 50,000 distinct invalid names: the batch is
    validated in a worker thread while health keeps answering; every reading gets its reason."""
    n = 50_000
    attack = name_flood([f"!{i}" for i in range(n)], n)
    attack.metric_index[:] = range(n)
    attack = attack.SerializeToString()
    with grpc.insecure_channel(server.target, options=BIG) as channel:
        send = channel.unary_unary("/iotstream.v1.Ingest/Send", response_deserializer=pb.Ack.FromString)
        with HealthWatch(server.target) as health:
            ack = send(attack, timeout=60, compression=grpc.Compression.Gzip)
    assert ack.accepted == 0 and len(ack.rejected) == n
    reasons = [r.reason for r in ack.rejected]
    limit = Limits().max_readings
    assert set(reasons[:limit]) == {pb.BAD_METRIC_NAME} and set(reasons[limit:]) == {pb.BATCH_TOO_LARGE}
    assert "'!7'" in ack.rejected[7].detail
    assert set(health.outcomes) == {"SERVING"}, health.outcomes


def test_look_alike_ids_are_rejected(server):
    ack = server.ingest.Send(batch("sim-00001\n", 2), timeout=10)
    assert ack.accepted == 0 and {r.reason for r in ack.rejected} == {pb.BAD_DEVICE_ID}
    named = batch("sim-00001", 2)
    named.metric_names[:] = ["temp\n"]
    assert {r.reason for r in server.ingest.Send(named, timeout=10).rejected} == {pb.BAD_METRIC_NAME}


def test_disagreeing_columns_are_rejected_not_crashed_on(server):
    b = batch("dev-cols", 3)
    del b.metric_index[1:]
    ack = server.ingest.Send(b, timeout=10)
    assert ack.accepted == 0 and {r.reason for r in ack.rejected} == {pb.MALFORMED_BATCH}


def test_keys_over_the_processor_limit_are_stored_unscored_and_counted(chdb_dir):
    server = ServerThread(
        Config(port=0, data_dir=chdb_dir, database=database(), max_keys=2)
    )  # --max-keys-...
    try:
        keys_over_the_limit(server)
    finally:
        server.stop()


def keys_over_the_limit(server: ServerThread) -> None:
    assert server.server.processor_loop.processor.max_keys == 2
    b = batch("dev-keys", 3)
    b.metric_names[:] = ["a", "b", "c"]
    b.metric_index[:] = [0, 1, 2]
    assert server.ingest.Send(b, timeout=10).accepted == 3  # acked: durable, so stored whatever the cap
    assert server.sql("SELECT count() AS n FROM $db.readings WHERE device_id = 'dev-keys'")[0]["n"] == 3
    stats = server.query.GetStats(qpb.GetStatsRequest(), timeout=30)
    assert stats.rejected["KEYS_OVER_LIMIT"] == 1


FLOOD_DEVICES, FLOOD_METRICS = 1_000, 1_000  # 10^6 distinct (device, metric) keys, one reading each
FLOOD_MAX_KEYS = 20_000


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_million_distinct_keys_keep_state_bounded_and_health_answering(chdb_dir):
    """A flood of 10^6 new keys through a real serve (1,000 devices x 1,000 metrics, within the ingest
    limits): every reading is stored, only `max_keys` keys get rolling state, the rest are counted as
    KEYS_OVER_LIMIT, memory stays far below what 10^6 keys of state would take (about 2.8 kB each,
    bench/keys.py), and health answers within 1 s throughout."""
    srv = ServerThread(
        Config(
            port=0,
            data_dir=chdb_dir,
            database=database(),
            max_keys=FLOOD_MAX_KEYS,
            snapshot_every_s=3600,  # the snapshot's cost is bench/keys.py's business
        )
    )
    names = [f"m{j:04d}" for j in range(FLOOD_METRICS)]

    def send(d: int) -> int:
        b = pb.ReadingBatch(
            device_id=f"flood-{d:04d}",
            seq=1,
            base_time_ms=now_ms() - 60_000,
            time_offset_ms=list(range(FLOOD_METRICS)),
            metric_names=names,
            metric_index=list(range(FLOOD_METRICS)),
            values=[1.0] * FLOOD_METRICS,
        )
        return srv.ingest.Send(b, timeout=60).accepted

    before = rss_bytes()
    try:
        with HealthWatch(srv.target) as health, ThreadPoolExecutor(4) as pool:
            assert sum(pool.map(send, range(FLOOD_DEVICES))) == FLOOD_DEVICES * FLOOD_METRICS
            srv.settle(120)
        grown = rss_bytes() - before
        assert len(health.outcomes) > 10 and set(health.outcomes) == {"SERVING"}
        n = FLOOD_DEVICES * FLOOD_METRICS
        assert srv.sql("SELECT count() AS n FROM $db.readings")[0]["n"] == n
        state = srv.server.processor_loop.processor.state(0)
        assert len(state.slots) == FLOOD_MAX_KEYS and state.stats.nslots <= 2 * FLOOD_MAX_KEYS
        stats = srv.query.GetStats(qpb.GetStatsRequest(), timeout=30)
        assert stats.rejected["KEYS_OVER_LIMIT"] == n - FLOOD_MAX_KEYS  # readings stored unscored
        # 10^6 keys of kernel state alone would take about 2 GB; the server's own growth (the ingest's
        # per-device metric names, ClickHouse's buffers) was 0.7 GB in one run
        assert grown < 1_500 * MIB, f"RSS grew {grown / MIB:.0f} MiB"
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def paced(chdb_dir):
    limits = Limits(
        rate_readings_per_s=100.0,
        burst_readings=100,
        max_delay_s=5.0,
        max_sends_per_device=2,
        max_metrics_per_device=3,
    )
    srv = ServerThread(Config(port=0, data_dir=chdb_dir, database=database(), limits=limits))
    yield srv
    srv.stop()


def test_concurrent_sends_of_one_device_are_capped(paced):
    """Two Sends of dev-s are held back by its rate (in progress); a third is refused at once, counted;
    the two held ones are acked and stored."""
    stats = paced.server.live_stats
    held = [paced.ingest.Send.future(batch("dev-s", 150, seq=s), timeout=30) for s in (1, 2)]
    poll(lambda: stats()["rejected"].get("THROTTLED_BATCHES", 0) >= 2, what="both Sends held back")
    third = code_of(paced.ingest.Send, batch("dev-s", 1, seq=3), timeout=10)
    assert third == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stats()["rejected"]["TOO_MANY_SENDS_CALLS"] == 1
    assert [f.result().accepted for f in held] == [150, 150]
    assert paced.ingest.Send(batch("dev-s", 1, seq=4), timeout=30).accepted == 1  # room again


def test_metrics_per_device_are_capped_with_their_reason(paced):
    b = batch("dev-m", 5)
    b.metric_names[:] = ["a", "b", "c", "d", "e"]
    b.metric_index[:] = [0, 1, 2, 3, 4]
    ack = paced.ingest.Send(b, timeout=30)
    assert ack.accepted == 3 and [(r.index, r.reason) for r in ack.rejected] == [
        (3, pb.TOO_MANY_METRICS),
        (4, pb.TOO_MANY_METRICS),
    ]
    assert paced.server.live_stats()["rejected"]["TOO_MANY_METRICS"] == 2
    stored = paced.sql(
        "SELECT groupArray(metric) AS m FROM (SELECT metric FROM $db.readings "
        "WHERE device_id = 'dev-m' ORDER BY metric)"
    )[0]["m"]
    assert stored == ["a", "b", "c"]


# ---- revocation ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(chdb_dir):
    srv = ServerThread(Config(port=0, data_dir=chdb_dir, database=database(), auth=True))
    srv.registry = ClickHouseTokens(srv.server.store.backend)  # what `iotstream devices revoke` writes to
    yield srv
    srv.stop()


def test_revoked_token_ends_an_open_stream(secured):
    """Revoked in the registry (not through this server), the open stream ends UNAUTHENTICATED within the
    promised 5 s (the call's 8 s deadline would end it DEADLINE_EXCEEDED otherwise); a batch sent after it
    is not stored, the one before is."""
    token = secured.registry.add("device", "dev-rv")
    feed: queue.Queue = queue.Queue()
    feed.put(batch("dev-rv", 2, seq=1))
    call = secured.ingest.Stream(iter(feed.get, None), timeout=8, metadata=bearer(token))
    assert next(call).ack.accepted == 2
    assert secured.registry.revoke("device", "dev-rv") == 1
    with pytest.raises(grpc.RpcError) as err:
        next(call)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in err.value.details()
    feed.put(batch("dev-rv", 3, seq=2))
    feed.put(None)
    assert secured.sql("SELECT count() AS n FROM $db.readings WHERE device_id = 'dev-rv'")[0]["n"] == 2
    assert secured.server.live_stats()["rejected"]["REVOKED_CALLS"] >= 1


def test_revoked_token_ends_a_watch(secured):
    token = secured.registry.add("reader", "dash-rv")
    call = secured.query.WatchAnomalies(qpb.WatchAnomaliesRequest(), timeout=8, metadata=bearer(token))
    assert next(call).type == qpb.AnomalyEvent.WATCHING
    secured.registry.revoke("reader", "dash-rv")
    with pytest.raises(grpc.RpcError) as err:
        next(call)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ---- query guardrails ---------------------------------------------------------------------------------

ROWS = 40_000  # one every 0.5 s: 20,000 s; ClickHouse reads whole granules of 8192 rows


@pytest.fixture(scope="module")
def guarded(chdb_dir):
    limits = QueryLimits(max_buckets=100, max_rows_read=ROWS // 2, max_watches=1)
    srv = ServerThread(Config(port=0, data_dir=chdb_dir, database=database(), query_limits=limits))
    t0 = now_ms() - 6 * 3_600_000
    srv.t0 = t0 - t0 % 60_000
    srv.server.store.insert_readings(
        pa.table(
            {
                "device_id": ["dev-q"] * ROWS,
                "metric": ["temp"] * ROWS,
                "time": pa.array([srv.t0 + i * 500 for i in range(ROWS)], pa.timestamp("ms", tz="UTC")),
                "value": [float(i) for i in range(ROWS)],
            }
        )
    )
    yield srv
    srv.stop()


def refusal(fn, request, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn(request, **kw)
    return err.value


def refused(srv) -> dict:
    return dict(srv.query.GetStats(qpb.GetStatsRequest(), timeout=30).rejected)


def test_aggregate_over_ten_years_at_one_second_is_refused_with_a_way_out(guarded):
    """The range holds all 40,000 rows: reading them passes the cap, so ClickHouse stops the query."""
    end = now_ms()
    err = refusal(
        guarded.query.Aggregate,
        qpb.AggregateRequest(
            device_ids=["dev-q"], start_ms=end - 10 * 365 * 86_400_000, end_ms=end, interval_ms=1000
        ),
        timeout=10,
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"more than {ROWS // 2} rows" in err.details() and "narrow the time range" in err.details()
    assert refused(guarded)["ROWS_READ_LIMIT_CALLS"] >= 1


def test_rows_read_and_result_rows_are_capped(guarded):
    t0 = guarded.t0
    err = refusal(guarded.query.GetHistory, qpb.GetHistoryRequest(device_id="dev-q", start_ms=t0), timeout=10)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A narrower range reads few enough rows, but 500 buckets of 1 s are over the result cap of 100.
    err = refusal(
        guarded.query.Aggregate,
        qpb.AggregateRequest(device_ids=["dev-q"], start_ms=t0, end_ms=t0 + 500_000, interval_ms=1000),
        timeout=10,
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "over the limit of 100" in err.details()
    ok = guarded.query.Aggregate(
        qpb.AggregateRequest(
            device_ids=["dev-q"], start_ms=t0, end_ms=t0 + 500_000, interval_ms=10_000, funcs=[qpb.COUNT]
        ),
        timeout=10,
    )
    assert sum(ok.series[0].count) == 1000  # 50 buckets of 20 readings: the oracle is the insert above
    stats = refused(guarded)
    assert stats["ROWS_READ_LIMIT_CALLS"] >= 1 and stats["AGGREGATE_TOO_LARGE_CALLS"] >= 1


def token(key: list) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


@pytest.mark.parametrize("skip", [10**9, -3])
def test_history_page_token_cannot_widen_the_scan(guarded, skip):
    err = refusal(
        guarded.query.GetHistory,
        qpb.GetHistoryRequest(
            device_id="dev-q",
            start_ms=guarded.t0,
            page_size=10,
            page_token=token(["temp", guarded.t0, 0.0, skip]),
        ),
        timeout=10,
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in err.details()


def test_history_pages_still_walk_the_range(guarded):
    got, page_token = [], ""
    end = guarded.t0 + 100 * 500
    while True:
        request = qpb.GetHistoryRequest(
            device_id="dev-q", start_ms=guarded.t0, end_ms=end, page_size=30, page_token=page_token
        )
        resp = guarded.query.GetHistory(request, timeout=10)
        got += [v for s in resp.series for v in s.values]
        if not resp.next_page_token:
            break
        page_token = resp.next_page_token
    assert got == [float(i) for i in range(100)]


def test_watches_are_capped(guarded):
    first = guarded.query.WatchAnomalies(qpb.WatchAnomaliesRequest(), timeout=30)
    assert next(first).type == qpb.AnomalyEvent.WATCHING
    assert (
        code_of(guarded.query.WatchAnomalies, qpb.WatchAnomaliesRequest(), timeout=10)
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    first.cancel()

    def opens():
        return code_of(lambda: next(guarded.query.WatchAnomalies(qpb.WatchAnomaliesRequest(), timeout=5)))

    poll(lambda: opens() == grpc.StatusCode.OK, what="a watch slot freed")
    assert refused(guarded)["TOO_MANY_WATCHES_CALLS"] == 1


def test_a_call_without_deadline_gets_the_default(chdb_dir):
    srv = ServerThread(
        Config(
            port=0, data_dir=chdb_dir, database=database(), query_limits=QueryLimits(default_deadline_s=1e-6)
        )
    )
    try:
        err = refusal(srv.query.GetStats, qpb.GetStatsRequest())  # no timeout: the server's default applies
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "default of 1e-06 s" in err.details()
        assert srv.query.GetStats(qpb.GetStatsRequest(), timeout=30).rejected["QUERY_DEADLINE_CALLS"] == 1
    finally:
        srv.stop()
