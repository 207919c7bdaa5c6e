"""Detector rules from a TOML file reach the processor: per-metric thresholds, and timer-driven silence."""

import time

import pytest
from conftest import ServerThread
from waiting import poll

from iotstream.node import Config
from iotstream.v1 import ingest_pb2 as pb
from iotstream.v1 import query_pb2 as qpb

RULES = """
[default]
silence_ms = 1500

[metrics.temp]
hi = 50.0
"""


@pytest.fixture
def ruled(chdb_dir, tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    srv = ServerThread(
        Config(
            port=0,
            data_dir=chdb_dir,
            database="rules_" + str(time.time_ns()),
            rules_path=str(path),
            silence_check_s=0.2,
        )
    )
    yield srv
    srv.stop()


def kinds(server, kind):
    page = server.query.ListAnomalies(qpb.ListAnomaliesRequest(kind=kind), timeout=10)
    return [(a.device_id, a.metric, a.time_ms) for a in page.anomalies]


def test_threshold_from_rules_and_silence(ruled):
    now = time.time_ns() // 1_000_000
    batch = pb.ReadingBatch(
        device_id="dev-t",
        seq=1,
        base_time_ms=now - 1000,
        time_offset_ms=[0, 1, 2, 3],
        metric_names=["temp", "hum"],
        metric_index=[0, 0, 1, 1],
        values=[20.0, 51.0, 60.0, 61.0],
    )
    assert ruled.ingest.Send(batch, timeout=10).accepted == 4
    # hi = 50 holds for temp only: hum's 60 is not above any of its limits.
    assert kinds(ruled, "threshold") == [("dev-t", "temp", now - 999)]
    poll(lambda: len(kinds(ruled, "silence")) >= 2, 20, "both silences reported", 0.1)
    assert sorted(kinds(ruled, "silence")) == [("dev-t", "hum", now - 997), ("dev-t", "temp", now - 999)]
    progress = ruled.server.processor_loop.progress
    ticks = progress.silence_checks
    poll(lambda: progress.silence_checks >= ticks + 3, 20, "three more timer ticks")
    # ...and each silence is still reported once:
    assert len(kinds(ruled, "silence")) == 2
