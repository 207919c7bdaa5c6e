"""Auth over real gRPC: device tokens for Ingest, reader/admin tokens for Query, statuses and counters."""

from __future__ import annotations

import json

import grpc
import pytest
from conftest import ServerThread
from grpc_health.v1 import health_pb2, health_pb2_grpc
from security_fixtures import batch, bearer, code_of, database
from waiting import poll

from iotstream.auth import ClickHouseTokens
from iotstream.node import Config
from iotstream.v1 import query_pb2 as qpb

OK, UNAUTH, DENIED = grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def secured(chdb_dir):
    srv = ServerThread(Config(port=0, data_dir=chdb_dir, database=database(), auth=True))
    registry = ClickHouseTokens(srv.server.store.backend)
    srv.tokens = {
        "dev-a": registry.add("device", "dev-a"),
        "dev-b": registry.add("device", "dev-b"),
        "reader": registry.add("reader", "dash"),
        "admin": registry.add("admin", "ops"),
    }
    srv.registry = registry
    yield srv
    srv.stop()


def stored(srv, device) -> int:
    return srv.sql("SELECT count() AS n FROM $db.readings WHERE device_id = {d:String}", {"d": device})[0][
        "n"
    ]


def test_no_token_or_bad_token_is_unauthenticated(secured):
    send, stats = secured.ingest.Send, secured.query.GetStats
    assert code_of(send, batch("dev-a"), timeout=10) == UNAUTH
    assert code_of(send, batch("dev-a"), timeout=10, metadata=bearer("iot_madeup")) == UNAUTH
    assert (
        code_of(send, batch("dev-a"), timeout=10, metadata=(("authorization", "Basic Zm9vOmJhcg=="),))
        == UNAUTH
    )
    assert code_of(secured.ingest.Stream, iter([batch("dev-a")]), timeout=10) == UNAUTH
    assert code_of(stats, qpb.GetStatsRequest(), timeout=10) == UNAUTH
    assert (
        code_of(stats, qpb.GetStatsRequest(), timeout=10, metadata=bearer(secured.tokens["dev-a"] + "x"))
        == UNAUTH
    )
    assert stored(secured, "dev-a") == 0


def test_device_token_sends_only_its_own_batches(secured):
    t = secured.tokens
    ack = secured.ingest.Send(batch("dev-a", 4), timeout=10, metadata=bearer(t["dev-a"]))
    assert ack.accepted == 4
    assert code_of(secured.ingest.Send, batch("dev-b", 5), timeout=10, metadata=bearer(t["dev-a"])) == DENIED
    assert stored(secured, "dev-a") == 4 and stored(secured, "dev-b") == 0

    # A stream: the batches before the stranger's are acked and stored, then the call ends.
    acks = []
    stream = secured.ingest.Stream(
        iter([batch("dev-b", 2, seq=s) for s in (1, 2, 3)] + [batch("dev-a", 2, seq=4)]),
        timeout=10,
        metadata=bearer(t["dev-b"]),
    )
    with pytest.raises(grpc.RpcError) as err:
        for r in stream:
            acks.append(r.ack.seq)
    assert err.value.code() == DENIED and "dev-a" in err.value.details()
    assert acks == [1, 2, 3] and stored(secured, "dev-b") == 6


def test_roles_cannot_cross(secured):
    t = secured.tokens
    for role in ("reader", "admin"):  # query tokens cannot ingest
        assert code_of(secured.ingest.Send, batch("dev-a"), timeout=10, metadata=bearer(t[role])) == DENIED
    assert (
        code_of(secured.query.GetStats, qpb.GetStatsRequest(), timeout=10, metadata=bearer(t["dev-a"]))
        == DENIED
    )
    for role in ("reader", "admin"):
        assert (
            code_of(secured.query.ListDevices, qpb.ListDevicesRequest(), timeout=10, metadata=bearer(t[role]))
            == OK
        )


def test_reader_cannot_acknowledge(secured):
    ack = secured.channel.unary_unary("/iotstream.v1.Query/AcknowledgeAnomaly")
    assert code_of(ack, b"", timeout=10, metadata=bearer(secured.tokens["reader"])) == DENIED
    assert code_of(ack, b"", timeout=10, metadata=bearer(secured.tokens["dev-a"])) == DENIED
    assert code_of(ack, b"", timeout=10) == UNAUTH
    # The admin gets past auth: whatever the RPC answers to an empty request, it is not an auth refusal.
    assert code_of(ack, b"", timeout=10, metadata=bearer(secured.tokens["admin"])) not in (DENIED, UNAUTH)


def test_health_and_reflection_need_no_token(secured):
    health = health_pb2_grpc.HealthStub(secured.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        == health_pb2.HealthCheckResponse.SERVING
    )


def test_token_added_while_running_is_taken_and_revoked_one_is_not(secured):
    token = secured.registry.add("device", "dev-late")
    # An unknown token re-reads the registry at most once a second: a device added just now gets in on a
    # retry within about a second, long before the periodic refresh.
    send = lambda: code_of(secured.ingest.Send, batch("dev-late"), timeout=10, metadata=bearer(token))  # noqa: E731
    poll(lambda: send() == OK, timeout=2.5, every=0.2, what="new device token accepted")
    assert stored(secured, "dev-late") == 3
    assert secured.registry.revoke("device", "dev-late") == 1
    secured.server.auth.refresh()  # what the node does every auth_refresh_s
    assert code_of(secured.ingest.Send, batch("dev-late"), timeout=10, metadata=bearer(token)) == UNAUTH


def test_refusals_are_counted_in_stats(secured):
    t = secured.tokens
    # live_stats() is what GetStats' `rejected` map is filled from.
    before = dict(secured.server.live_stats()["rejected"])
    code_of(secured.ingest.Send, batch("dev-a"), timeout=10)
    code_of(secured.ingest.Send, batch("dev-a", 7), timeout=10, metadata=bearer(t["dev-b"]))
    code_of(secured.query.GetStats, qpb.GetStatsRequest(), timeout=10, metadata=bearer(t["dev-b"]))
    after = dict(secured.server.live_stats()["rejected"])
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert delta["UNAUTHENTICATED_CALLS"] == 1
    assert delta["PERMISSION_DENIED_CALLS"] == 1  # the device calling Query
    assert delta["WRONG_DEVICE"] == 7  # readings of the batch sent with another device's token


def test_registry_stores_only_hashes(secured):
    rows = secured.sql("SELECT * FROM $db.auth_tokens")
    text = repr(rows)
    assert rows and all(tok not in text for tok in secured.tokens.values())
    assert all(len(r["token_sha256"]) == 64 for r in rows)


def test_open_server_still_accepts_anyone(server):
    assert server.ingest.Send(batch("dev-open"), timeout=10).accepted == 3
    assert server.query.GetDevice(qpb.GetDeviceRequest(device_id="dev-open"), timeout=10).readings == 3


def test_server_streaming_query_needs_a_reader_token(secured):
    watch = secured.channel.unary_stream("/iotstream.v1.Query/WatchAnomalies")
    assert code_of(lambda: list(watch(b"", timeout=5))) == UNAUTH
    assert code_of(lambda: list(watch(b"", timeout=5, metadata=bearer(secured.tokens["dev-a"])))) == DENIED
    # A reader gets the stream: it runs until the deadline (nothing to watch) or answers, but is not refused.
    assert code_of(lambda: list(watch(b"", timeout=1, metadata=bearer(secured.tokens["reader"])))) not in (
        UNAUTH,
        DENIED,
    )


def test_admin_manages_tokens_over_grpc(secured):
    from iotstream.v1 import admin_pb2 as apb
    from iotstream.v1 import admin_pb2_grpc

    admin = admin_pb2_grpc.AdminStub(secured.channel)
    as_admin = bearer(secured.tokens["admin"])
    for who in ("reader", "dev-a"):  # only admins manage tokens
        assert (
            code_of(
                admin.AddToken,
                apb.AddTokenRequest(role="device", subject="dev-x"),
                timeout=10,
                metadata=bearer(secured.tokens[who]),
            )
            == DENIED
        )
    assert (
        code_of(admin.AddToken, apb.AddTokenRequest(role="root", subject="x"), timeout=10, metadata=as_admin)
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    token = admin.AddToken(
        apb.AddTokenRequest(role="device", subject="dev-rpc"), timeout=10, metadata=as_admin
    ).token
    assert secured.ingest.Send(batch("dev-rpc"), timeout=10, metadata=bearer(token)).accepted == 3  # at once
    listed = admin.ListTokens(apb.ListTokensRequest(role="device"), timeout=10, metadata=as_admin).tokens
    assert "dev-rpc" in {t.subject for t in listed} and all(t.role == "device" for t in listed)
    assert token not in repr(listed)
    assert (
        admin.RevokeTokens(
            apb.RevokeTokensRequest(role="device", subject="dev-rpc"), timeout=10, metadata=as_admin
        ).revoked
        == 1
    )
    assert code_of(secured.ingest.Send, batch("dev-rpc"), timeout=10, metadata=bearer(token)) == UNAUTH


def test_cli_devices_add_against_a_running_server(secured, capsys):
    from iotstream.cli.main import main

    admin = secured.tokens["admin"]
    assert main(["devices", "add", "dev-cli", "--target", secured.target, "--token", admin, "--json"]) == 0
    token = json.loads(capsys.readouterr().out)["dev-cli"]
    assert secured.ingest.Send(batch("dev-cli"), timeout=10, metadata=bearer(token)).accepted == 3
    assert main(["devices", "list", "--target", secured.target, "--token", admin, "--json"]) == 0
    assert "dev-cli" in {json.loads(line)["subject"] for line in capsys.readouterr().out.splitlines()}
    assert (
        main(["devices", "add", "dev-cli2", "--target", secured.target, "--token", secured.tokens["reader"]])
        == 1
    )
