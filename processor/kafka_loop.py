"""Kafka as the processor loop's source (processor.loop): one member of the consumer group, its partitions'
records, and their state in the compacted state topic.

A snapshot is written as chunks of at most STATE_CHUNK_BYTES under keys
`<group>/<topic>/<p>/snapshot/<gen>/<i>`, then a manifest under `.../snapshot` naming the generation (the
offset it covers) and the chunk count, then
tombstones for the previous generation's chunks. A crash part way leaves the previous manifest and its chunks
whole, so restore is always exact, and no message comes near the broker's message limit whatever the number
of keys.

Dead letters and the anomalies topic are at-least-once: a replay may publish a record again.

Every wait on the broker has a bound (FLUSH_S, SIDE_FLUSH_S, READ_S), and a stop brings them all forward to
its deadline (KafkaSource.stop_by): with the broker gone, a stop ends on time and says what was not delivered.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
import time
from typing import TYPE_CHECKING

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from iotstream.bus.kafka import STATE_CHUNK_BYTES, KafkaConfig

if TYPE_CHECKING:
    from .loop import ChunkLoop

log = logging.getLogger(__name__)
_MANIFEST = struct.Struct("<qI")  # offset covered (= generation), chunk count
_LEGACY = struct.Struct("<q")
FLUSH_S = 60.0  # while running, a state write waits this long for the broker (a restart is ridden out)
SIDE_FLUSH_S = 30.0  # dead letters and anomalies at close
READ_S = 60.0  # reading the state topic on assignment
SLICE_S = 0.2  # waits are cut in slices of this: a stop's deadline is seen while one is under way


class Budget:
    """When a wait on the broker gives up: its own bound after it starts, or the stop's deadline once a stop
    has set one (stop_at, a time.monotonic() value), whichever comes first."""

    def __init__(self) -> None:
        self.stop_at: float | None = None

    def give_up_at(self, started: float, wait_s: float) -> float:
        return min(started + wait_s, math.inf if self.stop_at is None else self.stop_at)

    def left(self, give_up_at: float) -> float:
        return max(0.0, give_up_at - time.monotonic())

    def flush(self, producer, wait_s: float) -> int:
        """Deliver what the producer holds, within the budget; returns how many records are left."""
        started = time.monotonic()
        while True:
            left = self.left(self.give_up_at(started, wait_s))
            pending = producer.flush(min(SLICE_S, left))
            if not pending or not left:
                return pending

    def produce(self, producer, topic: str, value, key, **kw) -> None:
        """Produce; a full local queue waits for deliveries (a big snapshot fills it), within the budget."""
        started = time.monotonic()
        while True:
            try:
                producer.produce(topic, value, key, **kw)
                return
            except BufferError:
                if not self.left(self.give_up_at(started, FLUSH_S)):
                    raise KafkaException(f"{topic}: producer queue full, the broker takes nothing") from None
                producer.poll(0.1)


class StateLog:
    """Per partition: the latest snapshot (offset + state bytes, chunked) and the intents written since."""

    def __init__(self, cfg: KafkaConfig, budget: Budget | None = None):
        self.cfg = cfg
        self.budget = budget or Budget()
        self.producer = cfg.producer(enable_idempotence=True, acks="all", compression_type="zstd")
        self.generations: dict[int, tuple[int, int]] = {}  # partition -> (generation, chunks) last written

    def key(self, partition: int, kind: str) -> bytes:
        return f"{self.cfg.group_id}/{self.cfg.topic}/{partition}/{kind}".encode()

    def save_snapshot(self, partition: int, next_offset: int, data: bytes) -> None:
        chunks = [data[i : i + STATE_CHUNK_BYTES] for i in range(0, max(len(data), 1), STATE_CHUNK_BYTES)]
        for i, chunk in enumerate(chunks):
            self._produce(chunk, self.key(partition, f"snapshot/{next_offset}/{i}"))
        self._produce(_MANIFEST.pack(next_offset, len(chunks)), self.key(partition, "snapshot"))
        old = self.generations.get(partition)
        self.generations[partition] = (next_offset, len(chunks))
        if old is not None:
            gen, count = old
            start = len(chunks) if gen == next_offset else 0  # the same generation: only its extra chunks go
            for i in range(start, count):
                self._produce(None, self.key(partition, f"snapshot/{gen}/{i}"))
        self.save_intents(partition, [])

    def save_intents(self, partition: int, ranges: list) -> None:
        self._produce(json.dumps(ranges).encode(), self.key(partition, "intents"))

    def _produce(self, value: bytes | None, key: bytes) -> None:
        self.budget.produce(self.producer, self.cfg.state_topic, value, key)

    def flush(self) -> None:
        left = self.budget.flush(self.producer, FLUSH_S)
        if left:
            raise KafkaException(
                f"state topic {self.cfg.state_topic}: {left} snapshot/intent records not delivered (broker "
                "away?); nothing acked is lost: offsets are not committed past what is stored, and the next "
                "owner resumes from the last snapshot that was"
            )

    def load(self) -> dict[bytes, bytes]:
        """The latest value of every key in the state topic (tombstoned keys left out)."""
        reader = self.cfg.consumer(group_id=self.cfg.group_id + "-state-reader", enable_auto_commit=False)
        try:
            started = time.monotonic()
            low, high = watermarks(reader, TopicPartition(self.cfg.state_topic, 0), self.budget, started)
            latest: dict[bytes, bytes] = {}
            if high <= low:
                return latest
            reader.assign([TopicPartition(self.cfg.state_topic, 0, low)])
            position = low
            while position < high:
                if not self.budget.left(self.budget.give_up_at(started, READ_S)):
                    raise KafkaException(
                        f"state topic {self.cfg.state_topic}: read stalled at {position}/{high}"
                    )
                for msg in reader.consume(1000, timeout=SLICE_S):
                    if msg.error():
                        raise KafkaException(msg.error())
                    key, value, offset = msg.key(), msg.value(), msg.offset()
                    if key is None or offset is None:  # not a message of ours: the state topic keys all
                        continue
                    if value is None:
                        latest.pop(key, None)
                    else:
                        latest[key] = value
                    position = offset + 1
            return latest
        finally:
            reader.close()

    def restore(self, latest: dict[bytes, bytes], partition: int) -> tuple[bytes | None, int, list]:
        """(snapshot bytes or None, offset it covers or -1, intents as saved)."""
        intents = json.loads(latest.get(self.key(partition, "intents")) or b"[]")
        manifest = latest.get(self.key(partition, "snapshot"))
        if not manifest:
            return None, -1, intents
        if len(manifest) != _MANIFEST.size:  # written before chunking: the offset, then the whole state
            return manifest[_LEGACY.size :], _LEGACY.unpack_from(manifest)[0], intents
        offset, count = _MANIFEST.unpack(manifest)
        self.generations[partition] = (offset, count)
        data = b"".join(latest[self.key(partition, f"snapshot/{offset}/{i}")] for i in range(count))
        return data, offset, intents


def watermarks(consumer, tp: TopicPartition, budget: Budget, started: float) -> tuple[int, int]:
    """(low, high) offsets; retries while the partition has no leader yet (a topic just created), within
    READ_S of `started` or the stop's deadline."""
    while True:
        left = budget.left(budget.give_up_at(started, READ_S))
        try:
            return consumer.get_watermark_offsets(tp, timeout=max(min(10.0, left), 0.001))
        except KafkaException as exc:
            err = exc.args[0]
            left = budget.left(budget.give_up_at(started, READ_S))
            if not left or not (err.retriable() or err.code() in _NO_LEADER_YET):
                raise
            log.info("%s[%d] not ready (%s); retrying", tp.topic, tp.partition, err)
            time.sleep(min(0.5, left))


_NO_LEADER_YET = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
)


class KafkaSource:
    """The loop's partitions are the ones the group assigns this member; they move on rebalances."""

    loop: ChunkLoop  # set by start(), before the group calls back

    def __init__(self, cfg: KafkaConfig, session_timeout_ms: int = 10_000):
        self.cfg = cfg
        self.topic = cfg.topic
        self.budget = Budget()
        self.state_log = StateLog(cfg, self.budget)
        self.side = cfg.producer(enable_idempotence=True, acks="all", linger_ms=20)
        self.consumer = cfg.consumer(
            **{
                "group.id": cfg.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": session_timeout_ms,
                "heartbeat.interval.ms": max(500, session_timeout_ms // 5),
                "on_commit": self._on_commit,
            }
        )
        # The committed offsets are the group's lag (metrics, GetStats, "caught up"). An asynchronous commit
        # can fail (one racing a rebalance does), and the partition's last one is not followed by another:
        # partition -> the offset this member last asked to commit, and those to commit (again) at the next
        # poll.
        self.wanted: dict[int, int] = {}
        self.pending: dict[int, int] = {}

    def start(self, loop) -> None:
        self.loop = loop
        self.consumer.subscribe(
            [self.cfg.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def _on_assign(self, consumer, partitions) -> None:
        latest = self.state_log.load()
        parts = [TopicPartition(self.cfg.topic, tp.partition) for tp in partitions]
        committed_at = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=30)}
        for tp in partitions:
            snapshot, offset, intents = self.state_log.restore(latest, tp.partition)
            committed = committed_at[tp.partition]
            if snapshot is not None and offset > committed:
                # The previous owner stored up to its snapshot but its last commit was lost: report it.
                self.wanted[tp.partition] = self.pending[tp.partition] = offset
            if snapshot is None:
                offset = committed if committed >= 0 else OFFSET_BEGINNING
                if committed >= 0:
                    log.warning(
                        "partition %d: no snapshot; resuming cold at committed offset %d",
                        tp.partition,
                        offset,
                    )
            self.loop.assign(tp.partition, snapshot, offset, intents)
            tp.offset = offset
        consumer.incremental_assign(partitions)

    def _on_revoke(self, consumer, partitions) -> None:
        # Stopping (the consumer's close): the loop has saved its state already, or failed to and said so.
        stopping = self.budget.stop_at is not None
        for tp in partitions:
            self.loop.release(tp.partition, save=not stopping)
            self._forget(tp.partition)
        if not stopping:
            self.state_log.flush()  # the next owner must find the snapshot
        consumer.incremental_unassign(partitions)

    def _on_lost(self, consumer, partitions) -> None:
        # Another member may own them already: drop the state without writing anything.
        for tp in partitions:
            self.loop.release(tp.partition, save=False)
            self._forget(tp.partition)
        consumer.incremental_unassign(partitions)

    def _forget(self, partition: int) -> None:
        self.wanted.pop(partition, None)
        self.pending.pop(partition, None)

    def _on_commit(self, err, partitions) -> None:
        """On the loop's thread (from consume): a failed commit that is still this member's latest for a
        partition it owns is tried again at the next poll."""
        for tp in partitions:
            if (err is not None or tp.error is not None) and self.wanted.get(tp.partition) == tp.offset:
                log.info("partition %d: commit of %d failed (%s); retrying", tp.partition, tp.offset, err)
                self.pending[tp.partition] = tp.offset

    def poll(self, max_messages: int, timeout: float) -> list:
        self.side.poll(0)
        if self.pending:
            offsets = [TopicPartition(self.cfg.topic, p, o) for p, o in self.pending.items()]
            self.pending.clear()
            self.consumer.commit(offsets=offsets, asynchronous=True)
        records = []
        for msg in self.consumer.consume(max_messages, timeout=timeout):
            error = msg.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                log.warning("consumer: %s", msg.error())
                continue
            records.append(msg)
        return records

    def pressed(self) -> bool:
        return False  # Kafka's retention is the broker's business

    def caught_up(self) -> bool:
        return True  # processors stop at once; the group's next member carries on

    def commit(self, partition: int, next_offset: int) -> None:
        self.wanted[partition] = next_offset
        self.consumer.commit(
            offsets=[TopicPartition(self.cfg.topic, partition, next_offset)], asynchronous=True
        )

    def save_snapshot(self, partition: int, next_offset: int, data: bytes) -> None:
        self.state_log.save_snapshot(partition, next_offset, data)

    def save_intents(self, partition: int, ranges: list) -> None:
        self.state_log.save_intents(partition, ranges)

    def flush(self) -> None:
        self.state_log.flush()

    def dead_letter(self, msg, reason: str) -> None:
        self._side_produce(
            self.cfg.deadletter_topic,
            msg.value(),
            msg.key(),
            headers=[
                ("reason", reason.encode()),
                ("source", f"{msg.topic()}/{msg.partition()}/{msg.offset()}".encode()),
            ],
        )

    def publish_anomalies(self, table) -> None:
        for row in table.to_pylist():
            row["time_ms"] = int(row.pop("time").timestamp() * 1000)
            self._side_produce(self.cfg.anomalies_topic, json.dumps(row).encode(), row["device_id"].encode())

    def _side_produce(self, topic: str, value: bytes, key: bytes, headers=None) -> None:
        """Produce to a side topic; a full local queue waits for deliveries rather than failing the chunk."""
        self.budget.produce(self.side, topic, value, key, headers=headers)

    def stop_by(self, deadline: float) -> None:
        """From any thread: every wait on the broker gives up by `deadline` (time.monotonic())."""
        self.budget.stop_at = deadline

    def close(self) -> None:
        try:
            left = self.budget.flush(self.side, SIDE_FLUSH_S)
            if left:
                raise KafkaException(
                    f"{left} dead-letter/anomaly records not delivered to {self.cfg.deadletter_topic} / "
                    f"{self.cfg.anomalies_topic} (broker away?); the readings and anomalies are stored"
                )
        finally:
            self._close_consumer()

    def _close_consumer(self) -> None:
        """Leaves the group: the others take over now, not after a session timeout. librdkafka's close has no
        timeout and can hang while the broker is away: once a stop has a deadline, it is left behind then."""
        if self.budget.stop_at is None:
            self.consumer.close()
            return
        closer = threading.Thread(target=self.consumer.close, name="kafka-consumer-close", daemon=True)
        closer.start()
        closer.join(self.budget.left(self.budget.stop_at))
        if closer.is_alive():
            log.warning("the Kafka consumer's close did not end by the stop's deadline (broker away?): left")
