"""Desired configuration pushed down the ingest stream, over real sockets: delivered at once on an open
stream,
after a reconnect, not again once the device reported it applied, visible in GetDevice; set through the
Admin service or the CLI; and with auth on, a device only ever sees its own."""

from __future__ import annotations

import json
import queue
import time

import grpc
import pytest
from conftest import ServerThread
from security_fixtures import bearer, database
from tcp_proxy import TcpProxy
from waiting import poll

from iotstream.auth import ClickHouseTokens
from iotstream.cli.main import main as cli
from iotstream.client.device import BlockingDeviceClient
from iotstream.node import Config
from iotstream.v1 import admin_pb2, admin_pb2_grpc
from iotstream.v1 import ingest_pb2 as pb
from iotstream.v1 import query_pb2 as qpb

FAST = {"backoff_s": 0.05, "backoff_max_s": 0.5}


def configure(srv, device: str, metadata=(), **fields) -> admin_pb2.DeviceConfigState:
    stub = admin_pb2_grpc.AdminStub(srv.channel)
    return stub.ConfigureDevice(
        admin_pb2.ConfigureDeviceRequest(device_id=device, config=pb.DeviceConfig(**fields)),
        timeout=10,
        metadata=metadata,
    )


def raw_stream(srv, hello: pb.ReadingBatch, metadata=()) -> list[pb.StreamResponse]:
    """Everything the server answers to one stream of `hello` (then the end of the stream)."""
    return list(srv.ingest.Stream(iter([hello]), timeout=10, metadata=metadata))


def test_config_reaches_the_open_stream_then_reconnects_and_is_not_sent_again(server):
    proxy = TcpProxy(server.port)
    got: queue.Queue = queue.Queue()
    client = BlockingDeviceClient(proxy.target, "cfg-1", on_config=got.put, **FAST)
    try:
        client.record("temp", 1.0)
        client.flush(timeout=10)  # connected: the stream is open
        state = configure(server, "cfg-1", sample_interval_ms=5000, metrics=["temp"], settings={"led": "on"})
        assert state.desired.version == 1
        first = got.get(timeout=10)  # on the stream that was already open, no reconnect
        assert (first.version, first.sample_interval_ms, list(first.metrics), dict(first.settings)) == (
            1,
            5000,
            ["temp"],
            {"led": "on"},
        )
        assert client.stats.reconnects == 0
        device = poll(
            lambda: (
                (
                    d := server.query.GetDevice(qpb.GetDeviceRequest(device_id="cfg-1"), timeout=10)
                ).config_reported_version
                == 1
                and d
            ),
            what="the report in GetDevice",
        )
        assert device.config_version == 1 and device.config_reported_ms >= first.set_ms

        # Set while the device is away: delivered as soon as it is back.
        proxy.refusing = True
        proxy.cut()
        configure(server, "cfg-1", sample_interval_ms=1000)
        proxy.refusing = False
        second = got.get(timeout=20)
        assert second.version == 2 and second.sample_interval_ms == 1000 and client.stats.reconnects >= 1
        # on_config runs before the version is recorded and reported: wait for both with the client still
        # open (closing it at once could drop the report, which then comes with the next stream)
        poll(lambda: client.client.buffer.applied == 2, what="version 2 applied")
        poll(
            lambda: (
                server.query.GetDevice(
                    qpb.GetDeviceRequest(device_id="cfg-1"), timeout=10
                ).config_reported_version
                == 2
            ),
            what="version 2 reported",
        )
    finally:
        client.close()
        proxy.close()
    # Once reported, a new stream gets only its ack; one that reports an older version gets the config.
    assert [r.WhichOneof("kind") for r in raw_stream(server, pb.ReadingBatch(device_id="cfg-1"))] == ["ack"]
    again = raw_stream(server, pb.ReadingBatch(device_id="cfg-1", config_applied=1))
    assert [r.WhichOneof("kind") for r in again] == ["config", "ack"] and again[0].config.version == 2


def test_device_that_never_reports_gets_the_config_on_every_stream(server):
    configure(server, "cfg-silent", settings={"mode": "eco"})
    for _ in range(2):
        replies = raw_stream(server, pb.ReadingBatch(device_id="cfg-silent"))
        assert [r.WhichOneof("kind") for r in replies] == ["config", "ack"]
        assert replies[0].config.settings["mode"] == "eco"


def test_bad_configuration_is_refused(server):
    for fields in ({"metrics": ["no spaces"]}, {"settings": {"": "x"}}):
        with pytest.raises(grpc.RpcError) as err:
            configure(server, "cfg-bad", **fields)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        configure(server, "bad id!", sample_interval_ms=1)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_cli_configures_through_the_admin_service(server, capsys):
    assert (
        cli(
            [
                "devices",
                "configure",
                "cfg-cli",
                "--target",
                server.target,
                "--sample-interval-ms",
                "250",
                "--metric",
                "temp",
                "--set",
                "a=1",
                "--set",
                "b=two",
            ]
        )
        == 0
    )
    shown = json.loads(capsys.readouterr().out)
    assert shown["desired"]["version"] == "1" and shown["desired"]["settings"] == {"a": "1", "b": "two"}
    replies = raw_stream(server, pb.ReadingBatch(device_id="cfg-cli"))
    assert replies[0].config.sample_interval_ms == 250 and list(replies[0].config.metrics) == ["temp"]
    assert cli(["devices", "config", "cfg-cli", "--target", server.target]) == 0
    assert json.loads(capsys.readouterr().out)["desired"]["version"] == "1"


@pytest.fixture(scope="module")
def secured(chdb_dir):
    srv = ServerThread(Config(port=0, data_dir=chdb_dir, database=database(), auth=True))
    registry = ClickHouseTokens(srv.server.store.backend)
    srv.tokens = {d: registry.add("device", d) for d in ("cfg-a", "cfg-b")}
    srv.tokens["admin"] = registry.add("admin", "ops")
    srv.server.auth.refresh()
    yield srv
    srv.stop()


def test_with_auth_a_device_sees_only_its_own_configuration(secured):
    admin = bearer(secured.tokens["admin"])
    configure(secured, "cfg-a", metadata=admin, settings={"who": "a"})
    configure(secured, "cfg-b", metadata=admin, settings={"who": "b"})
    for device in ("cfg-a", "cfg-b"):
        got: queue.Queue = queue.Queue()
        with BlockingDeviceClient(
            secured.target, device, token=secured.tokens[device], on_config=got.put
        ) as c:
            c.record("temp", 1.0, time.time_ns() // 1_000_000)
            c.flush(timeout=10)
            assert got.get(timeout=10).settings["who"] == device[-1]
        assert got.empty()
    # A device's stream carries its token's configuration, even when it claims another device in a batch
    # (that batch ends the call), and a device token cannot read configurations through Admin.
    configure(secured, "cfg-a", metadata=admin, settings={"who": "a2"})
    replies = []
    with pytest.raises(grpc.RpcError) as err:
        for r in secured.ingest.Stream(
            iter([pb.ReadingBatch(device_id="cfg-b")]), timeout=10, metadata=bearer(secured.tokens["cfg-a"])
        ):
            replies.append(r)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert [r.config.settings["who"] for r in replies] == ["a2"]
    stub = admin_pb2_grpc.AdminStub(secured.channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetDeviceConfig(
            admin_pb2.GetDeviceConfigRequest(device_id="cfg-b"),
            timeout=10,
            metadata=bearer(secured.tokens["cfg-a"]),
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_cli_on_the_store_reaches_an_open_stream_by_the_refresh(server, capsys):
    got: queue.Queue = queue.Queue()
    with BlockingDeviceClient(server.target, "cfg-store", on_config=got.put) as client:
        client.record("temp", 1.0)
        client.flush(timeout=10)
        assert (
            cli(
                [
                    "devices",
                    "configure",
                    "cfg-store",
                    "--data-dir",
                    server.config.data_dir,
                    "--database",
                    server.config.database,
                    "--set",
                    "via=store",
                ]
            )
            == 0
        )
        assert json.loads(capsys.readouterr().out)["desired"]["version"] == "1"
        assert got.get(timeout=20).settings["via"] == "store"  # no Admin call: the node's refresh found it
