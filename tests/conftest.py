"""Shared fixtures: an embedded server on a loopback port, running its own event loop in a thread."""

from __future__ import annotations

import asyncio
import threading
import uuid

import grpc
import pytest
from waiting import poll

from iotstream.bus.local import LocalLog
from iotstream.node import Config, Node
from iotstream.v1 import ingest_pb2_grpc, query_pb2_grpc

pytest_plugins = ["kafka_fixture"]


class ServerThread:
    """A Node with every role on port 0; `call` runs a coroutine on its loop from the test's thread."""

    def __init__(self, config: Config):
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = Node(config)
        self.port = self.call(self.server.start())
        self.target = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.target) if self.port else None
        self.ingest = ingest_pb2_grpc.IngestStub(self.channel) if self.port else None
        self.raw_query = query_pb2_grpc.QueryStub(self.channel) if self.port else None
        self.query = Settled(self.raw_query, self.settle) if self.port else None

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def settle(self, timeout: float = 60) -> None:
        """Wait until the processor has stored every acked batch (an Ack means durable in the log, not
        stored)."""
        log = self.server.queue
        poll(
            lambda: not (isinstance(log, LocalLog) and log.depth) or self.server.failed.is_set(),
            timeout,
            "every acked reading stored",
            every=0.02,
        )

    def sql(self, text: str, params: dict | None = None) -> list[dict]:
        """Rows of a query on this server's store, once what was acked is stored; `$db` names its database."""
        self.settle()
        store = self.server.store
        return store.backend.query(store._sql(text), params).to_pylist()

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Settled:
    """A Query stub whose calls first wait until every acked reading is stored, as tests that send and
    then read expect (acks no longer wait for ClickHouse). `raw_query` reads without waiting."""

    def __init__(self, stub, settle):
        self._stub, self._settle = stub, settle

    def __getattr__(self, name):
        method = getattr(self._stub, name)

        def call(*args, **kw):
            self._settle()
            return method(*args, **kw)

        return call


def wait_stored(query_stub, timeout: float = 60) -> None:
    """Poll GetStats until no acked reading waits in the queue/log (the processor caught up)."""
    from iotstream.v1 import query_pb2 as qpb

    poll(
        lambda: not query_stub.GetStats(qpb.GetStatsRequest(), timeout=30).queue_readings,
        timeout,
        "every acked reading stored",
    )


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory) -> str:
    # chDB fixes one data path per process, so every in-process server shares it, each with its own database.
    return str(tmp_path_factory.mktemp("chdb"))


@pytest.fixture
def server(chdb_dir):
    srv = ServerThread(Config(port=0, data_dir=chdb_dir, database="t_" + uuid.uuid4().hex[:12]))
    yield srv
    srv.stop()
