"""`iotstream serve` as a real process: SIGTERM stops it cleanly, and a restart on the same data dir
still has everything that was acked."""

import asyncio
import json
import re
import signal
import subprocess
import sys

import grpc
from conftest import wait_stored

from iotstream.client.simulate import run_fleet
from iotstream.v1 import query_pb2 as qpb
from iotstream.v1 import query_pb2_grpc


def start_serve(data_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "iotstream.cli", "serve", "--port", "0", "--data-dir", str(data_dir)],
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:
        found = re.search(r"serving on ([\d.]+:\d+)", line)
        if found:
            return proc, found.group(1)
    raise AssertionError(f"serve exited with {proc.wait()} before listening")


def stop_serve(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    proc.stderr.close()


def stats(target):
    with grpc.insecure_channel(target) as ch:
        return query_pb2_grpc.QueryStub(ch).GetStats(qpb.GetStatsRequest(), timeout=30)


def test_restart_keeps_acked_readings(tmp_path):
    proc, target = start_serve(tmp_path)
    try:
        summary, _ = asyncio.run(run_fleet(target, 5, 300, batch=40, seed=9))
        assert summary["acked"] == 1500
        with grpc.insecure_channel(target) as ch:
            wait_stored(query_pb2_grpc.QueryStub(ch))
        before = stats(target)
        # The CLI, as the README shows it: exactly one JSON object on stdout.
        out = subprocess.run(
            [sys.executable, "-m", "iotstream.cli", "query", "--target", target, "stats", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert json.loads(out)["readings"] == 1500 and out.count("\n") == 1
    finally:
        stop_serve(proc)
    proc, target = start_serve(tmp_path)
    try:
        after = stats(target)
        assert after.readings == before.readings == 1500
        assert (after.anomalies, after.devices) == (before.anomalies, before.devices)
        summary, _ = asyncio.run(run_fleet(target, 5, 300, batch=40, seed=10, prefix="more"))
        with grpc.insecure_channel(target) as ch:
            wait_stored(query_pb2_grpc.QueryStub(ch))
        assert stats(target).readings == 3000
    finally:
        stop_serve(proc)


def test_rolling_state_survives_a_restart(tmp_path):
    """A spike sent right after a restart is judged against the windows from before it."""
    import time

    from iotstream.v1 import ingest_pb2 as pb
    from iotstream.v1 import ingest_pb2_grpc

    proc, target = start_serve(tmp_path)
    try:
        _, fleet = asyncio.run(run_fleet(target, 2, 300, batch=50, seed=4, anomalies=0.0))
    finally:
        stop_serve(proc)
    proc, target = start_serve(tmp_path)
    try:
        d = fleet[0]
        spike = pb.ReadingBatch(
            device_id=d.device_id,
            seq=1000,
            base_time_ms=time.time_ns() // 1_000_000,
            time_offset_ms=[0],
            metric_names=["temperature"],
            metric_index=[0],
            values=[float(d.values[d.metric == 0][-1]) + 50.0],
        )
        with grpc.insecure_channel(target) as ch:
            assert ingest_pb2_grpc.IngestStub(ch).Send(spike, timeout=30).accepted == 1
            wait_stored(query_pb2_grpc.QueryStub(ch))
            found = query_pb2_grpc.QueryStub(ch).ListAnomalies(
                qpb.ListAnomaliesRequest(device_id=d.device_id, kind="zscore"), timeout=30
            )
        # A cold window (no readings yet) would not judge it at all.
        assert [(a.metric, a.time_ms) for a in found.anomalies] == [("temperature", spike.base_time_ms)]
    finally:
        stop_serve(proc)
