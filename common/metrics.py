"""Prometheus metrics of one node (any roles), on its own registry and HTTP port (`--metrics-port`).

| metric | type | what |
|---|---|---|
| `iotstream_readings_accepted_total` | counter | readings accepted by ingest |
| `iotstream_rejected_total{reason}` | counter | refusals by reason: per-reading RejectReason names and `RATE_LIMITED`/`WRONG_DEVICE` count readings, `*_CALLS` count calls, `THROTTLED_BATCHES` batches held back |
| `iotstream_throttled_seconds_total` | counter | time batches were held back by rate limits |
| `iotstream_queue_readings` | gauge | readings accepted and not yet durable (local queue or Kafka producer) |
| `iotstream_stored_readings_total` | counter | readings inserted into ClickHouse by this node's processor |
| `iotstream_insert_seconds{table}` | histogram | ClickHouse insert latency |
| `iotstream_anomalies_total{kind}` | counter | anomalies stored, by detector kind |
| `iotstream_consumer_lag_messages{partition}` | gauge | Kafka messages not yet processed by the group (process role) |
| `iotstream_dependency_up{dependency}` | gauge | 1 while Kafka / ClickHouse answers the health probe |

The ingest figures are read from `ingest.Counters` at scrape time, so GetStats and the metrics never
disagree. Inserts are measured by wrapping the Store's two insert methods (`instrument_store`), which
every processor path calls.
"""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger(__name__)

INSERT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _IngestCollector:
    def __init__(self, counters, queue_depth):
        self.counters = counters
        self.queue_depth = queue_depth

    def collect(self):
        c = self.counters
        yield CounterMetricFamily("iotstream_readings_accepted", "Readings accepted by ingest", value=c.accepted)
        rejected = CounterMetricFamily("iotstream_rejected", "Refusals and throttles by reason", labels=["reason"])
        for reason, n in sorted(c.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield CounterMetricFamily("iotstream_throttled_seconds", "Time batches were held back by rate limits",
                                  value=c.throttled_s)
        yield GaugeMetricFamily("iotstream_queue_readings", "Readings accepted, not yet durable",
                                value=self.queue_depth())


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.stored = Counter("iotstream_stored_readings", "Readings inserted into ClickHouse", registry=r)
        self.insert_seconds = Histogram("iotstream_insert_seconds", "ClickHouse insert latency", ["table"],
                                        buckets=INSERT_BUCKETS, registry=r)
        self.anomalies = Counter("iotstream_anomalies", "Anomalies stored, by detector kind", ["kind"], registry=r)
        self.lag = Gauge("iotstream_consumer_lag_messages", "Kafka messages not yet processed", ["partition"],
                         registry=r)
        self.up = Gauge("iotstream_dependency_up", "1 while the dependency answers", ["dependency"], registry=r)
        self._http = None
        self._lag_stop = threading.Event()
        self._lag_thread: threading.Thread | None = None

    def watch_ingest(self, counters, queue_depth) -> None:
        self.registry.register(_IngestCollector(counters, queue_depth))

    # ---- processor side ---------------------------------------------------------------------------

    def observe_insert(self, table: str, seconds: float, data) -> None:
        """One insert that succeeded: `data` is the Arrow table written."""
        self.insert_seconds.labels(table).observe(seconds)
        if table == "readings":
            self.stored.inc(data.num_rows)
        elif table == "anomalies" and data.num_rows:
            kinds = data.column("kind").value_counts().to_pylist()
            for entry in kinds:
                self.anomalies.labels(entry["values"]).inc(entry["counts"])

    def instrument_store(self, store) -> None:
        """Time every insert of `store` (readings and anomalies) and count what it wrote."""
        for table in ("readings", "anomalies"):
            inner = getattr(store, f"insert_{table}")

            def timed(data, *args, _inner=inner, _table=table, **kwargs):
                started = time.perf_counter()
                result = _inner(data, *args, **kwargs)
                self.observe_insert(_table, time.perf_counter() - started, data)
                return result

            setattr(store, f"insert_{table}", timed)

    def watch_lag(self, kafka_cfg, every_s: float = 2.0) -> None:
        """Poll the consumer group's committed offsets against the high watermarks (own client: the
        processor's consumer is not shared across threads)."""
        self._lag_thread = threading.Thread(target=self._poll_lag, args=(kafka_cfg, every_s), name="metrics-lag",
                                            daemon=True)
        self._lag_thread.start()

    def _poll_lag(self, cfg, every_s: float) -> None:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": cfg.bootstrap, "group.id": cfg.group_id,
                             "enable.auto.commit": False, "logger": logging.getLogger("iotstream.rdkafka")})
        try:
            while not self._lag_stop.is_set():
                try:
                    topic = consumer.list_topics(cfg.topic, timeout=5).topics.get(cfg.topic)
                    parts = [TopicPartition(cfg.topic, p) for p in (topic.partitions if topic else {})]
                    for tp in consumer.committed(parts, timeout=5) if parts else []:
                        low, high = consumer.get_watermark_offsets(tp, timeout=5)
                        done = tp.offset if tp.offset >= 0 else low
                        self.lag.labels(str(tp.partition)).set(max(0, high - done))
                except Exception as exc:  # broker away: keep the last figures; health says the rest
                    log.debug("consumer lag not read: %s", exc)
                self._lag_stop.wait(every_s)
        finally:
            consumer.close()

    # ---- HTTP ---------------------------------------------------------------------------------------

    def serve(self, host: str, port: int, certfile: str | None = None, keyfile: str | None = None) -> int:
        """Serve /metrics; returns the port (0 picks a free one)."""
        self._http, _ = start_http_server(port, host, registry=self.registry, certfile=certfile, keyfile=keyfile)
        return self._http.server_port

    def close(self) -> None:
        self._lag_stop.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._lag_thread is not None:
            self._lag_thread.join(10)
