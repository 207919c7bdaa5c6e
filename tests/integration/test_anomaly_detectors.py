"""One anomaly per flagged reading (migration 009): rows as the processor builds them from a real batch,
through the real store and ListAnomalies over gRPC; rows written before 009 read as detectors = [kind]."""

import time

import numpy as np
import pyarrow as pa

from iotstream.processor.processor import Processor
from iotstream.v1 import ingest_pb2 as pb
from iotstream.v1 import query_pb2 as qpb


def test_one_row_per_reading_with_its_detectors(server):
    t0 = time.time_ns() // 1_000_000 - 600_000
    rng = np.random.default_rng(0)
    values = 20 + rng.standard_normal(400)
    values[300] += 40  # a spike: zscore and robust fire on the same reading
    batch = pb.ReadingBatch(
        device_id="dev-d",
        seq=1,
        base_time_ms=t0,
        time_offset_ms=list(range(0, 400_000, 1000)),
        metric_names=["temp"],
        metric_index=[0] * 400,
        values=values.tolist(),
    )
    prepared = Processor(None).prepare([batch.SerializeToString()])
    rows = prepared.anomalies.to_pylist()
    spike = [r for r in rows if r["time"].timestamp() * 1000 == t0 + 300_000]
    assert len(spike) == 1 and spike[0]["kind"] == "zscore" and spike[0]["detectors"] == ["zscore", "robust"]
    assert len({r["time"] for r in rows}) == len(rows)  # never two rows for one reading
    store = server.server.store
    store.insert_anomalies(prepared.anomalies)
    old = pa.table(
        {
            "device_id": ["dev-o"],
            "metric": ["hum"],
            "time": pa.array([t0], pa.timestamp("ms", tz="UTC")),
            "value": [1.0],
            "kind": ["stuck"],
            "score": [0.6],
            "zscore": [float("nan")],
        }
    )  # a row as written before migration 009
    store.insert_anomalies(old)
    got = server.query.ListAnomalies(qpb.ListAnomaliesRequest(page_size=50), timeout=10).anomalies
    by_device = {a.device_id: a for a in got}
    assert list(by_device["dev-o"].detectors) == ["stuck"]
    spike_ep = [a for a in got if a.device_id == "dev-d" and a.opened_ms == t0 + 300_000]
    assert len(spike_ep) == 1 and spike_ep[0].kind == "zscore"
    assert sorted(spike_ep[0].detectors) == ["robust", "zscore"] and spike_ep[0].readings == 1
