"""Ingest over real gRPC into the embedded store: rejections with reasons, neighbours stored, bad bytes."""

import math
import os
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from iotstream.v1 import ingest_pb2 as pb


def now_ms():
    return time.time_ns() // 1_000_000


def make_batch(device, values, seq=1, names=("temp", "hum"), index=None, offsets=None):
    n = len(values)
    return pb.ReadingBatch(
        device_id=device,
        seq=seq,
        base_time_ms=now_ms() - 10_000,
        time_offset_ms=offsets if offsets is not None else list(range(n)),
        metric_names=names,
        metric_index=index if index is not None else [i % 2 for i in range(n)],
        values=values,
    )


def stored(server, device):
    return server.sql(
        "SELECT metric, toUnixTimestamp64Milli(time) AS t, value FROM $db.readings "
        "WHERE device_id = {d:String} ORDER BY t",
        {"d": device},
    )


def test_send_stores_and_acks(server):
    ack = server.ingest.Send(make_batch("dev-a", [1.0, 2.0, 3.0], seq=42), timeout=10)
    assert (ack.seq, ack.accepted, list(ack.rejected)) == (42, 3, [])
    assert [r["value"] for r in stored(server, "dev-a")] == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("case", ["nan", "inf", "old", "future", "bad_name", "bad_index"])
def test_each_reason_keeps_neighbours(server, case):
    values, names, index, offsets = [1.0, 2.0, 3.0], ["temp", "hum"], [0, 1, 0], [0, 1, 2]
    expected = {
        "nan": pb.NON_FINITE_VALUE,
        "inf": pb.NON_FINITE_VALUE,
        "old": pb.TIME_OUT_OF_RANGE,
        "future": pb.TIME_OUT_OF_RANGE,
        "bad_name": pb.BAD_METRIC_NAME,
        "bad_index": pb.UNKNOWN_METRIC,
    }
    if case == "nan":
        values[1] = math.nan
    elif case == "inf":
        values[1] = -math.inf
    elif case == "old":
        offsets[1] = -40 * 86_400_000
    elif case == "future":
        offsets[1] = 3_600_000
    elif case == "bad_name":
        names[1] = "bad name!"
    else:
        index[1] = 9
    device = f"dev-{case.replace('_', '-')}"
    ack = server.ingest.Send(
        make_batch(device, values, names=names, index=index, offsets=offsets), timeout=10
    )
    assert ack.accepted == 2
    assert [(r.index, r.reason) for r in ack.rejected] == [(1, expected[case])]
    assert ack.rejected[0].detail
    assert [r["value"] for r in stored(server, device)] == [1.0, 3.0]


def test_stream_acks_in_order_with_rejections(server):
    batches = [
        make_batch("dev-s", [float(i), math.nan if i % 3 == 0 else float(i) + 0.5], seq=i)
        for i in range(1, 31)
    ]
    acks = [r.ack for r in server.ingest.Stream(iter(batches), timeout=30)]
    assert [a.seq for a in acks] == list(range(1, 31))
    assert sum(a.accepted for a in acks) == 30 + 20
    assert all(
        [r.reason for r in a.rejected] == ([pb.NON_FINITE_VALUE] if a.seq % 3 == 0 else []) for a in acks
    )
    assert len(stored(server, "dev-s")) == 50


def test_random_bytes_to_send_is_invalid_argument(server):
    send = server.channel.unary_unary("/iotstream.v1.Ingest/Send")
    rejected = 0
    for i in range(30):
        junk = os.urandom(1 + i * 7)
        try:
            send(junk, timeout=5)  # some junk parses as a (useless) ReadingBatch: then it is an Ack
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
            assert "ReadingBatch" in exc.details()
            rejected += 1
    assert rejected > 0
    assert_still_serving(server)


def test_random_bytes_in_stream_end_it_with_status(server):
    stream = server.channel.stream_stream("/iotstream.v1.Ingest/Stream")
    good = make_batch("dev-r", [1.0, 2.0]).SerializeToString()
    junk = b"\xff\xff\xff\xff\x0f"  # truncated varint: never a valid message
    with pytest.raises(grpc.RpcError) as err:
        list(stream(iter([good, junk, good]), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid iotstream.v1.ReadingBatch" in err.value.details()
    assert len(stored(server, "dev-r")) == 2  # the batch before the junk was stored
    assert_still_serving(server)


def assert_still_serving(server):
    health = health_pb2_grpc.HealthStub(server.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    assert server.ingest.Send(make_batch("dev-after", [5.0]), timeout=10).accepted == 1


def test_resent_batch_is_stored_once(server):
    batch = make_batch("dev-resend", [1.0, 2.0, 3.0], seq=5)
    first = server.ingest.Send(batch, timeout=10)
    again = [r.ack for r in server.ingest.Stream(iter([batch]), timeout=10)]  # a new stream after a lost ack
    assert first.accepted == again[0].accepted == 3
    assert len(stored(server, "dev-resend")) == 3
    changed = make_batch("dev-resend", [1.0, 2.0, 4.0], seq=5)  # same seq, other readings: a new batch
    assert server.ingest.Send(changed, timeout=10).accepted == 3
    assert len(stored(server, "dev-resend")) == 6


def test_reflection_resolves_methods(server):
    """ghz and `grpcurl describe` ask reflection for service.method symbols."""
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    symbols = ["iotstream.v1.Ingest.Stream", "iotstream.v1.Query.Aggregate", "iotstream.v1.Ingest"]
    requests = [reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in symbols]
    requests.append(reflection_pb2.ServerReflectionRequest(file_containing_symbol="iotstream.v1.Ingest.Nope"))
    replies = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    for reply in replies[:3]:
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(b)
            for b in reply.file_descriptor_response.file_descriptor_proto
        ]
        assert any(f.package == "iotstream.v1" and f.service for f in files), reply
    assert replies[3].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
