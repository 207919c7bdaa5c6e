"""Limits over real gRPC: message size, batch size, streams per device, and the per-device rate limit that
slows a stream down first and refuses it (with a retry delay) only when the excess is sustained."""

from __future__ import annotations

import queue
import threading
import time

import grpc
import pytest
from conftest import ServerThread
from security_fixtures import batch, code_of, database
from waiting import poll

from iotstream.ingest import Limits
from iotstream.node import Config
from iotstream.v1 import ingest_pb2 as pb

RATE = 4000.0  # readings/s per device
REJECT_AFTER_S = 1.0


@pytest.fixture(scope="module")
def limited(chdb_dir):
    limits = Limits(
        max_readings=500,
        max_message_bytes=20_000,
        max_streams_per_device=2,
        rate_readings_per_s=RATE,
        burst_readings=int(RATE),
        max_delay_s=5.0,
        reject_after_s=REJECT_AFTER_S,
    )
    srv = ServerThread(Config(port=0, data_dir=chdb_dir, database=database(), limits=limits))
    yield srv
    srv.stop()


def stored(srv, device) -> int:
    return srv.sql("SELECT count() AS n FROM $db.readings WHERE device_id = {d:String}", {"d": device})[0][
        "n"
    ]


def rejected(srv) -> dict:
    return dict(srv.server.live_stats()["rejected"])  # what GetStats' `rejected` map is filled from


def test_message_over_the_size_limit_is_refused_and_counted(limited):
    before = rejected(limited).get("MESSAGE_TOO_LARGE_CALLS", 0)
    big = batch("dev-big", 2000)  # over the 20 kB limit, under gRPC's own cap of twice that
    assert 20_000 < big.ByteSize() < 40_000
    assert code_of(limited.ingest.Send, big, timeout=10) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (
        code_of(limited.ingest.Stream, iter([batch("dev-big", 3), big]), timeout=10)
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert rejected(limited)["MESSAGE_TOO_LARGE_CALLS"] == before + 2
    huge = batch("dev-big", 5000)  # over twice the limit: gRPC itself refuses it, same status
    assert code_of(limited.ingest.Send, huge, timeout=10) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stored(limited, "dev-big") == 3  # the small batch before the big one on the stream


def test_batch_over_max_readings_keeps_the_first(limited):
    ack = limited.ingest.Send(batch("dev-long", 600), timeout=10)
    assert ack.accepted == 500 and len(ack.rejected) == 100
    assert {r.reason for r in ack.rejected} == {pb.BATCH_TOO_LARGE}


def test_streams_per_device_are_capped(limited):
    """Two streams of dev-cap stay open (each has sent a batch and got its ack); a third is refused."""
    feeds, acks, calls = [], [], []
    for _ in range(2):
        feed: queue.Queue = queue.Queue()
        feed.put(batch("dev-cap"))
        call = limited.ingest.Stream(iter(feed.get, None), timeout=30)
        acks.append(next(call))  # the stream is open and counted once its first batch is acked
        feeds.append(feed)
        calls.append(call)
    before = rejected(limited).get("TOO_MANY_STREAMS_CALLS", 0)
    assert (
        code_of(limited.ingest.Stream, iter([batch("dev-cap", seq=2)]), timeout=10)
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert rejected(limited)["TOO_MANY_STREAMS_CALLS"] == before + 1
    assert code_of(limited.ingest.Stream, iter([batch("dev-other")]), timeout=10) == grpc.StatusCode.OK
    feeds[0].put(None)  # one closes: a new one is let in
    list(calls[0])
    poll(
        lambda: (
            code_of(limited.ingest.Stream, iter([batch("dev-cap", seq=3)]), timeout=10) == grpc.StatusCode.OK
        ),
        what="a stream slot freed",
    )
    feeds[1].put(None)
    list(calls[1])


def test_backlog_burst_is_slowed_down_not_refused(limited):
    """A backlog worth 1.5 s of rate: the first second's worth passes at once, the rest is paced (the stream
    is not read meanwhile), nothing is refused, everything is stored."""
    before = rejected(limited)
    batches = [batch("dev-backlog", 500, seq=s) for s in range(1, 13)]  # 6000 readings
    started = time.monotonic()
    acks = [r.ack for r in limited.ingest.Stream(iter(batches), timeout=30)]
    elapsed = time.monotonic() - started
    assert [a.seq for a in acks] == list(range(1, 13)) and sum(a.accepted for a in acks) == 6000
    assert elapsed >= (6000 - RATE) / RATE * 0.9  # paid the 2000 readings of debt at RATE
    after = rejected(limited)
    assert after.get("THROTTLED_BATCHES", 0) > before.get("THROTTLED_BATCHES", 0)
    assert after.get("RATE_LIMITED", 0) == before.get("RATE_LIMITED", 0)
    assert stored(limited, "dev-backlog") == 6000


def send_until_refused(srv, device, batches):
    """Stream `batches`; returns (acked seqs, refusal RpcError or None)."""
    acked = []
    try:
        for r in srv.ingest.Stream(iter(batches), timeout=60):
            acked.append(r.ack.seq)
    except grpc.RpcError as exc:
        return acked, exc
    return acked, None


def test_sustained_excess_is_refused_with_retry_delay_and_nothing_acked_is_lost(limited):
    """A device that keeps sending over its rate is paced for REJECT_AFTER_S, then refused with
    RESOURCE_EXHAUSTED and grpc-retry-pushback-ms. A client that waits that long and resends from its first
    unacked batch gets everything stored exactly once."""
    before = rejected(limited)
    all_batches = [
        batch("dev-flood", 500, seq=s, value=s * 1000.0) for s in range(1, 31)
    ]  # 15,000 distinct values
    pending, refusals, started = list(all_batches), [], time.monotonic()
    while pending:
        acked, err = send_until_refused(limited, "dev-flood", pending)
        pending = [b for b in pending if b.seq not in set(acked)]
        assert acked == [
            b.seq for b in all_batches if b.seq in set(acked)
        ]  # in order, a prefix of what was sent
        if err is None:
            assert not pending
            break
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        pushback = dict(err.trailing_metadata() or ())["grpc-retry-pushback-ms"]
        assert int(pushback) > 0
        refusals.append(int(pushback))
        time.sleep(int(pushback) / 1000)  # what the device is told to do
        assert time.monotonic() - started < 40
    assert refusals, "a sustained flood must be refused at least once"
    assert stored(limited, "dev-flood") == 15_000
    distinct = limited.sql("SELECT uniqExact(value) AS n FROM $db.readings WHERE device_id = 'dev-flood'")[0][
        "n"
    ]
    assert distinct == 15_000
    after = rejected(limited)
    assert after["RATE_LIMITED"] - before.get("RATE_LIMITED", 0) == 500 * len(refusals)
    assert after["THROTTLED_BATCHES"] > before.get("THROTTLED_BATCHES", 0)


def test_other_devices_are_not_slowed_by_a_flooding_one(limited):
    stop = threading.Event()

    def flood():
        seq = 1000
        while not stop.is_set():
            seq += 1
            code_of(limited.ingest.Send, batch("dev-noisy", 500, seq=seq), timeout=10)

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        poll(lambda: rejected(limited).get("THROTTLED_BATCHES", 0) > 0, what="flood throttled")
        started = time.monotonic()
        ack = limited.ingest.Send(batch("dev-quiet", 100), timeout=10)
        assert ack.accepted == 100 and time.monotonic() - started < 1.0
    finally:
        stop.set()
        t.join(15)


def test_refusals_are_in_get_stats(limited):
    from iotstream.v1 import query_pb2 as qpb

    assert (
        code_of(limited.ingest.Send, batch("dev-stats", 2000), timeout=10)
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    stats = dict(limited.query.GetStats(qpb.GetStatsRequest(), timeout=30).rejected)
    assert stats == rejected(limited)  # no traffic in between: the RPC shows exactly the counters
    assert stats["MESSAGE_TOO_LARGE_CALLS"] >= 1
