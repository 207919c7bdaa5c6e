"""One iotstream process: any of the roles ingest, process and query, over the local log or Kafka.

Embedded (the default) runs all three with the durable local log (iotstream.bus.local) and chDB. Distributed
runs each role in its own processes against Kafka and a ClickHouse server; `serve --kafka` runs all three
with Kafka between.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from iotstream import auth as authn
from iotstream.auth.device_config import ConfigHub
from iotstream.bus.kafka import KafkaConfig, KafkaQueue, ensure_topics, watch_lag
from iotstream.bus.local import MAX_BYTES, UNAVAILABLE_AFTER_S, LocalLog, open_log
from iotstream.clickhouse import Backend, Store, open_backend
from iotstream.clickhouse.device_config import DeviceConfigs
from iotstream.clickhouse.store import StoreConfig
from iotstream.common.metrics import Metrics
from iotstream.common.tls import ServerTLS
from iotstream.ext import load_rules
from iotstream.ingest import Counters, IngestService, Limits, add_to_server
from iotstream.processor.kafka_loop import KafkaSource
from iotstream.processor.loop import ChunkLoop, LocalSource
from iotstream.processor.state import IDLE_MS, MAX_KEYS
from iotstream.query.service import DEFAULT_SILENCE_MS, QueryLimits, QueryService
from iotstream.query.service import add_to_server as add_query_to_server
from iotstream.query.wakeup import EpisodeSignal
from iotstream.v1 import ingest_pb2, query_pb2

if TYPE_CHECKING:
    from iotstream.console.server import Console

log = logging.getLogger(__name__)

INGEST, PROCESS, QUERY = "ingest", "process", "query"
# Over Kafka a stop ends within shutdown_grace_s + STOP_ALLOWANCE_S, broker or not: waits on the broker
# give up FLUSH_ALLOWANCE_S after the grace; a processor still in a client's close (librdkafka's consumer
# close has no timeout) is left behind EXIT_ALLOWANCE_S before the bound, so the store closes and the
# process exits within it (docs/operations.md).
STOP_ALLOWANCE_S = 5.0
FLUSH_ALLOWANCE_S = 2.0
EXIT_ALLOWANCE_S = 1.5
ALL_ROLES = frozenset({INGEST, PROCESS, QUERY})
INGEST_SERVICE = ingest_pb2.DESCRIPTOR.services_by_name["Ingest"].full_name
QUERY_SERVICE = query_pb2.DESCRIPTOR.services_by_name["Query"].full_name
MAX_MESSAGE_BYTES = Limits().max_message_bytes
# Devices sit behind NATs that forget idle flows after ~30-60 s: let them ping every 20 s.
# `max_receive_message_length` is replaced from Config.limits.max_message_bytes (server_options()).
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_concurrent_streams", 1000),
    # A fleet reconnecting at once (10,000 streams) must queue, not be refused (bench/fleet.py).
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 40_000),
]


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 50051
    roles: frozenset[str] = ALL_ROLES
    data_dir: str = "./iotstream-data"  # embedded ClickHouse (chDB), when no clickhouse_url
    database: str = "iotstream"
    clickhouse_url: str | None = None
    kafka: KafkaConfig | None = None  # None: the durable local log (all roles in this process)
    log_max_bytes: int = MAX_BYTES  # local log size cap (README "Durability")
    unavailable_after_s: float = UNAVAILABLE_AFTER_S  # a full local log answers UNAVAILABLE after this
    limits: Limits = field(default_factory=Limits)
    query_limits: QueryLimits = field(default_factory=QueryLimits)
    store: StoreConfig = field(default_factory=StoreConfig)
    silence_ms: int = DEFAULT_SILENCE_MS
    shutdown_grace_s: float = 5.0
    max_chunk_messages: int = 1000
    snapshot_every_s: float = 5.0
    max_keys: int = MAX_KEYS  # (device, metric) keys with rolling state, per partition (processor/state.py)
    key_idle_ms: int = IDLE_MS  # a key without a reading this long is dropped, and comes back cold
    # Security and operations (README "Security and operations").
    auth: bool = False  # every Ingest/Query call needs a bearer token (iotstream.auth)
    tokens_file: str | None = None  # token registry as a file; None: the auth_tokens table in ClickHouse
    auth_refresh_s: float = authn.REFRESH_S
    tls: ServerTLS | None = None
    metrics_port: int | None = None  # Prometheus /metrics; None: off, 0: a free port
    metrics_host: str = "127.0.0.1"
    health_every_s: float = 2.0  # probe Kafka / ClickHouse this often; NOT_SERVING while one is away
    probe_timeout_s: float = 3.0
    rules_path: str | None = None  # detector rules (TOML); built-in defaults when None
    silence_check_s: float = 10.0  # how often the processor looks for keys that went silent
    # Operator side (query role): alert webhooks (iotstream.alerts.webhooks) and the console page
    # (iotstream.console.server).
    webhooks_path: str | None = None  # TOML file of [[webhook]] tables; None: no webhooks
    webhooks_state: str | None = (
        None  # the webhooks' outbox (SQLite); None: DATA_DIR/webhooks-DATABASE.sqlite
    )
    http_port: int | None = None  # console page and its JSON/SSE endpoints; None: off, 0: a free port
    http_host: str = "127.0.0.1"

    def check(self) -> None:
        if not self.roles or not self.roles <= ALL_ROLES:
            raise ValueError(
                f"roles must be a non-empty subset of {sorted(ALL_ROLES)}, not {sorted(self.roles)}"
            )
        if self.rules_path is not None:
            load_rules_file(self.rules_path)  # fail now, naming the file, table and key
        if self.webhooks_path is not None:
            from iotstream.alerts.webhooks import load_hooks

            load_hooks(self.webhooks_path)  # fail now, naming the file, hook and key
        if self.kafka is None and self.roles not in (ALL_ROLES, {QUERY}):
            raise ValueError(
                "without Kafka, ingest and process must run together with query "
                "(the local log is in-process): pass --kafka"
            )


def load_rules_file(path: str):
    if not os.path.isfile(path):
        raise ValueError(f"rules file {path!r} does not exist")
    return load_rules(path)


class MethodAwarePool:
    """The default descriptor pool, plus `pkg.Service.Method` symbols: upb's pool does not resolve those,
    and ghz and `grpcurl describe` ask reflection for them."""

    def __init__(self, pool):
        self._pool = pool

    def __getattr__(self, name):
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol):  # noqa: N802 (the DescriptorPool API)
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service, _, method = symbol.rpartition(".")
            try:
                found = self._pool.FindServiceByName(service)
            except KeyError:
                found = None
            if found is None or method not in found.methods_by_name:
                raise KeyError(symbol) from None
            return found.file


class Node:
    """start() brings the roles up and returns the gRPC port (0 when no role serves gRPC);
    stop() stops taking calls, stores what the local log holds, and closes the store."""

    def __init__(self, config: Config):
        config.check()
        self.config = config
        self.store: Store | None = None
        self.episodes_written: EpisodeSignal | None = None
        self.queue: LocalLog | KafkaQueue | None = None
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.counters = Counters()
        self.processor_loop: ChunkLoop | None = None
        self._tasks: list = []
        self._lag_watcher: threading.Thread | None = None
        self.ingest: IngestService | None = None
        self.auth: authn.Authenticator | None = None
        self.metrics = Metrics()
        self.metrics_port = 0
        self.healthy: dict[str, bool] = {}  # dependency -> answered the last probe
        self.failed = asyncio.Event()  # a role died; `failure` says why
        self.failure = ""
        self._auth_backend: Backend | None = None
        self.configs: ConfigHub | None = None  # device configuration push; needs ClickHouse
        self._config_backend: Backend | None = None
        self._background: list[asyncio.Task] = []
        self._kafka_admin: Any = None  # confluent_kafka AdminClient for the health probe
        self._lag_stop = threading.Event()
        self.console: Console | None = None  # with --http-port

    async def start(self) -> int:
        cfg = self.config
        roles = cfg.roles
        if PROCESS in roles or QUERY in roles:
            backend = open_backend(
                data_dir=cfg.data_dir, clickhouse_url=cfg.clickhouse_url, database=cfg.database
            )
            # With embedded ClickHouse and the processor in this process, every episode write is ours:
            # WatchAnomalies streams wait for it instead of polling.
            if PROCESS in roles and not cfg.clickhouse_url:
                self.episodes_written = EpisodeSignal()
            self.store = Store(
                backend,
                cfg.store,
                on_insert=self.metrics.observe_insert,
                on_episodes=self.episodes_written.notify if self.episodes_written is not None else None,
            )
            applied = await asyncio.to_thread(self.store.migrate)
            if applied:
                log.info("schema migrations applied: %s", ", ".join(applied))
        if cfg.kafka:
            await asyncio.to_thread(ensure_topics, cfg.kafka)
        loop = asyncio.get_running_loop()
        source: LocalSource | KafkaSource | None = None
        if cfg.kafka is None and INGEST in roles:
            local = self.queue = await asyncio.to_thread(
                open_log,
                cfg.data_dir,
                cfg.database,
                max_bytes=cfg.log_max_bytes,
                unavailable_after_s=cfg.unavailable_after_s,
                on_death=lambda why: loop.call_soon_threadsafe(self._fail, why),
            )
            source = LocalSource(local)
        elif cfg.kafka is not None:
            if INGEST in roles:
                self.queue = KafkaQueue(cfg.kafka)
            if PROCESS in roles:
                source = KafkaSource(cfg.kafka)
        if source is not None:
            self.processor_loop = ChunkLoop(
                source,
                self.store,
                cfg.max_chunk_messages,
                cfg.snapshot_every_s,
                rules=load_rules(cfg.rules_path),
                silence_every_s=cfg.silence_check_s,
                max_keys=cfg.max_keys,
                idle_ms=cfg.key_idle_ms,
            )
            thread = threading.Thread(target=self._run_processor, args=(loop,), name="processor", daemon=True)
            thread.start()
            self._tasks.append(thread)
        if cfg.kafka is not None and self.processor_loop is not None:
            self._lag_watcher = watch_lag(cfg.kafka, self.metrics.set_lag, self._lag_stop)
        if INGEST in roles:
            self.metrics.watch_ingest(
                self.counters, lambda: self.queue.depth if self.queue is not None else 0
            )
        if cfg.metrics_port is not None:
            tls = cfg.tls
            self.metrics_port = self.metrics.serve(
                cfg.metrics_host, cfg.metrics_port, tls.cert if tls else None, tls.key if tls else None
            )
            log.info(
                "metrics on http%s://%s:%d/metrics", "s" if tls else "", cfg.metrics_host, self.metrics_port
            )
        if cfg.auth and (INGEST in roles or QUERY in roles):
            await self._start_auth()
        if INGEST in roles or QUERY in roles:
            await self._start_configs()
            await self._start_grpc()
        if QUERY in roles:
            await self._start_operator()
        self._background.append(self._supervise(asyncio.create_task(self._watch_health(), name="health")))
        return self.port

    async def _start_operator(self) -> None:
        """Alert webhooks and the console page, when configured."""
        cfg = self.config
        if cfg.webhooks_path:
            from iotstream.alerts.webhooks import start_webhooks

            state = cfg.webhooks_state or os.path.join(cfg.data_dir, f"webhooks-{cfg.database}.sqlite")
            dispatcher = await start_webhooks(cfg.webhooks_path, state, self.store, self.metrics)
            self._background.append(self._supervise(asyncio.create_task(dispatcher.run(), name="webhooks")))
        if cfg.http_port is not None:
            from iotstream.console.server import start_console

            self.console = start_console(self)

    def _run_processor(self, loop) -> None:
        """The processor loop's thread. If it dies, the node says so: NOT_SERVING, and `failed` is set (the
        CLI exits non-zero so a supervisor restarts it; its state is safe in the state topic or the log)."""
        if self.processor_loop is None:
            return
        try:
            self.processor_loop.run()
        except Exception as exc:
            log.exception("the processor stopped on an error")
            loop.call_soon_threadsafe(self._fail, f"the processor stopped on an error: {exc}")

    def _supervise(self, task: asyncio.Task) -> asyncio.Task:
        """A background task that ends with an error fails the node (none of them ends by itself)."""

        def done(t: asyncio.Task) -> None:
            if not t.cancelled() and t.exception() is not None:
                log.error("background task %s died", t.get_name(), exc_info=t.exception())
                self._fail(f"background task {t.get_name()} died: {t.exception()}")

        task.add_done_callback(done)
        return task

    def _fail(self, why: str) -> None:
        """Stop taking data and say why: health NOT_SERVING for every service; the CLI exits non-zero."""
        if self.failed.is_set():
            return
        log.error("node failed: %s", why)
        self.failure = why
        self.failed.set()
        if self.ingest is not None:
            self.ingest.drain()
        asyncio.ensure_future(self._publish_health(self._probes()))

    async def _start_auth(self) -> None:
        cfg = self.config
        backend: Backend | None = None
        if not cfg.tokens_file:
            backend = self.store.backend if self.store is not None else None
            if backend is None:  # an ingest node: open the registry's database alone
                backend = self._auth_backend = await asyncio.to_thread(
                    open_backend,
                    data_dir=cfg.data_dir,
                    clickhouse_url=cfg.clickhouse_url,
                    database=cfg.database,
                )
        registry = await asyncio.to_thread(authn.open_registry, cfg.tokens_file, backend)
        self.auth = await asyncio.to_thread(
            authn.Authenticator,
            registry,
            cfg.auth_refresh_s,
            lambda code: self.counters.count(f"{code}_CALLS"),
        )
        if not self.auth._known:
            log.warning(
                "auth is on but the token registry is empty: every call will be refused "
                "(add tokens with `iotstream devices add` / `iotstream tokens add`)"
            )

        async def refresh_tokens():
            while True:
                await asyncio.sleep(cfg.auth_refresh_s)
                await asyncio.to_thread(self.auth.refresh)

        self._background.append(self._supervise(asyncio.create_task(refresh_tokens(), name="auth-refresh")))

    async def _start_configs(self) -> None:
        """Device configuration (iotstream.auth.device_config) lives in ClickHouse: on the node's store, or on
        an
        ingest node with a ClickHouse URL; an ingest node without one pushes no configuration."""
        cfg = self.config
        backend = self.store.backend if self.store is not None else None
        if backend is None and cfg.clickhouse_url:
            backend = self._config_backend = await asyncio.to_thread(
                open_backend, clickhouse_url=cfg.clickhouse_url, database=cfg.database
            )
        if backend is None:
            return
        self.configs = ConfigHub(DeviceConfigs(backend))  # its first refresh runs at once
        self._background.append(self._supervise(asyncio.create_task(self.configs.run(), name="configs")))

    async def _start_grpc(self) -> None:
        cfg = self.config
        interceptors = [authn.AuthInterceptor(self.auth)] if self.auth is not None else []
        self.server = grpc.aio.server(options=server_options(cfg), interceptors=interceptors)
        services = []
        if INGEST in cfg.roles:
            self.ingest = IngestService(self.queue, cfg.limits, self.counters, self.auth, self.configs)
            add_to_server(self.ingest, self.server)
            services.append(INGEST_SERVICE)
        if QUERY in cfg.roles:
            add_query_to_server(
                QueryService(
                    self.store,
                    self.live_stats,
                    cfg.silence_ms,
                    self.auth,
                    cfg.query_limits,
                    self.episodes_written,
                ),
                self.server,
            )
            services.append(QUERY_SERVICE)
        if self.auth is not None or self.configs is not None:
            services.append(authn.add_admin_to_server(self.auth, self.server, self.configs))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*services, health.SERVICE_NAME, reflection.SERVICE_NAME),
            self.server,
            pool=MethodAwarePool(descriptor_pool.Default()),
        )
        address = f"{cfg.host}:{cfg.port}"
        if cfg.tls is not None:
            self.port = self.server.add_secure_port(address, cfg.tls.credentials())
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        await self.server.start()
        self.services = services
        for name in ("", *services):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    # ---- health -----------------------------------------------------------------------------------

    def _probes(self) -> dict[str, tuple]:
        """dependency -> (probe, services that need it). The embedded engine and the local queue live in
        this process and need no probe."""
        cfg, probes = self.config, {}
        if cfg.kafka is not None:
            if self._kafka_admin is None:
                self._kafka_admin = cfg.kafka.admin()
            admin, timeout = self._kafka_admin, cfg.probe_timeout_s

            def kafka():
                admin.list_topics(cfg.kafka.topic, timeout=timeout)

            probes["kafka"] = (kafka, (INGEST_SERVICE,))
        if cfg.clickhouse_url and self.store is not None:
            backend = self.store.backend
            probes["clickhouse"] = (lambda: backend.query("SELECT 1"), (QUERY_SERVICE,))
        return probes

    async def _watch_health(self) -> None:
        probes = self._probes()
        if not probes:
            return
        while True:
            for name, (probe, _) in probes.items():
                try:
                    await asyncio.wait_for(asyncio.to_thread(probe), self.config.probe_timeout_s + 1)
                    ok = True
                except Exception as exc:
                    ok = False
                    if self.healthy.get(name, True):
                        log.warning(
                            "%s unreachable: reporting NOT_SERVING until it answers (%s)",
                            name,
                            exc,
                            extra={"dependency": name},
                        )
                if ok and not self.healthy.get(name, True):
                    log.info("%s answers again: SERVING", name, extra={"dependency": name})
                self.healthy[name] = ok
                self.metrics.up.labels(name).set(1 if ok else 0)
            await self._publish_health(probes)
            await asyncio.sleep(self.config.health_every_s)

    async def _publish_health(self, probes) -> None:
        if self.server is None:
            return
        serving, not_serving = (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        if self.failed.is_set():  # a role died: nothing here recovers by itself
            for service in ("", *self.services):
                await self.health.set(service, not_serving)
            return
        down = {name for name, ok in self.healthy.items() if not ok}
        await self.health.set("", not_serving if down else serving)
        for service in self.services:
            bad = any(service in needs for name, (_, needs) in probes.items() if name in down)
            await self.health.set(service, not_serving if bad else serving)

    def live_stats(self) -> dict:
        return {
            "readings_per_s": self.counters.rate_per_s(),
            "queue_readings": self.queue.depth if self.queue is not None else 0,
            "queue_lag_ms": self.queue.lag_ms() if isinstance(self.queue, LocalLog) else 0,
            "consumer_lag": self.metrics.consumer_lag,
            "rejected": {**self.counters.rejected, **self._key_limits()},
        }

    def _key_limits(self) -> dict:
        """Readings stored unscored because their partition was full of live keys (processor/state.py)."""
        proc = self.processor_loop.processor if self.processor_loop is not None else None
        unscored = sum(s.unscored for s in list(proc.partitions.values())) if proc is not None else 0
        return {"KEYS_OVER_LIMIT": unscored} if unscored else {}

    async def stop(self) -> None:
        """Drain in order: health says NOT_SERVING (load balancers move devices away); ingest stops reading
        (new calls get UNAVAILABLE, open streams get the acks of what they sent once it is durable, then
        UNAVAILABLE); the gRPC server waits up to `shutdown_grace_s` for those calls; then the local log
        takes its last appends and the processor stores what it holds (for up to `shutdown_grace_s` more;
        the rest waits in the log for the next start), or the Kafka producer is flushed; the processor
        snapshots, and the store closes.

        Over Kafka the processor stops at once, beside the drain, and the whole stop ends within
        `shutdown_grace_s` + STOP_ALLOWANCE_S even with the broker gone. What could not be delivered in
        time is logged, and the node counts as failed (the CLI exits non-zero); nothing acked is lost."""
        cfg = self.config
        started = time.monotonic()
        flush_by = started + cfg.shutdown_grace_s + FLUSH_ALLOWANCE_S
        stop_by = started + cfg.shutdown_grace_s + STOP_ALLOWANCE_S
        over_kafka = cfg.kafka is not None
        if over_kafka and self.processor_loop is not None:
            source = self.processor_loop.source
            if isinstance(source, KafkaSource):
                source.stop_by(flush_by)
            self.processor_loop.stopping.set()  # the group carries on; the state is flushed meanwhile
        if self.console is not None:
            await asyncio.to_thread(self.console.stop)
            self.console = None
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            if self.ingest is not None:
                self.ingest.drain()
            await self.server.stop(cfg.shutdown_grace_s)
            self.server = None
        if isinstance(self.queue, LocalLog):
            await asyncio.to_thread(self.queue.close)
        elif isinstance(self.queue, KafkaQueue):
            left = await asyncio.to_thread(self.queue.close, max(0.0, flush_by - time.monotonic()))
            if left:
                self._stop_failed(
                    f"{left} batches not delivered to Kafka at shutdown (never acked: their devices resend)"
                )
        self._lag_stop.set()
        if self._lag_watcher is not None:
            # Only an observer, and a daemon: its consumer's close can hang for as long as the broker is
            # away, so it gets a bounded wait and never holds the stop (or the process's exit) up.
            wait = min(cfg.probe_timeout_s, max(0.0, stop_by - time.monotonic()))
            await asyncio.to_thread(self._lag_watcher.join, wait)
            self._lag_watcher = None
        if self.processor_loop is not None:
            self.processor_loop.finishing.set()  # over the local log: store what it holds first
        for task in self._tasks:
            if over_kafka:
                leave_by = stop_by - EXIT_ALLOWANCE_S
                await asyncio.to_thread(task.join, max(0.0, leave_by - time.monotonic()))
                if task.is_alive():  # a daemon thread: it does not hold the process's exit
                    self._stop_failed(
                        f"the processor did not stop within {leave_by - started:.1f} s (broker away?): its "
                        "last state is not saved; the next owner resumes from the last snapshot"
                    )
                continue
            await asyncio.to_thread(task.join, cfg.shutdown_grace_s)
            if self.processor_loop is not None:
                self.processor_loop.stopping.set()
            await asyncio.to_thread(task.join)
        self._tasks = []
        if self.store is not None:
            await asyncio.to_thread(self.store.backend.close)
            self.store = None
        if self._auth_backend is not None:
            await asyncio.to_thread(self._auth_backend.close)
            self._auth_backend = None
        if self._config_backend is not None:
            await asyncio.to_thread(self._config_backend.close)
            self._config_backend = None
        await asyncio.to_thread(self.metrics.close)
        self._kafka_admin = None
        log.info("stopped in %.1f s", time.monotonic() - started)

    def _stop_failed(self, why: str) -> None:
        """Something the node held is not durable at the end of a stop: say what, and exit non-zero."""
        log.error("shutdown: %s", why)
        self.failure = f"{self.failure}; {why}" if self.failure else why
        self.failed.set()


def server_options(cfg: Config) -> list[tuple[str, int]]:
    """SERVER_OPTIONS with gRPC's receive cap at twice Limits.max_message_bytes: ingest refuses (and counts)
    messages over the limit itself; gRPC only stops the absurd ones."""
    size = 2 * cfg.limits.max_message_bytes
    return [(k, size if k == "grpc.max_receive_message_length" else v) for k, v in SERVER_OPTIONS]


EmbeddedServer = Node  # the all-roles default: `Node(Config())` is `iotstream serve`
