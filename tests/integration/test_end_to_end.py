"""The whole path on the embedded default: simulated fleet -> ingest -> queue -> processor -> ClickHouse ->
Query RPCs, with expected answers computed here from the simulator's own data."""

import asyncio
from collections import defaultdict

import numpy as np
import pytest

from iotstream.client.simulate import METRICS, run_fleet
from iotstream.v1 import query_pb2 as qpb

DEVICES, READINGS = 50, 200


@pytest.fixture
def fleet(server):
    summary, data = asyncio.run(
        run_fleet(server.target, DEVICES, READINGS, batch=50, anomalies=0.005, seed=3)
    )
    return summary, data


def test_fleet_lands_exactly(server, fleet):
    summary, data = fleet
    assert summary["sent"] == summary["acked"] == DEVICES * READINGS and summary["rejected"] == 0
    stats = server.query.GetStats(qpb.GetStatsRequest(), timeout=10)
    assert stats.readings == DEVICES * READINGS
    assert stats.devices == stats.devices_online == DEVICES
    assert stats.readings_per_s > 0  # accepted within the last minute


def test_injected_spikes_are_listed(server, fleet):
    summary, data = fleet
    spikes = {(d.device_id, METRICS[d.metric[i]], int(d.time_ms[i])) for d in data for i in d.spikes}
    assert len(spikes) == summary["injected_anomalies"] > 0
    found, token = set(), ""
    while True:
        page = server.query.ListAnomalies(qpb.ListAnomaliesRequest(page_size=7, page_token=token), timeout=10)
        found |= {(a.device_id, a.metric, a.time_ms) for a in page.anomalies}
        assert all(0 < a.score < 1 for a in page.anomalies)
        assert all(abs(a.zscore) > 6 for a in page.anomalies if a.kind == "zscore")
        token = page.next_page_token
        if not token:
            break
    assert spikes <= found
    assert len(found - spikes) <= len(spikes)  # a quiet signal: few false alarms


def test_devices_paged(server, fleet):
    ids, token = [], ""
    while True:
        page = server.query.ListDevices(qpb.ListDevicesRequest(page_size=20, page_token=token), timeout=10)
        ids += [d.device_id for d in page.devices]
        assert all(d.status == qpb.ONLINE for d in page.devices)
        token = page.next_page_token
        if not token:
            break
    assert ids == sorted(d.device_id for d in fleet[1])
    few = server.query.ListDevices(qpb.ListDevicesRequest(id_prefix="sim-0001"), timeout=10)
    assert [d.device_id for d in few.devices] == [f"sim-{i:05d}" for i in range(10, 20)]
    offline = server.query.ListDevices(qpb.ListDevicesRequest(status=qpb.OFFLINE), timeout=10)
    assert list(offline.devices) == []


def test_device_latest_values(server, fleet):
    d = fleet[1][7]
    reply = server.query.GetDevice(qpb.GetDeviceRequest(device_id=d.device_id), timeout=10)
    expected = []
    for m, name in enumerate(METRICS):
        last = np.flatnonzero(d.metric == m)[-1]
        expected.append((name, int(d.time_ms[last]), float(d.values[last])))
    assert sorted((v.metric, v.time_ms, v.value) for v in reply.latest) == sorted(expected)
    assert reply.readings == READINGS and reply.last_seen_ms == int(d.time_ms.max())


def test_history_pages_without_gaps(server, fleet):
    d = fleet[1][3]
    got, token = [], ""
    while True:
        page = server.query.GetHistory(
            qpb.GetHistoryRequest(device_id=d.device_id, page_size=33, page_token=token), timeout=10
        )
        got += [(s.metric, t, v) for s in page.series for t, v in zip(s.time_ms, s.values, strict=True)]
        token = page.next_page_token
        if not token:
            break
    columns = zip(d.metric, d.time_ms, d.values, strict=True)
    expected = sorted((METRICS[m], int(t), float(v)) for m, t, v in columns)
    assert got == expected


def test_aggregate_matches_numpy(server, fleet):
    data = fleet[1][:4]
    req = qpb.AggregateRequest(
        device_ids=[d.device_id for d in data],
        metrics=["humidity"],
        interval_ms=60_000,
        funcs=[qpb.MIN, qpb.MAX, qpb.AVG, qpb.SUM, qpb.COUNT, qpb.STDDEV],
    )
    reply = server.query.Aggregate(req, timeout=10)
    assert [s.device_id for s in reply.series] == [d.device_id for d in data]
    for d, s in zip(data, reply.series, strict=True):
        sel = d.metric == METRICS.index("humidity")
        buckets = defaultdict(list)
        for t, v in zip(d.time_ms[sel], d.values[sel], strict=True):
            buckets[int(t) // 60_000 * 60_000].append(float(v))
        assert list(s.bucket_start_ms) == sorted(buckets)
        for i, b in enumerate(s.bucket_start_ms):
            vals = np.array(buckets[b])
            assert s.count[i] == len(vals)
            assert (s.min[i], s.max[i]) == (vals.min(), vals.max())
            assert s.sum[i] == pytest.approx(vals.sum(), rel=1e-12)
            assert s.avg[i] == pytest.approx(vals.mean(), rel=1e-12)
            if len(vals) > 1:
                assert s.stddev[i] == pytest.approx(vals.std(ddof=1), rel=1e-9)


def test_bad_arguments_name_the_field(server):
    import grpc

    cases = [
        (server.query.Aggregate, qpb.AggregateRequest(interval_ms=10), "interval_ms"),
        (server.query.GetHistory, qpb.GetHistoryRequest(), "device_id"),
        (server.query.ListDevices, qpb.ListDevicesRequest(page_token="garbage!"), "page_token"),
        (server.query.ListAnomalies, qpb.ListAnomaliesRequest(start_ms=10, end_ms=5), "end_ms"),
    ]
    for rpc, req, field in cases:
        with pytest.raises(grpc.RpcError) as err:
            rpc(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        server.query.GetDevice(qpb.GetDeviceRequest(device_id="nobody"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_aggregate_with_no_matching_readings_is_empty(server):
    reply = server.query.Aggregate(
        qpb.AggregateRequest(device_ids=["nobody"], interval_ms=60_000), timeout=10
    )
    assert list(reply.series) == []


def test_undecodable_query_is_invalid_argument(server):
    import grpc

    call = server.channel.unary_unary("/iotstream.v1.Query/GetStats")
    with pytest.raises(grpc.RpcError) as err:
        call(b"\xff\xff\xff\xff\x0f", timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
