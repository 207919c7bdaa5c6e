"""pytest plugin: a real local Kafka broker for tests (see bench/kafka_local.py).

Load it from tests/conftest.py with `pytest_plugins = ["kafka_fixture"]` (tests/ is on sys.path there), or on
the command line: `PYTHONPATH=tests pytest -p kafka_fixture ...`.

Fixtures:
  kafka_broker          session: `.bootstrap`. Uses $IOTSTREAM_KAFKA if set (broker started outside pytest,
                        e.g. `export IOTSTREAM_KAFKA=$(bench/kafka-local start)`), else starts one for the
                        session.
  kafka_topic           a fresh topic name on kafka_broker (created with 4 partitions, deleted afterwards).
  private_kafka_broker  a broker of the test's own, always started here: for tests that stop, kill, pause or
                        restart it (`.restart(down=10)`, `.kill()`, `.pause()`), which a shared or external
                        broker must not suffer.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import uuid
from pathlib import Path

import pytest

_KAFKA_LOCAL = Path(__file__).resolve().parents[1] / "bench" / "kafka_local.py"


def load_kafka_local():
    """Import bench/kafka_local.py (bench/ is not a package)."""
    if "kafka_local" not in sys.modules:
        spec = importlib.util.spec_from_file_location("kafka_local", _KAFKA_LOCAL)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["kafka_local"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["kafka_local"]


class ExternalBroker:
    """A broker this test session did not start: only its address is known."""

    def __init__(self, bootstrap: str):
        self.bootstrap = bootstrap

    def __repr__(self) -> str:
        return f"ExternalBroker({self.bootstrap!r})"


@pytest.fixture(scope="session")
def kafka_broker():
    external = os.environ.get("IOTSTREAM_KAFKA")
    if external:
        yield ExternalBroker(external)
        return
    broker = load_kafka_local().start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def private_kafka_broker():
    broker = load_kafka_local().start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka_topic(kafka_broker, request):
    from confluent_kafka.admin import AdminClient, NewTopic

    # created up front: a consumer subscribing to a not-yet-auto-created topic gets UNKNOWN_TOPIC errors
    name = f"test-{re.sub(r'[^A-Za-z0-9._-]', '_', request.node.name)[:80]}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=4, replication_factor=1)])[name].result(30)
    yield name
    try:
        admin.delete_topics([name])[name].result(30)
    except Exception:
        pass  # best effort: matters only on a long-lived external broker
