"""Operations: the Prometheus endpoint, health going NOT_SERVING while Kafka is away, JSON logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import urllib.request

import grpc
import pytest
from conftest import ServerThread
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from security_fixtures import batch, database
from waiting import poll

from iotstream.bus.kafka import KafkaConfig
from iotstream.client.simulate import run_fleet
from iotstream.common import logs
from iotstream.node import INGEST, Config

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def scrape(port: int) -> dict[tuple, float]:
    """{(sample name, sorted labels...): value} from /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


@pytest.fixture
def metered(chdb_dir):
    srv = ServerThread(Config(port=0, data_dir=chdb_dir, database=database(), metrics_port=0))
    yield srv
    srv.stop()


def test_metrics_endpoint_counts_ingest_store_and_anomalies(metered):
    port = metered.server.metrics_port
    assert port
    bad = batch("dev-m", 4)
    bad.values[1] = math.nan
    assert metered.ingest.Send(bad, timeout=10).accepted == 3
    summary, _ = asyncio.run(run_fleet(metered.target, 4, 600, batch=100, anomalies=0.02, seed=3))
    assert summary["acked"] == 2400
    m = poll(
        lambda: (
            (s := scrape(port)).get(("iotstream_stored_readings_total",), 0) >= 2403
            and s.get(("iotstream_queue_readings",)) == 0
            and s
        ),
        what="stored readings in metrics",
    )
    assert m[("iotstream_readings_accepted_total",)] == 2403
    assert m[("iotstream_rejected_total", ("reason", "NON_FINITE_VALUE"))] == 1
    assert m[("iotstream_queue_readings",)] == 0
    assert m[("iotstream_insert_seconds_count", ("table", "readings"))] >= 1
    anomalies = {k[1][1]: v for k, v in m.items() if k[0] == "iotstream_anomalies_total"}
    assert sum(anomalies.values()) > 0 and "zscore" in anomalies  # the injected spikes


def test_health_is_not_serving_while_kafka_is_away(private_kafka_broker):
    kafka = KafkaConfig(bootstrap=private_kafka_broker.bootstrap, namespace="health", partitions=1)
    srv = ServerThread(
        Config(
            port=0,
            roles=frozenset({INGEST}),
            kafka=kafka,
            metrics_port=0,
            health_every_s=0.2,
            probe_timeout_s=1.0,
        )
    )
    health = health_pb2_grpc.HealthStub(srv.channel)

    def status(service=""):
        return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

    try:
        poll(lambda: status() == SERVING, what="SERVING with the broker up")
        assert srv.ingest.Send(batch("dev-h"), timeout=20).accepted == 3
        private_kafka_broker.pause()
        try:
            poll(lambda: status() == NOT_SERVING, timeout=15, what="NOT_SERVING while the broker is paused")
            assert status("iotstream.v1.Ingest") == NOT_SERVING
            assert scrape(srv.server.metrics_port)[("iotstream_dependency_up", ("dependency", "kafka"))] == 0
        finally:
            private_kafka_broker.resume()
        poll(lambda: status() == SERVING, timeout=30, what="SERVING again once the broker answers")
        assert srv.ingest.Send(batch("dev-h", seq=2), timeout=30).accepted == 3
    finally:
        srv.stop()


def test_json_logs_are_one_object_per_line():
    out = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup(logging.INFO, "json", stream=out)
        logging.getLogger("iotstream.test").warning(
            "kafka unreachable: %s", "timeout", extra={"dependency": "kafka"}
        )
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("iotstream.test").exception("failed")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert records[0]["msg"] == "kafka unreachable: timeout" and records[0]["dependency"] == "kafka"
    assert records[0]["level"] == "WARNING" and records[0]["logger"] == "iotstream.test" and records[0]["ts"]
    assert "ValueError: boom" in records[1]["exc"]


def test_unauthenticated_calls_show_in_metrics(chdb_dir):
    srv = ServerThread(Config(port=0, data_dir=chdb_dir, database=database(), metrics_port=0, auth=True))
    try:
        with pytest.raises(grpc.RpcError):
            srv.ingest.Send(batch("dev-x"), timeout=10)
        assert (
            scrape(srv.server.metrics_port)[("iotstream_rejected_total", ("reason", "UNAUTHENTICATED_CALLS"))]
            == 1
        )
    finally:
        srv.stop()


def test_consumer_lag_and_stored_readings_with_kafka(kafka_broker, chdb_dir):
    import uuid

    kafka = KafkaConfig(
        bootstrap=kafka_broker.bootstrap, namespace=f"lag-{uuid.uuid4().hex[:8]}", partitions=2
    )
    srv = ServerThread(
        Config(
            port=0, data_dir=chdb_dir, database=database(), kafka=kafka, metrics_port=0, snapshot_every_s=1.0
        )
    )
    try:
        summary, _ = asyncio.run(run_fleet(srv.target, 3, 300, batch=100, seed=5))
        assert summary["acked"] == 900
        port = srv.server.metrics_port

        def caught_up():
            m = scrape(port)
            lag = {k[1][1]: v for k, v in m.items() if k[0] == "iotstream_consumer_lag_messages"}
            return (
                set(lag) == {"0", "1"}
                and sum(lag.values()) == 0
                and m.get(("iotstream_stored_readings_total",), 0) == 900
                and m
            )

        m = poll(caught_up, timeout=30, what="lag 0 on both partitions and 900 readings stored")
        assert m[("iotstream_dependency_up", ("dependency", "kafka"))] == 1
    finally:
        srv.stop()


def test_health_follows_a_clickhouse_probe(chdb_dir, monkeypatch):
    """The ClickHouse probe only runs against a server (`--clickhouse`); here the probe is swapped for one the
    test controls, to check what an outage does to each service's status."""
    from iotstream.node import QUERY_SERVICE, Node

    up = {"ok": True}

    def probe():
        if not up["ok"]:
            raise ConnectionError("ClickHouse away")

    monkeypatch.setattr(Node, "_probes", lambda self: {"clickhouse": (probe, (QUERY_SERVICE,))})
    srv = ServerThread(Config(port=0, data_dir=chdb_dir, database=database(), health_every_s=0.05))
    health = health_pb2_grpc.HealthStub(srv.channel)

    def status(service=""):
        return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

    try:
        poll(lambda: status() == SERVING, what="SERVING")
        up["ok"] = False
        poll(lambda: status(QUERY_SERVICE) == NOT_SERVING, what="Query NOT_SERVING")
        assert status() == NOT_SERVING and status("iotstream.v1.Ingest") == SERVING
        up["ok"] = True
        poll(lambda: status() == SERVING and status(QUERY_SERVICE) == SERVING, what="SERVING again")
    finally:
        srv.stop()
