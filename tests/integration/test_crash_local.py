"""kill -9 of an embedded `serve` mid-stream: after a restart and the devices' resend of what was not acked,
every reading is stored exactly once and the anomaly episodes equal those of an uninterrupted run."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import numpy as np
from conftest import wait_stored
from test_restart import start_serve, stop_serve

from iotstream.client.simulate import batches, device_signal
from iotstream.v1 import ingest_pb2_grpc, query_pb2_grpc
from iotstream.v1 import query_pb2 as qpb

DEVICES, READINGS, BATCH = 20, 1000, 50


def fleet_batches() -> list:
    rng = np.random.default_rng(11)
    end_ms = int(time.time() * 1000)
    return [
        batches(device_signal(f"dev-{i:03d}", READINGS, end_ms, 1000, 0.01, rng), BATCH)
        for i in range(DEVICES)
    ]


def send(target: str, fleet: list, acked: dict, on_ack=None) -> None:
    """Each device sends its batches in order from its first unacked one; a failed call ends that device's
    run (the server went away), leaving `acked[device]` at the last acked seq."""

    async def device(stub, device_batches):
        for b in device_batches:
            if b.seq <= acked.get(b.device_id, 0):
                continue
            try:
                await stub.Send(b, timeout=30)
            except grpc.aio.AioRpcError:
                return
            acked[b.device_id] = b.seq
            if on_ack is not None:
                on_ack()

    async def main():
        async with grpc.aio.insecure_channel(target) as ch:
            stub = ingest_pb2_grpc.IngestStub(ch)
            await asyncio.gather(*(device(stub, d) for d in fleet))

    asyncio.run(main())


def outcome(target: str) -> tuple:
    """(readings stored, distinct readings, anomaly episodes) once everything acked is stored."""
    with grpc.insecure_channel(target) as ch:
        stub = query_pb2_grpc.QueryStub(ch)
        wait_stored(stub)
        stats = stub.GetStats(qpb.GetStatsRequest(), timeout=30)
        distinct = set()
        for d in range(DEVICES):
            page = stub.GetHistory(
                qpb.GetHistoryRequest(
                    device_id=f"dev-{d:03d}", start_ms=0, end_ms=4_102_444_800_000, page_size=100_000
                ),
                timeout=30,
            )
            distinct |= {(f"dev-{d:03d}", s.metric, t) for s in page.series for t in s.time_ms}
        found, token = set(), ""
        while True:
            page = stub.ListAnomalies(qpb.ListAnomaliesRequest(page_size=1000, page_token=token), timeout=30)
            found |= {(a.device_id, a.metric, a.time_ms, a.kind, a.score, a.readings) for a in page.anomalies}
            if not (token := page.next_page_token):
                return stats.readings, len(distinct), found


def test_kill_9_mid_stream_then_resend_matches_an_uninterrupted_run(tmp_path):
    fleet = fleet_batches()
    total = DEVICES * READINGS

    proc, target = start_serve(tmp_path / "reference")
    try:
        acked: dict = {}
        send(target, fleet, acked)
        assert sum(acked.values()) * BATCH == total
        expected = outcome(target)
    finally:
        stop_serve(proc)
    assert expected[:2] == (total, total) and expected[2]

    proc, target = start_serve(tmp_path / "crash")
    acked = {}
    count = [0]
    midway = threading.Event()

    def on_ack():
        count[0] += 1
        if count[0] == len(fleet) * len(fleet[0]) // 3:
            midway.set()

    sender = threading.Thread(target=send, args=(target, fleet, acked, on_ack))
    try:
        sender.start()
        assert midway.wait(120)
        proc.kill()  # SIGKILL: no drain, no snapshot, no goodbye
        assert proc.wait(30) == -9
        sender.join(60)
        assert not sender.is_alive()
    finally:
        proc.kill()
        proc.stderr.close()
    assert 0 < sum(acked.values()) * BATCH < total  # killed mid-stream

    proc, target = start_serve(tmp_path / "crash")
    try:
        send(target, fleet, acked)  # the devices resend everything not acked
        assert sum(acked.values()) * BATCH == total
        assert outcome(target) == expected
    finally:
        stop_serve(proc)


def test_a_dead_processor_makes_serve_exit_non_zero(tmp_path):
    """The processor loop dies (its state table removed under it, through the log's file): the node stops
    taking data and `serve` exits 1 saying why, rather than serving on without storing."""
    import sqlite3

    from iotstream.v1 import ingest_pb2 as pb

    proc, target = start_serve(tmp_path)
    try:
        with sqlite3.connect(tmp_path / "log-iotstream.sqlite") as db:
            db.execute("DROP TABLE state")
        batch = pb.ReadingBatch(
            device_id="dev-x",
            seq=1,
            base_time_ms=int(time.time() * 1000),
            time_offset_ms=[0],
            metric_names=["t"],
            metric_index=[0],
            values=[1.0],
        )
        with grpc.insecure_channel(target) as ch:
            assert ingest_pb2_grpc.IngestStub(ch).Send(batch, timeout=30).accepted == 1
        assert proc.wait(60) == 1
        assert "failed: the processor stopped on an error" in proc.stderr.read()
    finally:
        proc.kill()
        proc.stderr.close()
