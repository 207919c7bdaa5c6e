"""The chDB backend under concurrent callers: each statement gets its own parameters, and reads during
inserts neither hang nor see half an insert."""

import threading
import uuid

import pyarrow as pa
import pytest

from iotstream.clickhouse import open_backend


@pytest.fixture(scope="module")
def backend(chdb_dir):
    b = open_backend(data_dir=chdb_dir, database="t_backend_" + uuid.uuid4().hex[:8])
    b.command(f"CREATE TABLE {b.database}.t (k UInt32, v String) ENGINE = MergeTree ORDER BY k")
    yield b
    b.close()


def run_threads(target, n):
    errors = []

    def wrapped(i):
        try:
            target(i)
        except Exception as exc:  # collected and asserted below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a statement hung"
    assert errors == []


def test_parameters_stay_with_their_statement(backend):
    def worker(i):
        for j in range(150):
            want = f"thread-{i}-{j}"
            got = backend.query("SELECT {x:String} AS x, {n:UInt32} AS n", {"x": want, "n": j}).to_pylist()
            assert got == [{"x": want, "n": j}]

    run_threads(worker, 4)


def test_reads_during_inserts(backend):
    rows = 20_000
    table = f"{backend.database}.t"

    def worker(i):
        if i == 0:
            for j in range(20):
                data = pa.table({"k": pa.array(range(rows), pa.uint32()), "v": [f"b{j}"] * rows})
                backend.insert(table, data)
        else:
            for _ in range(60):
                counts = backend.query(f"SELECT v, count() AS n FROM {table} GROUP BY v").to_pylist()
                assert all(r["n"] == rows for r in counts)  # inserts are atomic per block

    run_threads(worker, 3)
    assert backend.query(f"SELECT count() AS n FROM {table}").column("n")[0].as_py() == 20 * rows
