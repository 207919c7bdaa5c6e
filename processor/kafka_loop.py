"""The Kafka processor: one member of the consumer group; per partition, read -> compute -> write -> commit.

Exactly-once into ClickHouse. Each chunk of a partition is a contiguous offset range [a, b]; its inserts
carry the deduplication token `topic:partition:a:b`. Before inserting, the chunk's range is written to the
compacted state topic (an "intent"). Every few seconds, and when a partition is revoked, the partition's
whole state (rolling windows, key slots, recent batch fingerprints) is written there as a snapshot with
the offset it covers. A processor that gains the partition restores the snapshot, seeks to its offset,
and re-processes the recorded intents with exactly the same ranges: the state advances as it did before
and the repeated inserts carry the same tokens, so ClickHouse stores them once. The group's committed
offsets only report progress (lag); the snapshot decides where reading resumes.

Dead letters and the anomalies topic are at-least-once: a replay may publish a record again.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import time
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from iotstream.clickhouse import StorageError
from iotstream.bus.kafka import RDKAFKA_LOG, STATE_MAX_BYTES, KafkaConfig

from .processor import Processor
from .state import PartitionState

log = logging.getLogger(__name__)
_OFFSET = struct.Struct("<q")
RETRY_DELAYS_S = (0.1, 0.5, 1.0, 2.0, 5.0)


class StateLog:
    """Per partition: the latest snapshot (offset + state bytes) and the intents written since."""

    def __init__(self, cfg: KafkaConfig):
        self.cfg = cfg
        self.producer = Producer({"bootstrap.servers": cfg.bootstrap, "logger": RDKAFKA_LOG,
                                  "enable.idempotence": True, "acks": "all",
                                  "compression.type": "zstd", "message.max.bytes": STATE_MAX_BYTES})

    def key(self, partition: int, kind: str) -> bytes:
        return f"{self.cfg.group_id}/{self.cfg.topic}/{partition}/{kind}".encode()

    def save_snapshot(self, partition: int, next_offset: int, state: PartitionState) -> None:
        self.producer.produce(self.cfg.state_topic, _OFFSET.pack(next_offset) + state.to_bytes(),
                              self.key(partition, "snapshot"))
        self.save_intents(partition, [])

    def save_intents(self, partition: int, ranges: list[tuple[int, int]]) -> None:
        self.producer.produce(self.cfg.state_topic, json.dumps(ranges).encode(), self.key(partition, "intents"))

    def flush(self) -> None:
        if self.producer.flush(60):
            raise KafkaException(f"state topic {self.cfg.state_topic}: records not delivered within 60 s")

    def load(self) -> dict[bytes, bytes]:
        """The latest value of every key in the state topic."""
        reader = Consumer({"bootstrap.servers": self.cfg.bootstrap, "logger": RDKAFKA_LOG,
                           "group.id": self.cfg.group_id + "-state-reader",
                           "enable.auto.commit": False})
        try:
            low, high = watermarks(reader, TopicPartition(self.cfg.state_topic, 0))
            latest: dict[bytes, bytes] = {}
            if high <= low:
                return latest
            reader.assign([TopicPartition(self.cfg.state_topic, 0, low)])
            position, give_up = low, time.monotonic() + 60
            while position < high:
                if time.monotonic() > give_up:
                    raise KafkaException(f"state topic {self.cfg.state_topic}: read stalled at {position}/{high}")
                for msg in reader.consume(1000, timeout=1.0):
                    if msg.error():
                        raise KafkaException(msg.error())
                    latest[msg.key()] = msg.value()
                    position = msg.offset() + 1
            return latest
        finally:
            reader.close()

    def restore(self, latest: dict[bytes, bytes], partition: int) -> tuple[PartitionState | None, int, list]:
        """(state or None, offset it covers or -1, intents to replay from there)."""
        snap = latest.get(self.key(partition, "snapshot"))
        if not snap:
            state, offset = None, -1
        else:
            (offset,) = _OFFSET.unpack_from(snap)
            state = PartitionState.from_bytes(snap[_OFFSET.size:])
        intents = [tuple(r) for r in json.loads(latest.get(self.key(partition, "intents")) or b"[]")]
        return state, offset, [r for r in intents if r[0] >= offset]


def watermarks(consumer, tp: TopicPartition, give_up_s: float = 60.0) -> tuple[int, int]:
    """(low, high) offsets; retries while the partition has no leader yet (a topic just created)."""
    deadline = time.monotonic() + give_up_s
    while True:
        try:
            return consumer.get_watermark_offsets(tp, timeout=10)
        except KafkaException as exc:
            err = exc.args[0]
            if time.monotonic() > deadline or not (err.retriable() or err.code() in _NO_LEADER_YET):
                raise
            log.info("%s[%d] not ready (%s); retrying", tp.topic, tp.partition, err)
            time.sleep(0.5)


_NO_LEADER_YET = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                  KafkaError.UNKNOWN_TOPIC_OR_PART)


@dataclass
class PartitionRun:
    """A partition this member currently owns."""

    next_offset: int
    replay: list[tuple[int, int]]  # ranges to re-process exactly as recorded
    intents: list[tuple[int, int]] = field(default_factory=list)  # ranges since the last snapshot
    buffer: list = field(default_factory=list)
    snapshot_at: float = 0.0  # monotonic time of the last snapshot


@dataclass
class Progress:
    readings: int = 0
    anomalies: int = 0
    resent: int = 0
    dead_letters: int = 0
    chunks: int = 0


class KafkaProcessor:
    def __init__(self, cfg: KafkaConfig, store, max_chunk_messages: int = 1000, snapshot_every_s: float = 5.0,
                 session_timeout_ms: int = 10_000, rules=None, silence_every_s: float = 10.0):
        self.cfg = cfg
        self.processor = Processor(store, rules)
        self.silence_every_s = silence_every_s
        self.max_chunk_messages = max_chunk_messages
        self.snapshot_every_s = snapshot_every_s
        self.state_log = StateLog(cfg)
        self.side = Producer({"bootstrap.servers": cfg.bootstrap, "logger": RDKAFKA_LOG,
                              "enable.idempotence": True, "acks": "all",
                              "linger.ms": 20})
        self.consumer = Consumer({
            "bootstrap.servers": cfg.bootstrap, "logger": RDKAFKA_LOG, "group.id": cfg.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": session_timeout_ms, "heartbeat.interval.ms": max(500, session_timeout_ms // 5),
        })
        self.runs: dict[int, PartitionRun] = {}
        self.progress = Progress()
        self.stopping = threading.Event()

    # ---- group membership ------------------------------------------------------------------------

    def _on_assign(self, consumer, partitions) -> None:
        latest = self.state_log.load()
        for tp in partitions:
            state, offset, replay = self.state_log.restore(latest, tp.partition)
            if state is None:
                committed = consumer.committed([TopicPartition(self.cfg.topic, tp.partition)], timeout=30)[0].offset
                offset = committed if committed >= 0 else OFFSET_BEGINNING
                state = PartitionState()
                if committed >= 0:
                    log.warning("partition %d: no snapshot; resuming cold at committed offset %d", tp.partition, offset)
            self.processor.adopt(tp.partition, state)
            self.runs[tp.partition] = PartitionRun(offset, replay, intents=list(replay))
            tp.offset = offset
            log.info("partition %d assigned: from offset %s, %d chunk(s) to replay", tp.partition, offset, len(replay))
        consumer.incremental_assign(partitions)

    def _on_revoke(self, consumer, partitions) -> None:
        for tp in partitions:
            run = self.runs.pop(tp.partition, None)
            if run is not None and run.next_offset >= 0:
                self.state_log.save_snapshot(tp.partition, run.next_offset, self.processor.state(tp.partition))
            self.processor.partitions.pop(tp.partition, None)
        self.state_log.flush()  # the next owner must find the snapshot
        consumer.incremental_unassign(partitions)

    def _on_lost(self, consumer, partitions) -> None:
        # Another member may own them already: drop the state without writing anything.
        for tp in partitions:
            self.runs.pop(tp.partition, None)
            self.processor.partitions.pop(tp.partition, None)
        consumer.incremental_unassign(partitions)

    # ---- the loop ----------------------------------------------------------------------------------

    def run(self) -> None:
        """Consume until `stopping` is set; then snapshot, commit and leave the group."""
        self.consumer.subscribe([self.cfg.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        next_check = time.monotonic() + self.silence_every_s
        try:
            while not self.stopping.is_set():
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.silence_every_s
                    self._check_silence()
                for msg in self.consumer.consume(self.max_chunk_messages, timeout=0.2):
                    if msg.error():
                        if msg.error().fatal():
                            raise KafkaException(msg.error())
                        log.warning("consumer: %s", msg.error())
                        continue
                    run = self.runs.get(msg.partition())
                    if run is not None and msg.offset() >= max(run.next_offset, 0):
                        run.buffer.append(msg)
                for partition, run in list(self.runs.items()):
                    self._drain(partition, run)
                self.side.poll(0)
        finally:
            self._leave()

    def _drain(self, partition: int, run: PartitionRun) -> None:
        while run.buffer and not self.stopping.is_set():
            if run.replay:
                first, last = run.replay[0]
                if run.buffer[-1].offset() < last:
                    return  # the recorded range is not all here yet
                count = sum(1 for m in run.buffer if m.offset() <= last)
                run.replay.pop(0)
            else:
                count = min(len(run.buffer), self.max_chunk_messages)
                first, last = run.buffer[0].offset(), run.buffer[count - 1].offset()
                run.intents.append((first, last))
                self.state_log.save_intents(partition, run.intents)
                self.state_log.flush()  # the intent is durable before the insert it describes
            chunk, run.buffer = run.buffer[:count], run.buffer[count:]
            if not self._process(partition, chunk, f"{self.cfg.topic}:{partition}:{first}:{last}"):
                return
            run.next_offset = last + 1
            self.consumer.commit(offsets=[TopicPartition(self.cfg.topic, partition, last + 1)], asynchronous=True)
            if time.monotonic() - run.snapshot_at >= self.snapshot_every_s:
                self.state_log.save_snapshot(partition, run.next_offset, self.processor.state(partition))
                self.state_log.flush()
                run.intents, run.snapshot_at = [], time.monotonic()

    def _process(self, partition: int, chunk: list, token: str) -> bool:
        """Prepare once, insert until it succeeds; False when stopped before the insert landed."""
        prepared = self.processor.prepare([m.value() for m in chunk], partition)
        for index, reason in prepared.undecodable:
            msg = chunk[index]
            self._side_produce(self.cfg.deadletter_topic, msg.value(), msg.key(), headers=[
                ("reason", reason.encode()), ("source", f"{msg.topic()}/{msg.partition()}/{msg.offset()}".encode())])
            log.warning("dead letter %s/%d/%d: %s", msg.topic(), msg.partition(), msg.offset(), reason)
        attempt = 0
        while True:
            try:
                self.processor.write(prepared, token)
                break
            except StorageError as exc:
                delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
                attempt += 1
                log.warning("insert %s failed (retry %d in %.1fs): %s", token, attempt, delay, exc)
                if self.stopping.wait(delay):
                    return False
        self._publish_anomalies(prepared.anomalies)
        p = self.progress
        p.readings += prepared.readings.num_rows
        p.anomalies += prepared.anomalies.num_rows
        p.resent += prepared.resent
        p.dead_letters += len(prepared.undecodable)
        p.chunks += 1
        return True

    def _check_silence(self) -> None:
        table = self.processor.silence(time.time_ns() // 1_000_000)
        if table.num_rows:
            try:
                self.processor.store.insert_anomalies(table)
            except StorageError as exc:
                log.warning("silence check not stored: %s", exc)
                return
            self._publish_anomalies(table)

    def _publish_anomalies(self, table) -> None:
        for row in table.to_pylist():
            row["time_ms"] = int(row.pop("time").timestamp() * 1000)
            self._side_produce(self.cfg.anomalies_topic, json.dumps(row).encode(), row["device_id"].encode())

    def _side_produce(self, topic: str, value: bytes, key: bytes, headers=None) -> None:
        """Produce to a side topic; a full local queue waits for deliveries rather than failing the chunk."""
        while True:
            try:
                self.side.produce(topic, value, key, headers=headers)
                return
            except BufferError:
                self.side.poll(0.1)

    def _leave(self) -> None:
        try:
            for partition, run in self.runs.items():
                if run.next_offset >= 0:
                    self.state_log.save_snapshot(partition, run.next_offset, self.processor.state(partition))
            self.state_log.flush()
            self.runs.clear()  # saved: the revoke that close() triggers has nothing left to write
            self.side.flush(30)
        finally:
            self.consumer.close()  # leaves the group: the others take over now, not after a session timeout
