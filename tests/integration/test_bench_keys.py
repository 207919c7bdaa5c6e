"""bench.keys --kafka at a small size: the readings come through the broker, and the snapshot goes to the
state topic in messages under the topic's limit and reads back byte for byte (no speed assertions)."""

import uuid

from iotstream.bench.keys import run
from iotstream.bus.kafka import STATE_CHUNK_BYTES, KafkaConfig


def test_keys_through_kafka(kafka_broker):
    cfg = KafkaConfig(kafka_broker.bootstrap, namespace=f"bk-{uuid.uuid4().hex[:8]}", partitions=1)
    r = run(2_000, 20_000, compact_max=0, kafka=cfg, restore_max=2_000)
    assert r["keys"] == 2_000 and r["readings"] == 20_000  # every timed reading came back from the topic
    assert r["snapshot_bytes"] > 2 * STATE_CHUNK_BYTES  # so it went in several chunks
    assert r["kafka_largest_message_bytes"] <= STATE_CHUNK_BYTES < r["broker_max_message_bytes"]
    assert r["restore_exact"]
