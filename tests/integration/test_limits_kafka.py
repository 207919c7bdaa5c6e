"""Ingest's limits reached through a real Kafka broker that hangs (SIGSTOP): acks wait for the broker, so
the per-stream read-ahead cap, the per-device bytes-in-flight cap and the producer buffer each fill up.
The device is slowed (its stream is not read, its call waits for room), nothing acked is lost (the topic
holds every acked batch once), and a full producer buffer answers UNAVAILABLE after `unavailable_after_s`."""

from __future__ import annotations

import queue
import threading
import time
import uuid

import grpc
import pytest
from confluent_kafka import Consumer
from conftest import ServerThread
from kafka_fixture import load_kafka_local
from security_fixtures import batch
from waiting import poll

from iotstream.bus.kafka import KafkaConfig
from iotstream.ingest import Limits
from iotstream.ingest.server import MAX_INFLIGHT_PER_STREAM, QUEUE_UNAVAILABLE_CALLS
from iotstream.node import Config
from iotstream.v1 import ingest_pb2 as pb


@pytest.fixture(scope="module")
def broker():
    b = load_kafka_local().start()  # our own: these tests pause it
    yield b
    b.stop()


@pytest.fixture
def ingest_node(broker):
    """Starts an ingest node on the broker (stopped after the test), its producer warmed up."""
    nodes = []

    def start(limits: Limits | None = None, **kafka) -> ServerThread:
        cfg = KafkaConfig(broker.bootstrap, namespace="l" + uuid.uuid4().hex[:8], partitions=1, **kafka)
        srv = ServerThread(Config(roles=frozenset({"ingest"}), kafka=cfg, port=0, limits=limits or Limits()))
        nodes.append(srv)
        assert srv.ingest.Send(batch("dev-warm"), timeout=30).accepted == 3  # the partition is known
        return srv

    yield start
    for srv in nodes:
        srv.stop()


def topic_batches(srv: ServerThread) -> list[tuple[str, int]]:
    """(device, seq) of every message in the node's readings topic."""
    cfg = srv.config.kafka
    c = Consumer(
        {"bootstrap.servers": cfg.bootstrap, "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest"}
    )
    c.subscribe([cfg.topic])
    found, idle = [], 0
    try:
        while idle < 3:  # three empty polls after the last message
            msg = c.poll(1.0)
            if msg is None or msg.error():
                idle += 1
                continue
            idle = 0
            b = pb.ReadingBatch.FromString(msg.value())
            found.append((b.device_id, b.seq))
    finally:
        c.close()
    return found


def stream_until(srv: ServerThread, device: str, n: int, batches: int, held) -> tuple[threading.Thread, list]:
    """Stream `batches` batches of `n` readings while the broker hangs, until `held()` says the limit is
    reached; the thread that reads the responses (into the list) ends when the broker is back."""
    feed: queue.Queue = queue.Queue()
    for seq in range(1, batches + 1):
        feed.put(batch(device, n, seq=seq))
    feed.put(None)
    srv.server.counters.accepted = 0
    call = srv.ingest.Stream(iter(feed.get, None), timeout=120)
    responses: list = []
    reader = threading.Thread(target=lambda: responses.extend(call))
    reader.start()
    poll(held, timeout=30, what="the limit reached")
    return reader, responses


def later_batches_read(srv: ServerThread, held: int) -> tuple[threading.Thread, list]:
    """The positive signal behind an absence: once a limit holds a stream, another device streams 3 batches
    and the node reads (counts) all three; the held stream's next batch was sent before them, so a node that
    were going to read it would have by now. Returns the probe's thread, which ends once the broker is back,
    and the list its acks go to."""
    call = srv.ingest.Stream(iter([batch("dev-probe", 1, seq=s) for s in (1, 2, 3)]), timeout=120)
    acks: list = []
    prober = threading.Thread(target=lambda: acks.extend(r.ack.seq for r in call))
    prober.start()
    poll(lambda: srv.server.counters.accepted >= held + 3, timeout=30, what="the probe's batches read")
    return prober, acks


def test_read_ahead_cap_stops_reading_a_stream(broker, ingest_node):
    srv = ingest_node()
    broker.pause()
    try:
        n = 3
        reader, responses = stream_until(
            srv, "dev-ra", n, 100, lambda: srv.server.counters.accepted == MAX_INFLIGHT_PER_STREAM * n
        )
        prober, probe_acks = later_batches_read(srv, MAX_INFLIGHT_PER_STREAM * n)
        # an absence: the stream is not read further while its acks wait
        assert srv.server.counters.accepted == MAX_INFLIGHT_PER_STREAM * n + 3 and responses == []
    finally:
        broker.resume()
    reader.join(90)
    prober.join(90)
    assert probe_acks == [1, 2, 3]
    assert [r.ack.seq for r in responses] == list(range(1, 101))  # all acked, in order
    assert sorted(s for d, s in topic_batches(srv) if d == "dev-ra") == list(range(1, 101))


def test_bytes_in_flight_cap_holds_a_device_back(broker, ingest_node):
    cap = 10_000
    srv = ingest_node(Limits(max_inflight_bytes_per_device=cap))
    limiter = srv.server.ingest.limiter
    broker.pause()
    try:
        n = 500  # about 5.5 kB a batch: the second one does not fit beside the first
        reader, responses = stream_until(srv, "dev-by", n, 10, lambda: srv.server.counters.accepted == 2 * n)
        prober, probe_acks = later_batches_read(srv, 2 * n)
        # an absence: the second batch waits for room, the third is not read
        assert srv.server.counters.accepted == 2 * n + 3 and responses == []
        assert 0 < limiter.inflight["dev-by"].nbytes <= cap
    finally:
        broker.resume()
    reader.join(90)
    prober.join(90)
    assert probe_acks == [1, 2, 3]
    assert [r.ack.seq for r in responses] == list(range(1, 11))
    assert sorted(s for d, s in topic_batches(srv) if d == "dev-by") == list(range(1, 11))


def test_full_producer_buffer_slows_then_unavailable_and_loses_nothing(broker, ingest_node):
    wait_s = 1.0
    srv = ingest_node(buffer_kbytes=16, unavailable_after_s=wait_s)
    outcomes: dict[str, tuple] = {}

    def send(device: str) -> None:
        started = time.monotonic()
        try:
            outcomes[device] = ("acked", srv.ingest.Send(batch(device, 500), timeout=90).accepted)
        except grpc.RpcError as exc:
            outcomes[device] = (exc.code(), exc.details(), time.monotonic() - started)

    devices = [f"dev-{i:02}" for i in range(12)]
    broker.pause()
    try:
        senders = [threading.Thread(target=send, args=(d,)) for d in devices]
        for s in senders:
            s.start()
        poll(lambda: srv.server.counters.rejected[QUEUE_UNAVAILABLE_CALLS] > 0, timeout=30, what="a refusal")
        # every device is either refused or in the producer's buffer (`depth`: readings awaiting the broker)
        poll(lambda: len(outcomes) + srv.server.queue.depth // 500 == len(devices), timeout=30, what="all")
    finally:
        broker.resume()
    for s in senders:
        s.join(90)
    acked = {d for d, o in outcomes.items() if o == ("acked", 500)}
    refused = {d: o for d, o in outcomes.items() if d not in acked}
    assert acked and refused and len(acked) + len(refused) == len(devices)
    for code, details, waited in refused.values():
        assert code == grpc.StatusCode.UNAVAILABLE and "producer buffer full" in details
        assert waited >= wait_s  # the device was held first, not refused at once
    assert srv.server.counters.rejected[QUEUE_UNAVAILABLE_CALLS] == len(refused)
    in_topic = topic_batches(srv)
    assert sorted(d for d, _ in in_topic) == sorted({"dev-warm"} | acked)  # every acked batch, once
