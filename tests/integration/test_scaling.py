"""The scaling check (bench/scaling.py) in small: processors as separate OS processes in one group over 12
partitions, under load; the second joins, is killed with SIGKILL mid-stream and rejoins. Every acked
reading is stored exactly once, across the members' own chDB folders (the oracle is simulate's ack count
and its unique (device, metric, time) readings)."""

from __future__ import annotations

import time
import uuid

import numpy as np
from confluent_kafka import Consumer, TopicPartition
from test_kafka_pipeline import count, ingest_node, lag, processor_node, wait_caught_up

from iotstream.bench import scaling
from iotstream.bus.kafka import KafkaConfig
from iotstream.client.simulate import batches, device_signal

DEVICES, READINGS = 24, 16000  # 25 s of load: the kill comes while it runs


def test_kill_9_of_a_member_mid_stream_stores_every_acked_reading_once(kafka_broker):
    args = scaling.parse(
        [
            "--kafka",
            kafka_broker.bootstrap,
            "--processors",
            "2",
            "--devices",
            str(DEVICES),
            "--readings",
            str(READINGS),
            "--batch",
            "200",
            "--rate",
            "16000",
            "--phase",
            "3",
            "--settle",
            "0",
            "--event-timeout",
            "60",
            "--drain-timeout",
            "90",
        ]
    )
    started: list = []
    result = scaling.run(args, started=started)
    assert len(started) == 5 and not [c.name for c in started if c.alive]  # ingest, load, p1, p2 twice
    ex = result["exactness"]
    assert result["load"]["acked"] == result["load"]["sent"] == DEVICES * READINGS
    assert ex["stored_distinct"] == DEVICES * READINGS  # none lost, nothing else
    assert ex["doubled_within_a_store"] == 0  # a replay into the same folder is deduplicated by its token
    assert ex["copies_between_survivors"] == 0  # clean partition moves hand over without overlap
    assert ex["exact"]
    assert set(ex["rows_per_store"]) == {"p1", "p2"} and all(ex["rows_per_store"].values())
    assert [r["event"] for r in result["rebalances"]] == ["p2 joins", "p2 killed", "p2 rejoins"]
    assert all(r["partitions_moved"] for r in result["rebalances"]), result["rebalances"]


def test_the_next_owner_commits_what_a_lost_commit_left_behind(kafka_broker, chdb_dir):
    """The committed offsets are the group's lag (metrics, GetStats, the drain above). An owner's last
    asynchronous commit can be lost (one racing a rebalance is); the next owner resumes at the snapshot,
    reads nothing new, and must still commit it, or the group shows a backlog forever (found by
    bench/scaling.py: 3 partitions stuck 30-40 messages behind, all stored)."""
    cfg = KafkaConfig(bootstrap=kafka_broker.bootstrap, namespace="c" + uuid.uuid4().hex[:8], partitions=2)
    rng, end_ms = np.random.default_rng(3), int(time.time() * 1000)
    ingest = ingest_node(cfg)
    try:
        for i in range(4):
            for batch in batches(device_signal(f"dev-{i}", 500, end_ms, 1000, 0.0, rng), 100):
                assert ingest.ingest.Send(batch, timeout=30).accepted == 100
    finally:
        ingest.stop()
    first = processor_node(cfg, chdb_dir)
    try:
        wait_caught_up(cfg)
        assert count(first) == (2000, 2000)
    finally:
        first.stop()  # a clean leave: the snapshots cover every message
    group = Consumer({"bootstrap.servers": cfg.bootstrap, "group.id": cfg.group_id})
    try:  # the commits are lost; the snapshots stand
        group.commit(offsets=[TopicPartition(cfg.topic, p, 0) for p in range(2)], asynchronous=False)
    finally:
        group.close()
    assert lag(cfg)[0] == 20
    second = processor_node(cfg, chdb_dir)
    try:
        wait_caught_up(cfg, timeout=30)
        assert count(second) == (0, 0)  # it resumed at the snapshots: nothing was read twice
    finally:
        second.stop()


def test_a_failed_commit_is_retried_while_it_is_still_the_latest(kafka_broker):
    """The retry half of the fix: a failed commit goes again at the next poll, unless a later commit of the
    partition superseded it or the partition left this member."""
    from confluent_kafka import KafkaError

    from iotstream.processor.kafka_loop import KafkaSource

    cfg = KafkaConfig(bootstrap=kafka_broker.bootstrap, namespace="f" + uuid.uuid4().hex[:8])
    source = KafkaSource(cfg)
    try:
        source.wanted = {0: 7, 1: 9, 2: 4}
        failed = KafkaError(KafkaError.REBALANCE_IN_PROGRESS)
        source._on_commit(failed, [TopicPartition(cfg.topic, 0, 7), TopicPartition(cfg.topic, 1, 8)])
        source._on_commit(None, [TopicPartition(cfg.topic, 2, 4)])
        assert source.pending == {0: 7}  # 1's failed 8 was superseded by 9; 2 succeeded
        source._forget(0)
        assert source.pending == {} and 0 not in source.wanted
    finally:
        source.close()
