"""A partition state with more keys than one Kafka message holds (the broker's default 1 MB limit; one
message per snapshot died at ~16,000 keys) goes through the real broker in chunks and comes back exact."""

from __future__ import annotations

import struct
import time
import uuid

import numpy as np

from iotstream.bus.kafka import KafkaConfig, ensure_topics
from iotstream.processor import Processor
from iotstream.processor.kafka_loop import StateLog
from iotstream.v1 import ingest_pb2 as pb

KEYS = 20_000


def state_with_keys(keys: int, readings_per_key: int) -> bytes:
    processor = Processor(store=None)
    now = int(time.time() * 1000)
    names = [f"m{i:05d}" for i in range(keys)]
    for r in range(readings_per_key):
        batch = pb.ReadingBatch(
            device_id="dev-1",
            seq=r + 1,
            base_time_ms=now + r * 1000,
            time_offset_ms=[0] * keys,
            metric_names=names,
            metric_index=list(range(keys)),
            values=np.random.default_rng(r).normal(20, 1, keys).tolist(),
            fingerprint=r + 1,
        )
        processor.prepare([batch.SerializeToString()])
    return processor.state(0).to_bytes()


def test_snapshot_of_20000_keys_through_the_broker_is_exact(kafka_broker):
    cfg = KafkaConfig(bootstrap=kafka_broker.bootstrap, namespace="s" + uuid.uuid4().hex[:8], partitions=1)
    ensure_topics(cfg)
    first, second = state_with_keys(KEYS, 3), state_with_keys(KEYS + 500, 4)
    assert len(first) > 4 * 1024 * 1024  # several times what one message may carry

    writer = StateLog(cfg)
    writer.save_snapshot(0, 1000, first)
    writer.save_intents(0, [[1000, 1010]])
    writer.flush()
    assert StateLog(cfg).restore(StateLog(cfg).load(), 0) == (first, 1000, [[1000, 1010]])

    writer.save_snapshot(0, 2000, second)  # a new generation; the first one's chunks are tombstoned
    writer.flush()
    reader = StateLog(cfg)
    latest = reader.load()
    assert reader.restore(latest, 0) == (second, 2000, [])
    assert not [k for k in latest if b"/snapshot/1000/" in k]


def test_a_snapshot_written_before_chunking_still_restores(kafka_broker):
    cfg = KafkaConfig(bootstrap=kafka_broker.bootstrap, namespace="o" + uuid.uuid4().hex[:8], partitions=1)
    ensure_topics(cfg)
    state = b"IOTSPS state bytes, as written by an older version"
    writer = StateLog(cfg)
    writer._produce(struct.pack("<q", 777) + state, writer.key(0, "snapshot"))  # the old one-message form
    writer.flush()
    assert StateLog(cfg).restore(StateLog(cfg).load(), 0) == (state, 777, [])
