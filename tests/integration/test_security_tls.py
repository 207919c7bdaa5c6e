"""TLS and mutual TLS on the gRPC port, with a CA made in the test; auth tokens over TLS."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from conftest import ServerThread
from security_fixtures import batch, bearer, code_of, database, make_pki

from iotstream.auth import ClickHouseTokens
from iotstream.client.simulate import run_fleet
from iotstream.common.tls import ClientTLS, ServerTLS, channel
from iotstream.node import Config
from iotstream.v1 import ingest_pb2_grpc

OK = grpc.StatusCode.OK


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def send_code(target, tls: ClientTLS | None, token=None) -> grpc.StatusCode:
    with channel(target, tls) as ch:
        return code_of(
            ingest_pb2_grpc.IngestStub(ch).Send, batch("dev-tls"), timeout=5, metadata=bearer(token)
        )


@pytest.fixture(scope="module")
def tls_server(chdb_dir, pki):
    srv = ServerThread(
        Config(
            port=0,
            data_dir=chdb_dir,
            database=database(),
            tls=ServerTLS(pki.path("server.pem"), pki.path("server.key")),
        )
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def mtls_server(chdb_dir, pki):
    srv = ServerThread(
        Config(
            port=0,
            data_dir=chdb_dir,
            database=database(),
            auth=True,
            tls=ServerTLS(pki.path("server.pem"), pki.path("server.key"), pki.path("ca.pem")),
        )
    )
    srv.token = ClickHouseTokens(srv.server.store.backend).add("device", "dev-tls")
    yield srv
    srv.stop()


def test_tls_with_the_right_ca_works(tls_server, pki):
    assert send_code(tls_server.target, ClientTLS(ca=pki.path("ca.pem"))) == OK
    assert send_code(f"localhost:{tls_server.port}", ClientTLS(ca=pki.path("ca.pem"))) == OK


def test_tls_refuses_plaintext_and_untrusted_servers(tls_server, pki):
    assert send_code(tls_server.target, None) == grpc.StatusCode.UNAVAILABLE  # plaintext client
    assert send_code(tls_server.target, ClientTLS(ca=pki.path("rogue-ca.pem"))) == grpc.StatusCode.UNAVAILABLE
    # The certificate is for localhost/127.0.0.1: another name fails verification.
    wrong_name = ClientTLS(ca=pki.path("ca.pem"), server_name="elsewhere.example")
    assert send_code(tls_server.target, wrong_name) == grpc.StatusCode.UNAVAILABLE


def test_simulated_fleet_over_tls(tls_server, pki):
    summary, _ = asyncio.run(
        run_fleet(tls_server.target, 3, 60, batch=20, tls=ClientTLS(ca=pki.path("ca.pem")))
    )
    assert summary["acked"] == 180


def test_mutual_tls_needs_a_client_certificate_from_the_ca(mtls_server, pki):
    ca = pki.path("ca.pem")
    good = ClientTLS(ca=ca, cert=pki.path("client.pem"), key=pki.path("client.key"))
    rogue = ClientTLS(ca=ca, cert=pki.path("rogue-client.pem"), key=pki.path("rogue-client.key"))
    assert send_code(mtls_server.target, ClientTLS(ca=ca), mtls_server.token) == grpc.StatusCode.UNAVAILABLE
    assert send_code(mtls_server.target, rogue, mtls_server.token) == grpc.StatusCode.UNAVAILABLE
    # A good certificate opens the connection; the call still needs its token.
    assert send_code(mtls_server.target, good, None) == grpc.StatusCode.UNAUTHENTICATED
    assert send_code(mtls_server.target, good, mtls_server.token) == OK
