"""The distributed path against a real Kafka broker: ingest -> Kafka -> processor(s) -> ClickHouse, exactly
once.

One fleet (100 devices x 1,000 readings) is ingested once per module; each test then processes it with
its own consumer group and ClickHouse database, so results can be compared with an uninterrupted run.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
import uuid

import grpc
import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from conftest import ServerThread
from waiting import poll

from iotstream.bus.kafka import KafkaConfig, ensure_topics
from iotstream.client.simulate import batches, device_signal, run_fleet
from iotstream.node import Config
from iotstream.v1 import ingest_pb2 as pb
from iotstream.v1 import query_pb2 as qpb
from iotstream.v1 import query_pb2_grpc

DEVICES, READINGS = 100, 1000
ANOMALY_COLUMNS = "device_id, metric, toUnixTimestamp64Milli(time) AS t, kind, score"


def lag(cfg: KafkaConfig) -> tuple[int, int]:
    """(messages not yet committed by the group, messages in the topic)."""
    c = Consumer({"bootstrap.servers": cfg.bootstrap, "group.id": cfg.group_id, "enable.auto.commit": False})
    try:
        parts = c.list_topics(cfg.topic, timeout=10).topics[cfg.topic].partitions
        tps = [TopicPartition(cfg.topic, p) for p in parts]
        committed = c.committed(tps, timeout=10)
        total = behind = 0
        for tp in committed:
            low, high = c.get_watermark_offsets(TopicPartition(cfg.topic, tp.partition), timeout=10)
            total += high - low
            behind += high - (tp.offset if tp.offset >= 0 else low)
        return behind, total
    finally:
        c.close()


def processor_node(cfg: KafkaConfig, chdb_dir: str, roles=("process",), **kw) -> ServerThread:
    return ServerThread(
        Config(
            roles=frozenset(roles),
            kafka=cfg,
            port=0,
            data_dir=chdb_dir,
            database="k_" + uuid.uuid4().hex[:10],
            **kw,
        )
    )


def episodes(stub) -> set:
    """Every anomaly episode through ListAnomalies: (device, metric, peak time, kind, peak score,
    readings)."""
    found, token = set(), ""
    while True:
        page = stub.ListAnomalies(qpb.ListAnomaliesRequest(page_size=1000, page_token=token), timeout=30)
        found |= {(a.device_id, a.metric, a.time_ms, a.kind, a.score, a.readings) for a in page.anomalies}
        if not (token := page.next_page_token):
            return found


def ingest_node(cfg: KafkaConfig) -> ServerThread:
    return ServerThread(Config(roles=frozenset({"ingest"}), kafka=cfg, port=0))


def anomalies(node: ServerThread) -> set:
    return {tuple(r.values()) for r in node.sql(f"SELECT {ANOMALY_COLUMNS} FROM $db.anomalies")}


def count(node: ServerThread) -> tuple[int, int]:
    row = node.sql("SELECT count() AS n, uniqExact(device_id, metric, time, value) AS u FROM $db.readings")[0]
    return row["n"], row["u"]


def devices(node: ServerThread) -> set:
    return {r["device_id"] for r in node.sql("SELECT DISTINCT device_id FROM $db.readings")}


def wait_caught_up(cfg: KafkaConfig, timeout: float = 120) -> None:
    poll(lambda: lag(cfg)[0] == 0, timeout, "the processor group to commit every message")


@pytest.fixture(scope="module")
def ingested(kafka_broker, chdb_dir):
    """The fleet, ingested once through a Kafka-backed ingest node, and a reference uninterrupted run."""
    cfg = KafkaConfig(bootstrap=kafka_broker.bootstrap, namespace="t" + uuid.uuid4().hex[:8], partitions=4)
    node = ingest_node(cfg)
    try:
        summary, fleet = asyncio.run(
            run_fleet(node.target, DEVICES, READINGS, batch=100, anomalies=0.002, seed=5)
        )
    finally:
        node.stop()
    assert summary["acked"] == summary["sent"] == DEVICES * READINGS
    reference = processor_node(cfg, chdb_dir, roles=("process", "query"))
    try:
        wait_caught_up(cfg)
        assert count(reference) == (DEVICES * READINGS, DEVICES * READINGS)
        expected = anomalies(reference), episodes(reference.query)
    finally:
        reference.stop()
    return cfg, summary, fleet, expected


def test_fleet_through_kafka_lands_exactly(ingested):
    cfg, summary, fleet, (flagged, _) = ingested
    spikes = {(d.device_id, int(d.time_ms[i])) for d in fleet for i in d.spikes}
    assert len(spikes) == summary["injected_anomalies"] > 0
    assert spikes <= {(a[0], a[2]) for a in flagged}  # every injected spike was detected
    assert lag(cfg)[1] == DEVICES * READINGS // 100  # one Kafka message per batch


def test_two_processors_share_the_work_exactly(kafka_broker, chdb_dir):
    """A second processor joins between two halves of the data: partitions move with their state."""
    cfg = KafkaConfig(bootstrap=kafka_broker.bootstrap, namespace="w" + uuid.uuid4().hex[:8], partitions=4)
    rng = np.random.default_rng(8)
    end_ms = int(time.time() * 1000)
    fleet = [device_signal(f"dev-{i:03d}", 1000, end_ms, 1000, 0.005, rng) for i in range(40)]
    halves = [[b for d in fleet for b in batches(d, 100)[h * 5 : (h + 1) * 5]] for h in (0, 1)]
    ingest = ingest_node(cfg)
    a = b = reference = None
    try:
        assert all(ingest.ingest.Send(x, timeout=30).accepted == 100 for x in halves[0])
        a = processor_node(cfg, chdb_dir)
        wait_caught_up(cfg)
        b = processor_node(cfg, chdb_dir)
        poll(lambda: len(a.server.processor_loop.runs) < 4, 60, "the group to rebalance")
        assert all(ingest.ingest.Send(x, timeout=30).accepted == 100 for x in halves[1])
        wait_caught_up(cfg)
        reference = processor_node(
            KafkaConfig(bootstrap=cfg.bootstrap, namespace=cfg.namespace, group="ref"), chdb_dir
        )
        wait_caught_up(KafkaConfig(bootstrap=cfg.bootstrap, namespace=cfg.namespace, group="ref"))
        expected = anomalies(reference)
        assert count(a)[0] + count(b)[0] == count(reference)[0] == 40_000
        assert anomalies(a) | anomalies(b) == expected and not anomalies(a) & anomalies(b)
        # Partitions moved mid-stream (their devices have rows in both stores), and detection still
        # matched the uninterrupted run, scores included: the rolling state moved with them.
        assert devices(a) & devices(b)
        assert len(expected) >= 100
    finally:
        for node in (reference, b, a, ingest):
            if node is not None:
                node.stop()


def start_process(cfg: KafkaConfig, data_dir, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "iotstream.cli",
        "process",
        "--kafka",
        cfg.bootstrap,
        "--namespace",
        cfg.namespace,
        "--group",
        cfg.group_id,
        "--data-dir",
        str(data_dir),
        *extra,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def read_store(data_dir) -> tuple[qpb.Stats, set, dict]:
    """Stats, anomalies and per-device reading counts of an embedded store, through a query-server process."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iotstream.cli",
            "query-server",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--insecure-no-auth",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        target = next(
            m.group(1) for line in proc.stderr if (m := re.search(r"serving on ([\d.]+:\d+)", line))
        )
        with grpc.insecure_channel(target) as ch:
            q = query_pb2_grpc.QueryStub(ch)
            stats = q.GetStats(qpb.GetStatsRequest(), timeout=30)
            found = episodes(q)
            per_device = q.Aggregate(qpb.AggregateRequest(interval_ms=10**12, funcs=[qpb.COUNT]), timeout=30)
            counts: dict = {}
            for series in per_device.series:
                counts[series.device_id] = counts.get(series.device_id, 0) + sum(series.count)
        return stats, found, counts
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_kill_9_mid_stream_then_restart(ingested, tmp_path):
    cfg, _, _, (_, expected) = ingested
    cfg = KafkaConfig(bootstrap=cfg.bootstrap, namespace=cfg.namespace, group="k" + uuid.uuid4().hex[:8])
    proc = start_process(cfg, tmp_path, "--chunk-messages", "5", "--snapshot-every", "0.5")
    total = DEVICES * READINGS // 100
    poll(
        lambda: total * 0.2 <= total - lag(cfg)[0] < total * 0.8, 120, "the processor to be mid-stream", 0.02
    )
    proc.kill()  # SIGKILL: no snapshot, no commit, no goodbye
    assert proc.wait(30) == -signal.SIGKILL
    assert lag(cfg)[0] > 0
    proc = start_process(cfg, tmp_path, "--chunk-messages", "5", "--snapshot-every", "0.5")
    try:
        wait_caught_up(cfg)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    stats, found, counts = read_store(tmp_path)
    assert stats.readings == DEVICES * READINGS
    assert counts == {f"sim-{i:05d}": READINGS for i in range(DEVICES)}  # none lost, none doubled
    assert found == expected  # the same episodes, peaks and scores as the uninterrupted run


def test_poison_message_goes_to_dead_letters(kafka_broker, chdb_dir):
    cfg = KafkaConfig(bootstrap=kafka_broker.bootstrap, namespace="p" + uuid.uuid4().hex[:8], partitions=1)
    ensure_topics(cfg)
    good = pb.ReadingBatch(
        device_id="dev-p",
        seq=1,
        base_time_ms=int(time.time() * 1000),
        time_offset_ms=[0, 1],
        metric_names=["temp"],
        metric_index=[0, 0],
        values=[1.0, 2.0],
    )
    producer = Producer({"bootstrap.servers": cfg.bootstrap})
    producer.produce(cfg.topic, good.SerializeToString(), b"dev-p")
    producer.produce(cfg.topic, b"\xff\xff\xff\xff\x0f", b"dev-p")  # truncated varint: never a ReadingBatch
    good.seq, good.time_offset_ms[:] = 2, [2, 3]
    producer.produce(cfg.topic, good.SerializeToString(), b"dev-p")
    assert producer.flush(30) == 0
    node = processor_node(cfg, chdb_dir)
    try:
        wait_caught_up(cfg)
        assert count(node) == (4, 4)  # both neighbours of the poison message
    finally:
        node.stop()
    reader = Consumer(
        {"bootstrap.servers": cfg.bootstrap, "group.id": "dlq-reader", "auto.offset.reset": "earliest"}
    )
    reader.subscribe([cfg.deadletter_topic])
    try:
        msg = poll(
            lambda: next((m for m in [reader.poll(0.5)] if m is not None and not m.error()), None),
            30,
            "the dead letter",
        )
    finally:
        reader.close()
    headers = dict(msg.headers())
    assert msg.value() == b"\xff\xff\xff\xff\x0f" and msg.key() == b"dev-p"
    assert b"not an iotstream.v1.ReadingBatch" in headers["reason"]
    assert headers["source"] == f"{cfg.topic}/0/1".encode()


def test_resent_batch_through_kafka_is_stored_once(kafka_broker, chdb_dir):
    cfg = KafkaConfig(bootstrap=kafka_broker.bootstrap, namespace="r" + uuid.uuid4().hex[:8], partitions=2)
    ingest = ingest_node(cfg)
    batch = pb.ReadingBatch(
        device_id="dev-r",
        seq=9,
        base_time_ms=int(time.time() * 1000) - 5000,
        time_offset_ms=[0, 1, 2],
        metric_names=["temp"],
        metric_index=[0, 0, 0],
        values=[1.0, 2.0, 3.0],
    )
    try:
        assert ingest.ingest.Send(batch, timeout=30).accepted == 3
        # The ack was lost: the device reconnects and resends on a new stream.
        assert [r.ack.accepted for r in ingest.ingest.Stream(iter([batch]), timeout=30)] == [3]
    finally:
        ingest.stop()
    assert lag(cfg)[1] == 2  # both copies reached Kafka...
    node = processor_node(cfg, chdb_dir)
    try:
        wait_caught_up(cfg)
        assert count(node) == (3, 3)  # ...and were stored once
    finally:
        node.stop()


def test_broker_outage_slows_acks_loses_nothing(private_kafka_broker, chdb_dir):
    broker = private_kafka_broker
    cfg = KafkaConfig(bootstrap=broker.bootstrap, namespace="o" + uuid.uuid4().hex[:8], partitions=2)
    ingest = ingest_node(cfg)
    result = {}

    def fleet():
        result["summary"], _ = asyncio.run(run_fleet(ingest.target, 10, 3000, batch=50, rate=1500, seed=2))

    import threading

    sender = threading.Thread(target=fleet)
    sender.start()
    try:
        # the fleet is going (some batches acked) before the outage
        poll(lambda: ingest.server.counters.accepted >= 500, 60, "the first acks", 0.05)
        broker.restart(down=10)
        sender.join(180)
        assert not sender.is_alive()
    finally:
        ingest.stop()
    summary = result["summary"]
    assert summary["acked"] == summary["sent"] == 30_000  # no device saw an error
    assert summary["ack_p99_ms"] > 5_000  # the outage showed up as slow acks
    node = processor_node(cfg, chdb_dir)
    try:
        wait_caught_up(cfg)
        assert count(node) == (30_000, 30_000)
    finally:
        node.stop()


def test_dead_processor_thread_turns_the_node_not_serving(kafka_broker, chdb_dir):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    cfg = KafkaConfig(bootstrap=kafka_broker.bootstrap, namespace="d" + uuid.uuid4().hex[:8], partitions=1)
    node = processor_node(cfg, chdb_dir, roles=("process", "query"))
    try:
        health = health_pb2_grpc.HealthStub(node.channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        node.server.processor_loop.source.consumer.close()  # its next consume() raises: the thread dies
        poll(lambda: node.server.failed.is_set(), 30, "the node to notice")
        assert "processor stopped" in node.server.failure
        poll(
            lambda: (
                health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
                == health_pb2.HealthCheckResponse.NOT_SERVING
            ),
            30,
            "health to say NOT_SERVING",
        )
    finally:
        node.stop()
