"""GetStats over real gRPC after real ingest: stored counts, the live ingest figures, table sizes."""

import asyncio
import math
import time

import pyarrow as pa

from iotstream.query.service import QueryLimits, QueryService
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


def one_reading(store, device: str, token: str) -> None:
    store.insert_readings(
        pa.table(
            {
                "device_id": [device],
                "metric": ["temp"],
                "time": pa.array([now_ms()], pa.timestamp("ms", tz="UTC")),
                "value": [1.0],
            }
        ),
        token=token,
    )


class Counted:
    """The store, counting GetStats' statements."""

    def __init__(self, store):
        self.store, self.statements = store, 0

    def stats(self, *args):
        self.statements += 1
        return self.store.stats(*args)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_shared_stats_are_never_older_than_their_bound(server):
    """While readings wait to be stored, callers share the figures, and each answer counts every reading
    stored more than `stats_max_age_s` before the call (the oracle: when each insert returned)."""
    max_age = 0.4
    store = Counted(server.server.store)
    service = QueryService(store, lambda: {"queue_readings": 1}, limits=QueryLimits(stats_max_age_s=max_age))
    base = asyncio.run(service.GetStats(qpb.GetStatsRequest(), Context())).readings
    stored_at: list[float] = []  # monotonic time each insert returned
    answers: list[tuple[float, int]] = []  # (monotonic time of the call, readings in its answer)

    async def calls():
        for i in range(40):
            one_reading(store.store, "shared", f"shared-{i}")
            stored_at.append(time.monotonic())
            for _ in range(3):
                called = time.monotonic()
                answers.append((called, (await service.GetStats(qpb.GetStatsRequest(), Context())).readings))
            await asyncio.sleep(0.02)  # paces the load (not synchronisation): ~2 s of calls, 5 bounds

    asyncio.run(calls())
    for called, readings in answers:
        surely = sum(1 for t in stored_at if t < called - max_age)
        assert readings - base >= surely, (called, readings, surely)
    assert store.statements < len(answers) / 2  # shared: far fewer statements than calls
    assert any(readings - base < sum(1 for t in stored_at if t < called) for called, readings in answers)


def test_stats_at_rest_count_every_write_at_once(server):
    service = QueryService(server.server.store, lambda: {"queue_readings": 0}, limits=QueryLimits())
    first = asyncio.run(service.GetStats(qpb.GetStatsRequest(), Context())).readings
    one_reading(server.server.store, "rest", "rest-1")
    assert asyncio.run(service.GetStats(qpb.GetStatsRequest(), Context())).readings == first + 1
