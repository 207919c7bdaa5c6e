"""GetStats over real gRPC after real ingest: stored counts, the live ingest figures, table sizes."""

import asyncio
import math
import time

import pyarrow as pa

from iotstream.query.service import QueryService
from iotstream.v1 import ingest_pb2 as ipb
from iotstream.v1 import query_pb2 as qpb


def now_ms():
    return time.time_ns() // 1_000_000


def test_stats_after_ingest(server):
    base = now_ms() - 5_000
    values = [1.0, 2.0, math.nan, 4.0, 5.0, 6.0]
    ack = server.ingest.Send(
        ipb.ReadingBatch(
            device_id="stats-1",
            seq=1,
            base_time_ms=base,
            time_offset_ms=list(range(6)),
            metric_names=["temp", "hum"],
            metric_index=[0, 1, 0, 1, 0, 1],
            values=values,
        ),
        timeout=10,
    )
    assert ack.accepted == 5
    server.server.store.insert_anomalies(
        pa.table(
            {
                "device_id": ["stats-1", "stats-1"],
                "metric": ["temp", "hum"],
                "time": pa.array([now_ms() - 3_600_000, now_ms()], pa.timestamp("ms", tz="UTC")),
                "value": [9.0, 9.0],
                "kind": ["zscore", "zscore"],
                "score": [0.6, 0.6],
                "zscore": [9.0, 9.0],
            }
        )
    )
    before = now_ms()
    stats = server.query.GetStats(qpb.GetStatsRequest(), timeout=10)
    assert (stats.readings, stats.devices, stats.devices_online) == (5, 1, 1)
    assert (stats.anomalies, stats.open_anomalies) == (2, 1)
    assert dict(stats.rejected) == {"NON_FINITE_VALUE": 1}
    assert stats.readings_per_s > 0 and stats.queue_readings == 0
    assert before - 60_000 < stats.last_stored_ms <= now_ms()
    rows = dict(stats.table_rows)
    assert rows["readings"] == 5 and rows["anomalies"] == 2 and rows["anomaly_episodes"] == 2
    assert rows["rollup_1m"] >= 2 and rows["rollup_1h"] >= 2 and rows["device_metrics"] >= 2
    assert set(stats.table_bytes) == set(rows) and all(b > 0 for b in stats.table_bytes.values())


class Context:
    def time_remaining(self):
        return None


def test_live_figures_come_from_the_stats_source(server):
    live = {
        "readings_per_s": 12.5,
        "queue_readings": 7,
        "queue_lag_ms": 340,
        "consumer_lag": 3,
        "rejected": {"BAD_METRIC_NAME": 2},
    }
    service = QueryService(server.server.store, lambda: live)
    stats = asyncio.run(service.GetStats(qpb.GetStatsRequest(), Context()))
    assert (stats.readings_per_s, stats.queue_readings, stats.queue_lag_ms, stats.consumer_lag) == (
        12.5,
        7,
        340,
        3,
    )
    assert dict(stats.rejected) == {"BAD_METRIC_NAME": 2}
    bare = asyncio.run(
        QueryService(server.server.store, lambda: {"readings_per_s": 1.0}).GetStats(
            qpb.GetStatsRequest(), Context()
        )
    )  # a source that knows less (a query-only node): zeros, no error
    assert (bare.readings_per_s, bare.queue_lag_ms, bare.consumer_lag, dict(bare.rejected)) == (1.0, 0, 0, {})
