"""Values bound as parameters reach chDB unchanged, however hostile."""

import pytest

from iotstream.clickhouse import open_backend

HOSTILE = [
    "a\\b",
    "it's",
    "tab\there",
    "nl\nx",
    "\\N",
    "x\\ty",
    "'; DROP TABLE readings; --",
    "\0z",
    "é😀",
    "[a,b]",
    "a'b\\'c",
    "{x:String}",
    "x" * 10_000,
    "",
]


@pytest.fixture(scope="module")
def backend(chdb_dir):
    return open_backend(data_dir=chdb_dir, database="binding_test")


@pytest.mark.parametrize("value", HOSTILE)
def test_string_round_trip(backend, value):
    assert backend.query("SELECT {x:String} AS v", {"x": value}).column("v")[0].as_py() == value


def test_array_round_trip(backend):
    assert backend.query("SELECT {x:Array(String)} AS v", {"x": HOSTILE}).column("v")[0].as_py() == HOSTILE


def test_numbers(backend):
    row = backend.query(
        "SELECT {f:Float64} AS f, {i:Int64} AS i, {b:UInt8} AS b", {"f": -1.5e-300, "i": -(2**62), "b": True}
    ).to_pylist()[0]
    assert row == {"f": -1.5e-300, "i": -(2**62), "b": 1}
