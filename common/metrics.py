"""Prometheus metrics of one node (any roles), on its own registry and HTTP port (`--metrics-port`).

| metric | type | what |
|---|---|---|
| `iotstream_readings_accepted_total` | counter | readings accepted by ingest |
| `iotstream_rejected_total{reason}` | counter | refusals by reason: per-reading RejectReason names and
`RATE_LIMITED`/`WRONG_DEVICE` count readings, `*_CALLS` count calls, `THROTTLED_BATCHES` batches held back |
| `iotstream_throttled_seconds_total` | counter | time batches were held back by rate limits |
| `iotstream_queue_readings` | gauge | readings acked and not yet stored (local log), or not yet delivered
(Kafka producer) |
| `iotstream_stored_readings_total` | counter | readings inserted into ClickHouse by this node's processor |
| `iotstream_insert_seconds{table}` | histogram | ClickHouse insert latency |
| `iotstream_anomalies_total{kind}` | counter | anomalies stored, by detector kind |
| `iotstream_consumer_lag_messages{partition}` | gauge | Kafka messages not yet processed by the group
(process role) |
| `iotstream_dependency_up{dependency}` | gauge | 1 while Kafka / ClickHouse answers the health probe |
| `iotstream_webhook_deliveries_total{hook,result}` | counter | webhook tries: `delivered`, `failed` (a try
that failed), `dead` (dead-lettered) |
| `iotstream_webhook_pending{hook}` | gauge | webhook events waiting in the outbox |

The ingest figures are read from `ingest.Counters` at scrape time, so GetStats and the metrics never
disagree. Inserts are reported by the Store itself through its `on_insert` hook (`observe_insert`).
"""

from __future__ import annotations

import logging

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
        yield CounterMetricFamily(
            "iotstream_readings_accepted", "Readings accepted by ingest", value=c.accepted
        )
        rejected = CounterMetricFamily(
            "iotstream_rejected", "Refusals and throttles by reason", labels=["reason"]
        )
        for reason, n in sorted(c.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield CounterMetricFamily(
            "iotstream_throttled_seconds", "Time batches were held back by rate limits", value=c.throttled_s
        )
        yield GaugeMetricFamily(
            "iotstream_queue_readings",
            "Readings acked, not yet stored or delivered",
            value=self.queue_depth(),
        )


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.stored = Counter("iotstream_stored_readings", "Readings inserted into ClickHouse", registry=r)
        self.insert_seconds = Histogram(
            "iotstream_insert_seconds",
            "ClickHouse insert latency",
            ["table"],
            buckets=INSERT_BUCKETS,
            registry=r,
        )
        self.anomalies = Counter(
            "iotstream_anomalies", "Anomalies stored, by detector kind", ["kind"], registry=r
        )
        self.lag = Gauge(
            "iotstream_consumer_lag_messages", "Kafka messages not yet processed", ["partition"], registry=r
        )
        self.up = Gauge(
            "iotstream_dependency_up", "1 while the dependency answers", ["dependency"], registry=r
        )
        self.webhook_deliveries = Counter(
            "iotstream_webhook_deliveries", "Webhook tries by hook and result", ["hook", "result"], registry=r
        )
        self.webhook_pending = Gauge(
            "iotstream_webhook_pending", "Webhook events waiting in the outbox", ["hook"], registry=r
        )
        self._http = None
        self.consumer_lag = (
            0  # the group's messages not yet committed, all partitions (GetStats.consumer_lag)
        )

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

    def set_lag(self, lag: dict[int, int]) -> None:
        """Kafka messages the group has not committed, per partition (from bus.kafka.watch_lag)."""
        for partition, n in lag.items():
            self.lag.labels(str(partition)).set(n)
        self.consumer_lag = sum(lag.values())

    # ---- HTTP ---------------------------------------------------------------------------------------

    def serve(self, host: str, port: int, certfile: str | None = None, keyfile: str | None = None) -> int:
        """Serve /metrics; returns the port (0 picks a free one)."""
        self._http, _ = start_http_server(
            port, host, registry=self.registry, certfile=certfile, keyfile=keyfile
        )
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
