"""Bounded fuzz of the real server (bench/fuzz.py's rounds): hostile bytes and absurd messages into Send and
Stream, random values in every Query field. No crash, no hang, good neighbours stored.

The longer run is `python bench/fuzz.py --minutes N`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import grpc
import pytest
from conftest import ServerThread
from security_fixtures import database

from iotstream.node import Config

FUZZ = Path(__file__).resolve().parents[2] / "bench" / "fuzz.py"
INGEST_OK = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}


def load_fuzz():
    if "iotstream_bench_fuzz" not in sys.modules:
        spec = importlib.util.spec_from_file_location("iotstream_bench_fuzz", FUZZ)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["iotstream_bench_fuzz"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["iotstream_bench_fuzz"]


@pytest.fixture(scope="module")
def target(chdb_dir):
    srv = ServerThread(Config(port=0, data_dir=chdb_dir, database=database()))
    yield srv
    srv.stop()


def statuses(report, kind) -> set[str]:
    return {k.split(":", 1)[1] for k in report.statuses if k.startswith(kind + ":")}


def test_fuzz_ingest(target):
    fuzz = load_fuzz()
    f = fuzz.Fuzzer(target.target, seed=1234)
    try:
        f.send_bytes(160)
        f.neighbour()
        f.stream_bytes(40)
        f.neighbour()
        f.absurd(100)
        f.neighbour()
        f.check_alive()
        target.settle()  # an Ack means durable in the log; reads run beside the inserts, so wait for them
        stored = fuzz.neighbour_stored(target.target, "fuzz-neighbour")
    finally:
        f.close()
    r = f.report
    print("ingest fuzz:", r.summary()["inputs"], "crashes", len(r.crashes), "hangs", len(r.hangs))
    assert sum(r.inputs.values()) == 300
    assert r.crashes == [] and r.hangs == []
    for kind in ("send_bytes", "stream_bytes", "send_absurd", "stream_absurd"):
        assert statuses(r, kind) <= INGEST_OK, (kind, statuses(r, kind))
    assert "INVALID_ARGUMENT" in statuses(r, "send_bytes")  # junk was seen as junk
    assert stored == r.neighbour_acked == 15


QUERIES = 100


@pytest.fixture(scope="module")
def query_report(target):
    """One run of random Query requests, judged by the two tests below."""
    fuzz = load_fuzz()
    f = fuzz.Fuzzer(target.target, seed=1)  # this seed hits the enum bugs named below
    try:
        f.neighbour()
        f.query(QUERIES)
        f.neighbour()
        f.check_alive()
    finally:
        f.close()
    return f.report


def test_fuzz_query_never_hangs_or_downs_the_server(query_report):
    r = query_report
    print("query fuzz:", r.summary()["inputs"], "statuses", dict(r.statuses), "crashes", len(r.crashes))
    assert r.inputs["query"] == QUERIES
    assert r.hangs == []
    assert not [c for c in r.crashes if c["kind"] == "server"]


def test_fuzz_query_answers_with_proper_statuses(query_report):
    r = query_report
    assert r.crashes == [], r.crashes[:3]
    assert statuses(r, "query") <= {
        "OK",
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "OUT_OF_RANGE",
        "FAILED_PRECONDITION",
    }


def test_fuzz_ingest_with_auth_on(chdb_dir):
    """The same hostile input from a device with a valid token: content checks still hold behind auth."""
    from iotstream.auth import ClickHouseTokens

    srv = ServerThread(Config(port=0, data_dir=chdb_dir, database=database(), auth=True))
    fuzz = load_fuzz()
    try:
        token = ClickHouseTokens(srv.server.store.backend).add("device", "fuzz-dev")
        md = (("authorization", f"Bearer {token}"),)
        f = fuzz.Fuzzer(srv.target, seed=7, ingest_md=md, device="fuzz-dev")
        try:
            f.send_bytes(60)
            f.absurd(60)
            f.neighbour()
            f.check_alive()
        finally:
            f.close()
        r = f.report
        assert r.crashes == [] and r.hangs == []
        assert statuses(r, "send_absurd") | statuses(r, "stream_absurd") <= INGEST_OK | {"PERMISSION_DENIED"}
        assert "PERMISSION_DENIED" in statuses(r, "send_absurd") | statuses(r, "stream_absurd")  # other ids
        with pytest.raises(grpc.RpcError) as err:  # and without a token nothing gets in
            srv.channel.unary_unary("/iotstream.v1.Ingest/Send")(b"\x00", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        srv.stop()
