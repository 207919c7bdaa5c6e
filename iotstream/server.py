"""One iotstream process: any of the roles ingest, process and query, over a local queue or Kafka.

Embedded (the default) runs all three with the in-process queue and chDB. Distributed runs each role in
its own processes against Kafka and a ClickHouse server; `serve --kafka` runs all three with Kafka between.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from iotstream.clickhouse import Store, open_backend
from iotstream.clickhouse.store import StoreConfig
from iotstream.ext import load_rules
from iotstream.ingest import Counters, IngestService, Limits, add_to_server
from iotstream.kafka import KafkaConfig, KafkaQueue, ensure_topics
from iotstream.processor import Processor, embedded
from iotstream.processor.kafka_loop import KafkaProcessor
from iotstream.queue import LocalQueue
from iotstream.query_service import DEFAULT_SILENCE_MS, QueryService
from iotstream.v1 import ingest_pb2, query_pb2, query_pb2_grpc

log = logging.getLogger(__name__)

INGEST, PROCESS, QUERY = "ingest", "process", "query"
ALL_ROLES = frozenset({INGEST, PROCESS, QUERY})
INGEST_SERVICE = ingest_pb2.DESCRIPTOR.services_by_name["Ingest"].full_name
QUERY_SERVICE = query_pb2.DESCRIPTOR.services_by_name["Query"].full_name
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# Devices sit behind NATs that forget idle flows after ~30-60 s: let them ping every 20 s.
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_concurrent_streams", 1000),
]


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 50051
    roles: frozenset[str] = ALL_ROLES
    data_dir: str = "./iotstream-data"  # embedded ClickHouse (chDB), when no clickhouse_url
    database: str = "iotstream"
    clickhouse_url: str | None = None
    kafka: KafkaConfig | None = None  # None: the in-process queue (all roles in this process)
    queue_readings: int = 1_000_000
    limits: Limits = field(default_factory=Limits)
    store: StoreConfig = field(default_factory=StoreConfig)
    silence_ms: int = DEFAULT_SILENCE_MS
    shutdown_grace_s: float = 5.0
    max_chunk_messages: int = 1000
    snapshot_every_s: float = 5.0
    rules_path: str | None = None  # detector rules (TOML); built-in defaults when None
    silence_check_s: float = 10.0  # how often the processor looks for keys that went silent

    def check(self) -> None:
        if not self.roles or not self.roles <= ALL_ROLES:
            raise ValueError(f"roles must be a non-empty subset of {sorted(ALL_ROLES)}, not {sorted(self.roles)}")
        if self.rules_path is not None:
            load_rules_file(self.rules_path)  # fail now, naming the file, table and key
        if self.kafka is None and self.roles not in (ALL_ROLES, {QUERY}):
            raise ValueError("without Kafka, ingest and process must run together with query "
                             "(the queue is in-process): pass --kafka")


def load_rules_file(path: str):
    if not os.path.isfile(path):
        raise ValueError(f"rules file {path!r} does not exist")
    return load_rules(path)


class Node:
    """start() brings the roles up and returns the gRPC port (0 when no role serves gRPC);
    stop() stops taking calls, drains what is queued, and closes the store."""

    def __init__(self, config: Config):
        config.check()
        self.config = config
        self.store: Store | None = None
        self.queue = None
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.counters = Counters()
        self.kafka_processor: KafkaProcessor | None = None
        self._tasks: list = []

    async def start(self) -> int:
        cfg = self.config
        roles = cfg.roles
        if PROCESS in roles or QUERY in roles:
            backend = open_backend(data_dir=cfg.data_dir, clickhouse_url=cfg.clickhouse_url, database=cfg.database)
            self.store = Store(backend, cfg.store)
            applied = await asyncio.to_thread(self.store.migrate)
            if applied:
                log.info("schema migrations applied: %s", ", ".join(applied))
        if cfg.kafka:
            await asyncio.to_thread(ensure_topics, cfg.kafka)
        if cfg.kafka is None and INGEST in roles:
            self.queue = LocalQueue(cfg.queue_readings)
            processor = Processor(self.store, load_rules(cfg.rules_path))
            self._tasks.append(asyncio.create_task(embedded.run(self.queue, processor, cfg.silence_check_s)))
        elif cfg.kafka is not None:
            if INGEST in roles:
                self.queue = KafkaQueue(cfg.kafka)
            if PROCESS in roles:
                self.kafka_processor = KafkaProcessor(cfg.kafka, self.store, cfg.max_chunk_messages,
                                                      cfg.snapshot_every_s, rules=load_rules(cfg.rules_path),
                                                      silence_every_s=cfg.silence_check_s)
                thread = threading.Thread(target=self.kafka_processor.run, name="kafka-processor", daemon=True)
                thread.start()
                self._tasks.append(thread)
        if INGEST in roles or QUERY in roles:
            await self._start_grpc()
        return self.port

    async def _start_grpc(self) -> None:
        cfg = self.config
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        services = []
        if INGEST in cfg.roles:
            add_to_server(IngestService(self.queue, cfg.limits, self.counters), self.server)
            services.append(INGEST_SERVICE)
        if QUERY in cfg.roles:
            query_pb2_grpc.add_QueryServicer_to_server(
                QueryService(self.store, self.live_stats, cfg.silence_ms), self.server)
            services.append(QUERY_SERVICE)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.port = self.server.add_insecure_port(f"{cfg.host}:{cfg.port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {cfg.host}:{cfg.port}")
        await self.server.start()
        for name in ("", *services):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def live_stats(self) -> dict:
        return {"readings_per_s": self.counters.rate_per_s(),
                "queue_readings": self.queue.depth if self.queue is not None else 0,
                "rejected": dict(self.counters.rejected)}

    async def stop(self) -> None:
        """Stop taking calls and let streams collect the acks of what is durable; then drain the queue
        (anything still queued was never acked, but storing it saves the devices a resend)."""
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(self.config.shutdown_grace_s)
            self.server = None
        if isinstance(self.queue, LocalQueue):
            self.queue.close()
        elif isinstance(self.queue, KafkaQueue):
            left = await asyncio.to_thread(self.queue.close)
            if left:
                log.warning("%d batches not delivered to Kafka at shutdown (never acked)", left)
        if self.kafka_processor is not None:
            self.kafka_processor.stopping.set()
        for task in self._tasks:
            await (asyncio.to_thread(task.join) if isinstance(task, threading.Thread) else task)
        self._tasks = []
        if self.store is not None:
            await asyncio.to_thread(self.store.backend.close)
            self.store = None


EmbeddedServer = Node  # the all-roles default: `Node(Config())` is `iotstream serve`
