"""The embedded durable log between ingest and processor: acks follow the fsync that covers them, a full log
pushes back and then answers UNAVAILABLE, and storage faults are retried or reported, never lost."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
import uuid

import grpc
import numpy as np
import pytest
from conftest import ServerThread
from grpc_health.v1 import health_pb2, health_pb2_grpc
from waiting import poll

from iotstream.bus import local
from iotstream.clickhouse import StorageError
from iotstream.client.simulate import batches, device_signal
from iotstream.node import Config
from iotstream.v1 import ingest_pb2 as pb
from iotstream.v1 import ingest_pb2_grpc


def node(chdb_dir: str, **kw) -> ServerThread:
    return ServerThread(Config(port=0, data_dir=chdb_dir, database="l_" + uuid.uuid4().hex[:10], **kw))


def fleet(devices: int, readings: int, batch: int, seed: int) -> list[list[pb.ReadingBatch]]:
    rng = np.random.default_rng(seed)
    end_ms = int(time.time() * 1000)
    return [
        batches(device_signal(f"dev-{i:03d}", readings, end_ms, 1000, 0.0, rng), batch)
        for i in range(devices)
    ]


def stored(srv: ServerThread) -> tuple[int, int]:
    row = srv.sql("SELECT count() AS n, uniqExact(device_id, metric, time) AS u FROM $db.readings")[0]
    return row["n"], row["u"]


def log_offsets(srv: ServerThread) -> dict[tuple[str, int], int]:
    """(device, seq) -> log offset of every row still in the log file (an independent reader)."""
    with sqlite3.connect(srv.server.queue.path) as db:
        rows = db.execute("SELECT offset, payload FROM log").fetchall()
    found = {}
    for offset, payload in rows:
        b = pb.ReadingBatch.FromString(payload)
        found.setdefault((b.device_id, b.seq), offset)
    return found


def health(srv: ServerThread) -> int:
    return health_pb2_grpc.HealthStub(srv.channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status


class Gate:
    """A backend wrapper that holds every insert until opened (the processor stalls; ingest does not)."""

    def __init__(self, backend):
        self.backend, self.open = backend, threading.Event()

    def insert(self, *args, **kw):
        self.open.wait()
        return self.backend.insert(*args, **kw)

    def __getattr__(self, name):
        return getattr(self.backend, name)


class Faulty:
    """A backend wrapper whose inserts raise `error` the next `times` calls, then pass through."""

    def __init__(self, backend, error: StorageError, times: int):
        self.backend, self.error, self.times, self.raised = backend, error, times, 0

    def insert(self, *args, **kw):
        if self.raised < self.times:
            self.raised += 1
            raise self.error
        return self.backend.insert(*args, **kw)

    def __getattr__(self, name):
        return getattr(self.backend, name)


def test_acks_never_precede_the_fsync_that_covers_them(chdb_dir):
    srv = node(chdb_dir)
    gate = srv.server.store.backend = Gate(
        srv.server.store.backend
    )  # nothing stored, so nothing truncated yet
    commits = []  # the last durable offset after each commit (the writer's fsync is done by then)
    srv.server.queue.on_commit = commits.append
    acks = []  # (device, seq, last durable offset seen when the ack arrived)

    async def send(stub, device_batches):
        for b in device_batches:
            ack = await stub.Send(b, timeout=30)
            acks.append((b.device_id, ack.seq, commits[-1] if commits else 0))

    async def main():
        async with grpc.aio.insecure_channel(srv.target) as ch:
            stub = ingest_pb2_grpc.IngestStub(ch)
            await asyncio.gather(*(send(stub, d) for d in fleet(40, 200, 10, seed=1)))

    try:
        asyncio.run(main())
        offsets = log_offsets(srv)  # read before the gate opens: every row is still there
        assert len(acks) == len(offsets) == 40 * 20
        assert all(offsets[(dev, seq)] <= durable for dev, seq, durable in acks)
        assert len(commits) < len(acks)  # group commit: several batches shared an fsync
        gate.open.set()
        srv.settle()
        assert stored(srv) == (40 * 200, 40 * 200)
    finally:
        gate.open.set()
        srv.stop()


def test_full_log_pushes_back_then_unavailable_and_loses_nothing(chdb_dir):
    srv = node(chdb_dir, log_max_bytes=20_000, unavailable_after_s=1.0)
    gate = srv.server.store.backend = Gate(srv.server.store.backend)
    data = fleet(1, 5000, 100, seed=2)[0]
    acked = 0
    try:
        with pytest.raises(grpc.RpcError) as refused:
            for b in data:
                srv.ingest.Send(b, timeout=30)
                acked += 1
        assert (
            refused.value.code() == grpc.StatusCode.UNAVAILABLE
            and "local log full" in refused.value.details()
        )
        assert 0 < acked < len(data)
        assert srv.server.counters.rejected["QUEUE_UNAVAILABLE_CALLS"] == 1
        gate.open.set()
        srv.settle()
        assert stored(srv) == (acked * 100, acked * 100)  # every acked reading, once
        assert srv.ingest.Send(data[acked], timeout=30).accepted == 100  # room again
    finally:
        gate.open.set()
        srv.stop()


def test_transient_storage_errors_are_retried_and_store_once(chdb_dir):
    srv = node(chdb_dir)
    srv.server.store.backend = Faulty(
        srv.server.store.backend,
        StorageError("Code: 252. DB::Exception: Too many parts (TOO_MANY_PARTS)"),
        times=3,
    )
    try:
        for b in fleet(3, 300, 50, seed=3)[0] + fleet(3, 300, 50, seed=3)[1]:
            assert srv.ingest.Send(b, timeout=30).accepted == 50
        srv.settle()
        assert srv.server.store.backend.raised == 3
        assert stored(srv) == (600, 600)
        assert not srv.server.failed.is_set() and health(srv) == health_pb2.HealthCheckResponse.SERVING
    finally:
        srv.stop()


def test_dropped_table_turns_health_not_serving_and_keeps_the_log(chdb_dir):
    srv = node(chdb_dir)
    data = fleet(1, 300, 50, seed=4)[0]
    try:
        assert srv.ingest.Send(data[0], timeout=30).accepted == 50
        srv.settle()
        store = srv.server.store
        store.backend.command(store._sql("DROP TABLE $db.readings"))  # permanent: an operator has to act
        assert srv.ingest.Send(data[1], timeout=30).accepted == 50  # acked: durable in the log
        poll(srv.server.failed.is_set, 30, "the node to fail")
        assert "UNKNOWN_TABLE" in srv.server.failure
        poll(lambda: health(srv) == health_pb2.HealthCheckResponse.NOT_SERVING, 30, "NOT_SERVING")
        with pytest.raises(grpc.RpcError) as refused:  # it stops taking data
            srv.ingest.Send(data[2], timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (data[1].device_id, data[1].seq) in log_offsets(srv)  # the acked batch waits in the log
    finally:
        srv.stop()  # what SIGTERM runs: it returns although storage is broken


def test_stop_ends_a_storage_retry_and_the_next_start_stores_the_batch(chdb_dir):
    """SIGTERM during a storage outage: stop returns (the retry wait is interrupted); the acked batch stays in
    the log, and the next start on the same data stores it once."""
    database = "l_" + uuid.uuid4().hex[:10]
    srv = ServerThread(Config(port=0, data_dir=chdb_dir, database=database))
    faulty = srv.server.store.backend = Faulty(
        srv.server.store.backend,
        StorageError(
            "Code: 209. DB::NetException: Timeout exceeded while reading from socket (SOCKET_TIMEOUT)"
        ),
        times=10**6,
    )
    data = fleet(1, 100, 100, seed=5)[0]
    try:
        assert srv.ingest.Send(data[0], timeout=30).accepted == 100
        poll(lambda: faulty.raised >= 2, 30, "the insert to be retried")
    finally:
        srv.stop()
    assert not srv.server.failed.is_set()  # a stop, not a failure

    again = ServerThread(Config(port=0, data_dir=chdb_dir, database=database))
    try:
        assert stored(again) == (100, 100)
    finally:
        again.stop()


def test_appends_and_the_processors_writes_never_meet_inside_sqlite(tmp_path, monkeypatch):
    """With SQLite's busy wait off, an append that met a processor write inside SQLite would fail at once
    ("database is locked"); they take turns on the log's own lock instead, so no append and no intent or
    snapshot fails (and under load none sleeps in SQLite's busy handler)."""
    connect = local._connect

    def no_busy_wait(path):
        db = connect(path)
        db.execute("PRAGMA busy_timeout = 0")
        return db

    monkeypatch.setattr(local, "_connect", no_busy_wait)
    # unavailable_after_s=0: a commit that meets a lock fails its group at once
    log = local.LocalLog(str(tmp_path / "log.sqlite"), unavailable_after_s=0)
    stop, failures, writes = threading.Event(), [], [0]

    def processor():
        while not stop.is_set():
            writes[0] += 1
            try:
                log.save_intents(0, json.dumps([[writes[0], writes[0]]]).encode())
                if writes[0] % 10 == 0:
                    log.save_snapshot(0, log.durable_offset // 2 + 1, b"s" * 100_000)
            except sqlite3.OperationalError as exc:
                failures.append(exc)

    async def appends():
        for _ in range(20):
            done = [await log.put(b"p" * 2000, 1) for _ in range(8)]
            await asyncio.gather(*done)  # raises QueueUnavailable if a commit failed

    thread = threading.Thread(target=processor)
    thread.start()
    try:
        asyncio.run(appends())
    finally:
        stop.set()
        thread.join()
        log.close()
    assert failures == [] and writes[0] > 10
