"""Anomaly episodes over real gRPC, from flagged readings written the way the processor writes them
(Store.insert_anomalies): grouping against an independent Python grouping whatever the arrival order,
replays, filters, acknowledgement, and paging while new episodes arrive."""

import threading
import time

import grpc
import numpy as np
import pyarrow as pa
import pytest

from iotstream.query.service import decode_token
from iotstream.v1 import query_pb2 as qpb

Q = 60_000  # StoreConfig.episode_quiet_ms default


def now_ms():
    return time.time_ns() // 1_000_000


def flagged(rows) -> pa.Table:
    """rows: (device_id, metric, kind, time_ms, value, score), as processor.anomaly_table builds them."""
    return pa.table(
        {
            "device_id": [r[0] for r in rows],
            "metric": [r[1] for r in rows],
            "time": pa.array([r[3] for r in rows], pa.timestamp("ms", tz="UTC")),
            "value": [float(r[4]) for r in rows],
            "kind": [r[2] for r in rows],
            "score": [float(r[5]) for r in rows],
            "zscore": [float(r[4]) * 2 for r in rows],
        }
    )


def reference_episodes(rows, quiet=Q):
    """Group flagged readings by key, split where consecutive readings are more than `quiet` apart."""
    by_key = {}
    for r in rows:
        by_key.setdefault(r[:3], []).append(r)
    out = {}
    for key, rs in by_key.items():
        rs.sort(key=lambda r: r[3])
        runs = [[rs[0]]]
        for r in rs[1:]:
            if r[3] - runs[-1][-1][3] > quiet:
                runs.append([])
            runs[-1].append(r)
        for run in runs:
            peak = max(run, key=lambda r: (r[5], r[3]))
            out[(*key, run[0][3])] = {
                "updated_ms": run[-1][3],
                "readings": len(run),
                "time_ms": peak[3],
                "value": peak[4],
                "score": peak[5],
            }
    return out


def list_all(query, **filters):
    got, token = [], ""
    while True:
        page = query.ListAnomalies(
            qpb.ListAnomaliesRequest(page_size=50, page_token=token, **filters), timeout=10
        )
        got += page.anomalies
        token = page.next_page_token
        if not token:
            return got


def as_dict(anomalies):
    return {
        (a.device_id, a.metric, a.kind, a.opened_ms): {
            "updated_ms": a.updated_ms,
            "readings": a.readings,
            "time_ms": a.time_ms,
            "value": a.value,
            "score": a.score,
        }
        for a in anomalies
    }


def test_episodes_match_python_grouping_whatever_the_arrival_order(server):
    rng = np.random.default_rng(11)
    t0 = now_ms() - 3 * 3_600_000
    rows = []
    for dev in ("d1", "d2"):
        for metric, kind in (("temp", "zscore"), ("temp", "rate"), ("hum", "zscore")):
            # bursts of readings a few seconds apart, bursts separated by gaps around the quiet period
            t = t0
            for _ in range(6):
                t += int(rng.choice([Q // 2, Q - 1, Q, Q + 1, 3 * Q]))
                for _ in range(int(rng.integers(1, 5))):
                    t += int(rng.integers(1_000, 20_000))
                    rows.append(
                        (dev, metric, kind, t, float(rng.normal(50, 10)), float(rng.uniform(0.5, 0.9)))
                    )
    order = rng.permutation(len(rows))  # late readings join, extend and merge episodes already stored
    for i, chunk in enumerate(np.array_split(order, 7)):
        server.server.store.insert_anomalies(flagged([rows[j] for j in chunk]), token=f"t-{i}")
    got = list_all(server.query)
    assert as_dict(got) == reference_episodes(rows)
    for a in got:
        assert a.closes_ms == a.updated_ms + Q and a.state == qpb.ANOMALY_CLOSED
        assert a.severity == (
            qpb.SEVERITY_HIGH
            if a.score >= 0.7
            else qpb.SEVERITY_MEDIUM
            if a.score >= 0.6
            else qpb.SEVERITY_LOW
        )
    stats = server.query.GetStats(qpb.GetStatsRequest(), timeout=10)
    assert stats.anomalies == len(got) and stats.open_anomalies == 0
    # The same inserts again, as a processor replay would send them: nothing changes, nothing new is written.
    versions = server.sql("SELECT count() AS n FROM $db.anomaly_episodes")[0]["n"]
    for i, chunk in enumerate(np.array_split(order, 7)):
        server.server.store.insert_anomalies(flagged([rows[j] for j in chunk]), token=f"t-{i}")
    assert as_dict(list_all(server.query)) == reference_episodes(rows)
    assert server.sql("SELECT count() AS n FROM $db.anomaly_episodes")[0]["n"] == versions


def test_open_episodes_and_filters(server):
    t = now_ms()
    store = server.server.store
    store.insert_anomalies(
        flagged(
            [
                ("dev-x", "temp", "zscore", t - 10_000, 30.0, 0.55),
                ("dev-x", "temp", "zscore", t - 5_000, 35.0, 0.75),
                ("dev-x", "hum", "stuck", t - 4 * Q, 1.0, 0.62),
                ("dev-y", "temp", "zscore", t - 2_000, 9.0, 0.51),
            ]
        )
    )
    open_ = list_all(server.query, state=qpb.ANOMALY_OPEN)
    assert [(a.device_id, a.metric) for a in open_] == [("dev-y", "temp"), ("dev-x", "temp")]  # newest first
    x = open_[1]
    assert (x.opened_ms, x.updated_ms, x.closes_ms, x.readings) == (t - 10_000, t - 5_000, t - 5_000 + Q, 2)
    assert (x.time_ms, x.value, x.score, x.zscore, x.severity) == (
        t - 5_000,
        35.0,
        0.75,
        70.0,
        qpb.SEVERITY_HIGH,
    )
    assert [a.kind for a in list_all(server.query, state=qpb.ANOMALY_CLOSED)] == ["stuck"]
    assert [a.device_id for a in list_all(server.query, min_severity=qpb.SEVERITY_MEDIUM)] == [
        "dev-x",
        "dev-x",
    ]
    assert [a.metric for a in list_all(server.query, device_id="dev-x", kind="stuck")] == ["hum"]
    assert [a.device_id for a in list_all(server.query, metric="temp", start_ms=t - 3_000)] == ["dev-y"]
    assert list_all(server.query, end_ms=t - 4 * Q) == []  # [start, end) excludes an episode opened at end
    store.insert_readings(
        pa.table(
            {
                "device_id": ["dev-x"],
                "metric": ["temp"],
                "time": pa.array([t], pa.timestamp("ms", tz="UTC")),
                "value": [1.0],
            }
        )
    )
    device = server.query.GetDevice(qpb.GetDeviceRequest(device_id="dev-x"), timeout=10)
    assert (device.anomalies, device.open_anomalies) == (2, 1)


def test_acknowledge(server):
    t = now_ms() - 3_600_000
    store = server.server.store
    store.insert_anomalies(flagged([("dev-a", "temp", "zscore", t, 1.0, 0.6)]))
    [a] = list_all(server.query)
    assert (a.acknowledged_ms, a.acknowledged_by) == (0, "")
    before = now_ms()
    acked = server.query.AcknowledgeAnomaly(qpb.AcknowledgeAnomalyRequest(id=a.id, by="alice"), timeout=10)
    assert acked.acknowledged_by == "alice" and before <= acked.acknowledged_ms <= now_ms()
    again = server.query.AcknowledgeAnomaly(qpb.AcknowledgeAnomalyRequest(id=a.id, by="bob"), timeout=10)
    assert (again.acknowledged_by, again.acknowledged_ms) == (
        "alice",
        acked.acknowledged_ms,
    )  # first one stands
    # A later flagged reading extends the episode, an earlier one moves its start: still acknowledged.
    store.insert_anomalies(
        flagged(
            [
                ("dev-a", "temp", "zscore", t + 30_000, 2.0, 0.6),
                ("dev-a", "temp", "zscore", t - 30_000, 3.0, 0.6),
            ]
        )
    )
    [moved] = list_all(server.query)
    assert (moved.opened_ms, moved.readings, moved.acknowledged_by) == (t - 30_000, 3, "alice")
    store.insert_anomalies(flagged([("dev-a", "temp", "zscore", t + 10 * Q, 4.0, 0.6)]))  # a new episode
    assert [x.acknowledged_by for x in list_all(server.query)] == ["", "alice"]
    assert [x.opened_ms for x in list_all(server.query, acknowledged=qpb.UNACKNOWLEDGED)] == [t + 10 * Q]
    assert [x.opened_ms for x in list_all(server.query, acknowledged=qpb.ACKNOWLEDGED)] == [t - 30_000]


@pytest.mark.parametrize(
    "request_, code",
    [
        (qpb.AcknowledgeAnomalyRequest(by="x"), grpc.StatusCode.INVALID_ARGUMENT),
        (qpb.AcknowledgeAnomalyRequest(id="bm90IGFuIGlk", by="x"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            qpb.AcknowledgeAnomalyRequest(id="WyJkIiwgIm0iLCAiayIsIDEyM10=", by=""),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (qpb.AcknowledgeAnomalyRequest(id="WyJkIiwgIm0iLCAiayIsIDEyM10=", by="x"), grpc.StatusCode.NOT_FOUND),
    ],
)
def test_acknowledge_refusals(server, request_, code):
    assert decode_token("WyJkIiwgIm0iLCAiayIsIDEyM10=", 4) == ["d", "m", "k", 123]
    with pytest.raises(grpc.RpcError) as err:
        server.query.AcknowledgeAnomaly(request_, timeout=10)
    assert err.value.code() == code
    assert (
        "id" if code == grpc.StatusCode.NOT_FOUND or not request_.id or "bm90" in request_.id else "by"
    ) in err.value.details()


def test_paging_neither_skips_nor_repeats_under_concurrent_inserts(server):
    t = now_ms() - 2 * 3_600_000
    store = server.server.store
    before = [(f"dev-{i % 9}", f"m{i % 4}", "zscore", t + (i // 3) * 2 * Q, 1.0, 0.6) for i in range(90)]
    store.insert_anomalies(flagged(before))
    expected = {(r[0], r[1], r[2], r[3]) for r in before}
    stop = threading.Event()
    inserted = []

    def writer():  # new episodes both newer and older than the pages already read, and extensions
        i = 0
        while not stop.is_set():
            new = (f"new-{i}", "temp", "zscore", t + (i % 7 - 3) * 7 * Q + i, 1.0, 0.8)
            grow = (before[i % 90][0], before[i % 90][1], "zscore", before[i % 90][3] + 1_000, 1.0, 0.9)
            store.insert_anomalies(flagged([new, grow]))
            inserted.append(new)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen, token, pages = [], "", 0
        while True:
            page = server.query.ListAnomalies(
                qpb.ListAnomaliesRequest(page_size=7, page_token=token), timeout=10
            )
            seen += [(a.device_id, a.metric, a.kind, a.opened_ms) for a in page.anomalies]
            token, pages = page.next_page_token, pages + 1
            if not token:
                break
    finally:
        stop.set()
        thread.join(30)
    assert len(inserted) >= 2 and pages > 90 // 7  # the writer ran while the pages were read
    assert len(seen) == len(set(seen))  # nothing twice
    assert expected <= set(seen)  # nothing that was there before is skipped
    order = [(s[3], s[0], s[1], s[2]) for s in seen]
    assert order == sorted(order, reverse=True)
