"""The local Kafka broker (bench/kafka_local.py) works end to end: produce/consume, restarts keep data.

Needs the kafka_fixture plugin (tests/conftest.py or `-p kafka_fixture`), Java 17 and Maven (first run only).
"""

from __future__ import annotations

import time
import uuid

import pytest

ck = pytest.importorskip("confluent_kafka")


def produce(bootstrap: str, topic: str, values: list[bytes], **extra) -> None:
    """Idempotent, acks=all producer as the ingest uses it; fails on any delivery error."""
    errors = []
    p = ck.Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5, **extra}
    )
    for i, v in enumerate(values):
        p.produce(topic, v, key=str(i % 16).encode(), on_delivery=lambda err, _m: err and errors.append(err))
        p.poll(0)
    assert p.flush(60) == 0, "messages still queued after 60 s"
    assert not errors, errors[:5]


def consume_all(bootstrap: str, topic: str, n: int, timeout: float = 60.0) -> list[bytes]:
    """Read n messages from the start of topic with a fresh group."""
    c = ck.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    got, deadline = [], time.monotonic() + timeout
    try:
        while len(got) < n and time.monotonic() < deadline:
            for m in c.consume(num_messages=1000, timeout=0.5):
                if m.error():
                    if m.error().code() != ck.KafkaError._PARTITION_EOF:
                        raise ck.KafkaException(m.error())
                    continue
                got.append(m.value())
    finally:
        c.close()
    return got


def test_produce_consume_roundtrip(kafka_broker, kafka_topic):
    values = [f"reading-{i}".encode() for i in range(5000)]
    produce(kafka_broker.bootstrap, kafka_topic, values)
    got = consume_all(kafka_broker.bootstrap, kafka_topic, len(values))
    assert sorted(got) == sorted(values)


@pytest.mark.parametrize("graceful", [True, False], ids=["sigterm", "sigkill"])
def test_restart_same_port_keeps_messages(private_kafka_broker, graceful):
    b = private_kafka_broker
    bootstrap, topic = b.bootstrap, "restart-test"  # auto-created (num.partitions=4)
    before = [f"before-{i}".encode() for i in range(500)]
    produce(bootstrap, topic, before)
    old_pid = b.pid

    b.restart(down=1, graceful=graceful)

    assert b.bootstrap == bootstrap and b.pid != old_pid and b.alive()
    after = [f"after-{i}".encode() for i in range(500)]
    produce(bootstrap, topic, after)
    got = consume_all(bootstrap, topic, 1000)
    assert sorted(got) == sorted(before + after)


def test_producer_rides_out_outage(private_kafka_broker):
    """Messages produced while the broker is down are delivered after it returns (librdkafka buffers)."""
    b = private_kafka_broker
    topic = "outage-test"
    produce(b.bootstrap, topic, [b"warmup"])
    errors = []
    p = ck.Producer(
        {"bootstrap.servers": b.bootstrap, "enable.idempotence": True, "acks": "all", "log_level": 0}
    )  # silence "connection refused" while it is down
    b.shutdown()
    for i in range(200):
        p.produce(topic, f"during-{i}".encode(), on_delivery=lambda err, _m: err and errors.append(err))
    p.poll(1)
    b.restart(down=2)
    assert p.flush(60) == 0 and not errors, errors[:5]
    got = consume_all(b.bootstrap, topic, 201)
    assert len(got) == 201
