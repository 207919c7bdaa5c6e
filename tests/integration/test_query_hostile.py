"""Hostile strings as device ids, metric names, kinds and names through every Query RPC: quotes,
backslashes, SQL fragments, placeholders, control characters, 10,000 characters. They reach storage and come
back unchanged, and nothing they contain runs as SQL. Bytes that are not UTF-8 cannot be a proto3 string:
the request does not decode, and the answer says so."""

import time

import grpc
import pyarrow as pa
import pytest

from iotstream.query.service import QueryService, add_to_server
from iotstream.v1 import query_pb2 as qpb
from iotstream.v1 import query_pb2_grpc

HOSTILE = [
    "it's",
    'say "hi"',
    "a\\b",
    "x\\'y",
    "\\N",
    "tab\there",
    "nl\nx",
    "'; DROP TABLE readings; --",
    "1' OR '1'='1",
    "{d:String}",
    "$db.readings",
    "%_*",
    "[a,b]",
    "é😀",
    "nul\0z",
    "x" * 10_000,
]
N = len(HOSTILE)


def now_ms():
    return time.time_ns() // 1_000_000


def names(i):
    """(device, metric, kind) for row i: each hostile string in every role."""
    return HOSTILE[i], HOSTILE[(i + 1) % N], HOSTILE[(i + 2) % N]


@pytest.fixture
def loaded(server):
    t = now_ms() - 600_000
    rows = [(*names(i), t + j * 1_000, float(i * 10 + j)) for i in range(N) for j in range(3)]
    table = pa.table(
        {
            "device_id": [r[0] for r in rows],
            "metric": [r[1] for r in rows],
            "time": pa.array([r[3] for r in rows], pa.timestamp("ms", tz="UTC")),
            "value": [r[4] for r in rows],
        }
    )
    server.server.store.insert_readings(table)
    server.server.store.insert_anomalies(
        table.append_column("kind", pa.array([r[2] for r in rows]))
        .append_column("score", pa.array([0.65] * len(rows)))
        .append_column("zscore", pa.array([8.0] * len(rows)))
    )
    return server, t


def test_every_rpc_round_trips_hostile_strings(loaded):
    server, t = loaded
    q = server.query
    for i in range(N):
        device, metric, kind = names(i)
        d = q.GetDevice(qpb.GetDeviceRequest(device_id=device), timeout=10)
        assert [(m.metric, m.value) for m in d.latest] == [(metric, i * 10 + 2.0)] and d.readings == 3
        assert device in [
            x.device_id for x in q.ListDevices(qpb.ListDevicesRequest(id_prefix=device), timeout=10).devices
        ]
        h = q.GetHistory(qpb.GetHistoryRequest(device_id=device, metrics=[metric], start_ms=t), timeout=10)
        assert [(s.metric, list(s.values)) for s in h.series] == [
            (metric, [i * 10.0, i * 10 + 1.0, i * 10 + 2.0])
        ]
        a = q.Aggregate(
            qpb.AggregateRequest(
                device_ids=[device],
                metrics=[metric],
                start_ms=t - t % 60_000,
                interval_ms=3_600_000,
                funcs=[qpb.COUNT, qpb.SUM],
            ),
            timeout=10,
        )
        assert [(s.device_id, s.metric, sum(s.count), sum(s.sum)) for s in a.series] == [
            (device, metric, 3, i * 30 + 3.0)
        ]
        [episode] = q.ListAnomalies(
            qpb.ListAnomaliesRequest(device_id=device, metric=metric, kind=kind), timeout=10
        ).anomalies
        assert (episode.device_id, episode.metric, episode.kind, episode.readings) == (
            device,
            metric,
            kind,
            3,
        )
        by = HOSTILE[(i + 3) % N][:200]
        acked = q.AcknowledgeAnomaly(qpb.AcknowledgeAnomalyRequest(id=episode.id, by=by or "x"), timeout=10)
        assert acked.acknowledged_by == (by or "x") and acked.id == episode.id
    assert server.sql("SELECT count() AS n FROM $db.readings")[0]["n"] == 3 * N  # nothing was dropped
    stats = q.GetStats(qpb.GetStatsRequest(), timeout=10)
    assert (stats.devices, stats.anomalies) == (N, N)


def test_watch_filters_on_a_hostile_device(loaded):
    server, _ = loaded
    device, metric, kind = names(7)  # the SQL fragment
    call = server.query.WatchAnomalies(qpb.WatchAnomaliesRequest(device_id=device), timeout=30)
    assert next(call).type == qpb.AnomalyEvent.WATCHING
    t = now_ms()
    server.server.store.insert_anomalies(
        pa.table(
            {
                "device_id": [HOSTILE[0], device],
                "metric": [metric, metric],
                "time": pa.array([t, t], pa.timestamp("ms", tz="UTC")),
                "value": [1.0, 2.0],
                "kind": [kind, kind],
                "score": [0.9, 0.9],
                "zscore": [9.0, 9.0],
            }
        )
    )
    event = next(call)
    assert (event.anomaly.device_id, event.anomaly.metric, event.anomaly.kind) == (device, metric, kind)
    call.cancel()


def test_overlong_names_are_refused_where_limited(server):
    with pytest.raises(grpc.RpcError) as err:
        server.query.AcknowledgeAnomaly(
            qpb.AcknowledgeAnomalyRequest(id="WyJkIiwgIm0iLCAiayIsIDEyM10=", by="x" * 201), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "by" in err.value.details()


NOT_UTF8 = b"\x0a\x03\xff\xfe\xc3"  # GetDeviceRequest.device_id = bytes that are not UTF-8


def raw_get_device(channel):
    return channel.unary_unary(
        "/iotstream.v1.Query/GetDevice", request_serializer=None, response_deserializer=qpb.Device.FromString
    )


def test_not_utf8_on_the_embedded_server(server):
    with pytest.raises(grpc.RpcError) as err:
        raw_get_device(server.channel)(NOT_UTF8, timeout=10)
    # iotstream.node registers the generated handlers for now, and grpc.aio answers UNKNOWN "Unexpected
    # DecodeError ... bad UTF-8"; with query_service.add_to_server it is INVALID_ARGUMENT (next test).
    assert err.value.code() in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INVALID_ARGUMENT)
    assert "UTF-8" in err.value.details()
    assert server.query.GetStats(qpb.GetStatsRequest(), timeout=10).readings == 0  # still serving


def test_not_utf8_is_invalid_argument_with_add_to_server(server):
    async def start():
        srv = grpc.aio.server()
        add_to_server(QueryService(server.server.store), srv)
        port = srv.add_insecure_port("127.0.0.1:0")
        await srv.start()
        return srv, port

    srv, port = server.call(start())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as err:
                raw_get_device(channel)(NOT_UTF8, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "GetDeviceRequest" in err.value.details()
            stub = query_pb2_grpc.QueryStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                next(
                    channel.unary_stream(  # the streaming RPC too
                        "/iotstream.v1.Query/WatchAnomalies", request_serializer=None
                    )(b"\x0a\x01\xff", timeout=10)
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert stub.GetStats(qpb.GetStatsRequest(), timeout=10).readings == 0  # still serving
    finally:
        server.call(srv.stop(0))
