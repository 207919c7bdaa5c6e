"""One process running ingest, processor and query over a local queue and embedded ClickHouse."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from iotstream.clickhouse import Store, open_backend
from iotstream.clickhouse.store import StoreConfig
from iotstream.ingest import Counters, IngestService, Limits, add_to_server
from iotstream.processor import Processor, embedded
from iotstream.queue import LocalQueue
from iotstream.query_service import DEFAULT_SILENCE_MS, QueryService
from iotstream.v1 import ingest_pb2, query_pb2, query_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    ingest_pb2.DESCRIPTOR.services_by_name["Ingest"].full_name,
    query_pb2.DESCRIPTOR.services_by_name["Query"].full_name,
    health.SERVICE_NAME,
    reflection.SERVICE_NAME,
)
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
    data_dir: str = "./iotstream-data"
    database: str = "iotstream"
    queue_readings: int = 1_000_000
    limits: Limits = field(default_factory=Limits)
    store: StoreConfig = field(default_factory=StoreConfig)
    silence_ms: int = DEFAULT_SILENCE_MS
    shutdown_grace_s: float = 5.0


class EmbeddedServer:
    """`iotstream serve`: start() binds and returns the port; stop() drains and closes the store."""

    def __init__(self, config: Config):
        self.config = config
        self.store: Store | None = None
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._processor_task: asyncio.Task | None = None

    async def start(self) -> int:
        cfg = self.config
        self.store = Store(open_backend(data_dir=cfg.data_dir, database=cfg.database), cfg.store)
        applied = await asyncio.to_thread(self.store.migrate)
        if applied:
            log.info("schema migrations applied: %s", ", ".join(applied))
        self.queue = LocalQueue(cfg.queue_readings)
        self.counters = Counters()
        self.processor = Processor(self.store)
        self._processor_task = asyncio.create_task(embedded.run(self.queue, self.processor))

        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        add_to_server(IngestService(self.queue, cfg.limits, self.counters), self.server)
        query_pb2_grpc.add_QueryServicer_to_server(
            QueryService(self.store, self.live_stats, cfg.silence_ms), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(SERVICE_NAMES, self.server)
        self.port = self.server.add_insecure_port(f"{cfg.host}:{cfg.port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {cfg.host}:{cfg.port}")
        await self.server.start()
        for name in ("", *SERVICE_NAMES[:2]):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    def live_stats(self) -> dict:
        return {"readings_per_s": self.counters.rate_per_s(), "queue_readings": self.queue.depth,
                "rejected": dict(self.counters.rejected)}

    async def stop(self) -> None:
        """Stop taking calls, let streams collect the acks of what is stored, then close the store."""
        if self.server is None:
            return
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.shutdown_grace_s)
        # Anything still queued was never acked; storing it anyway saves the devices a resend.
        self.queue.close()
        await self._processor_task
        await asyncio.to_thread(self.store.backend.close)
        self.server = None
