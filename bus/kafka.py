"""Kafka between ingest and processor: topic layout, and the ingest side's producer queue.

One Kafka message per accepted batch, keyed by device id, so one device's batches stay in order on one
partition. The producer is idempotent with acks=all; a batch's Ack waits for its delivery report.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from iotstream.bus.local import QueueUnavailable
from iotstream.common.logs import Repeats

log = logging.getLogger(__name__)
# librdkafka's own lines go through Python logging (and so JSON logs), not raw to stderr.
# A broker that is away makes every client repeat its connect failure many times a second: once per 10 s.
RDKAFKA_LOG = logging.getLogger("iotstream.rdkafka")
RDKAFKA_LOG.addFilter(Repeats(10.0))


@dataclass(frozen=True)
class KafkaConfig:
    """Topics are `<namespace>.readings`, `.state` (compacted: per partition, the processor's latest state
    snapshot and its chunk intents), `.deadletter` and `.anomalies`; the processors' consumer group is
    `group`, by default `<namespace>-processor`."""

    bootstrap: str
    namespace: str = "iotstream"
    partitions: int = 8
    group: str = ""
    # How long ingest waits for room in a full producer buffer before answering UNAVAILABLE.
    unavailable_after_s: float = 30.0
    # How long the producer keeps retrying a batch through a broker outage before giving up on it.
    delivery_timeout_ms: int = 120_000
    buffer_kbytes: int = 64 * 1024

    @property
    def topic(self) -> str:
        return f"{self.namespace}.readings"

    @property
    def state_topic(self) -> str:
        return f"{self.namespace}.state"

    @property
    def deadletter_topic(self) -> str:
        return f"{self.namespace}.deadletter"

    @property
    def anomalies_topic(self) -> str:
        return f"{self.namespace}.anomalies"

    @property
    def group_id(self) -> str:
        return self.group or f"{self.namespace}-processor"

    # The one place Kafka clients are made: every client gets the bootstrap servers and Python logging.
    def producer(self, **settings) -> Producer:
        return Producer(self._settings(settings))

    def consumer(self, **settings) -> Consumer:
        return Consumer(self._settings(settings))

    def admin(self) -> AdminClient:
        return AdminClient(self._settings({}))

    def _settings(self, settings: dict) -> dict:
        """Keys as keyword arguments (enable_idempotence) or dotted; callbacks (on_commit) keep their name."""
        return {
            "bootstrap.servers": self.bootstrap,
            "logger": RDKAFKA_LOG,
            **{
                key if key.startswith("on_") else key.replace("_", "."): value
                for key, value in settings.items()
            },
        }


# A partition snapshot holds every key's window (~2.4 KB a key at full capacity), so it goes in chunks of
# this size, well under the broker's default 1 MB message limit (processor.kafka_loop.StateLog).
STATE_CHUNK_BYTES = 256 * 1024


def ensure_topics(cfg: KafkaConfig, timeout: float = 30.0) -> None:
    """Create the topics that do not exist yet (an existing topic keeps its settings)."""
    admin = cfg.admin()
    wanted = [
        NewTopic(cfg.topic, cfg.partitions, 1),
        # Short segments so compaction keeps the state topic (read whole on every assignment) small.
        NewTopic(
            cfg.state_topic,
            1,
            1,
            config={"cleanup.policy": "compact", "segment.ms": "600000", "min.cleanable.dirty.ratio": "0.1"},
        ),
        NewTopic(cfg.deadletter_topic, 1, 1),
        NewTopic(cfg.anomalies_topic, cfg.partitions, 1),
    ]
    existing = admin.list_topics(timeout=timeout).topics
    missing = [t for t in wanted if t.topic not in existing]
    for future in admin.create_topics(missing, request_timeout=timeout).values() if missing else []:
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another node created it first
                raise


class KafkaQueue:
    """Same `put` as LocalQueue: returns a future resolved by the batch's delivery report.

    The producer's buffer is bounded; when it is full, `put` waits (and so the ingest handler stops
    reading its stream), and after `unavailable_after_s` raises QueueUnavailable.
    """

    def __init__(self, cfg: KafkaConfig):
        self.cfg = cfg
        self.depth = 0  # readings handed to the producer and not yet acknowledged by the broker
        self.producer = cfg.producer(
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            compression_type="lz4",
            queue_buffering_max_kbytes=cfg.buffer_kbytes,
            delivery_timeout_ms=cfg.delivery_timeout_ms,
        )
        self._running = True
        self._poller = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while self._running:
            self.producer.poll(0.05)  # runs the delivery callbacks

    async def put(self, payload: bytes, readings: int, key: str = "") -> asyncio.Future:
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def delivered(err, _msg):  # on the poller thread
            loop.call_soon_threadsafe(self._settle, done, err, readings)

        give_up = time.monotonic() + self.cfg.unavailable_after_s
        while True:
            try:
                self.producer.produce(self.cfg.topic, payload, key.encode(), on_delivery=delivered)
                break
            except BufferError:
                if time.monotonic() > give_up:
                    raise QueueUnavailable(
                        f"Kafka producer buffer full for {self.cfg.unavailable_after_s:.0f} s "
                        f"(broker {self.cfg.bootstrap} away or too slow); retry later"
                    ) from None
                await asyncio.sleep(0.01)
        self.depth += readings
        return done

    def _settle(self, done: asyncio.Future, err, readings: int) -> None:
        self.depth -= readings
        if done.done():
            return
        if err is None:
            done.set_result(None)
        else:
            done.set_exception(KafkaException(err))

    def close(self, timeout: float = 30.0) -> int:
        """Deliver what is buffered (up to `timeout`); returns how many messages are left undelivered."""
        left = self.producer.flush(timeout)
        self._running = False
        self._poller.join()
        return left


def watch_lag(cfg: KafkaConfig, report, stop: threading.Event, every_s: float = 2.0) -> threading.Thread:
    """Every `every_s`, report({partition: messages the group has not committed}) from the committed offsets
    against the high watermarks, until `stop` is set. Its own client: consumers are not shared by threads."""

    def poll() -> None:
        consumer = cfg.consumer(group_id=cfg.group_id, enable_auto_commit=False)
        try:
            while not stop.is_set():
                try:
                    topic = consumer.list_topics(cfg.topic, timeout=5).topics.get(cfg.topic)
                    parts = [TopicPartition(cfg.topic, p) for p in (topic.partitions if topic else {})]
                    lag = {}
                    for tp in consumer.committed(parts, timeout=5) if parts else []:
                        low, high = consumer.get_watermark_offsets(tp, timeout=5)
                        lag[tp.partition] = max(0, high - (tp.offset if tp.offset >= 0 else low))
                    report(lag)
                except KafkaException as exc:  # broker away: keep the last figures; health says the rest
                    log.debug("consumer lag not read: %s", exc)
                stop.wait(every_s)
        finally:
            consumer.close()

    thread = threading.Thread(target=poll, name="kafka-lag", daemon=True)
    thread.start()
    return thread
