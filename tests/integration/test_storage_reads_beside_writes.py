"""The embedded engine answers reads on a connection of their own: a query issued while a big insert runs is
answered from what was committed before, without waiting for the insert, and parameters never cross."""

import threading
import time
import uuid

import numpy as np
import pyarrow as pa
import pytest

from iotstream.clickhouse import Store, open_backend

ROWS = 1_000_000  # one insert block: its rows become visible together, when it commits


def chunk(rows: int, device: str) -> pa.Table:
    """`rows` readings of one device, one every 10 ms, ending now (inside retention)."""
    end = time.time_ns() // 1_000_000
    return pa.table(
        {
            "device_id": pa.array([device] * rows),
            "metric": pa.array(["temp"] * rows),
            "time": pa.array(end - 10 * np.arange(rows, 0, -1), pa.timestamp("ms", tz="UTC")),
            "value": pa.array(np.arange(rows, dtype=np.float64)),
        }
    )


@pytest.fixture
def store(chdb_dir):
    s = Store(open_backend(data_dir=chdb_dir, database="t_beside_" + uuid.uuid4().hex[:8]))
    s.migrate()
    yield s
    s.backend.close()


def stored(store: Store, device: str) -> int:
    return store._query(
        "SELECT count() AS n FROM $db.readings WHERE device_id = {d:String}", {"d": device}
    ).to_pylist()[0]["n"]


def test_a_read_during_a_big_insert_does_not_wait_for_it(store):
    writing = store.backend._client._backend._handle.lock  # held while a write statement runs
    data = chunk(ROWS, "big")
    insert = threading.Thread(target=store.insert_readings, args=(data, "big-1"))
    insert.start()
    deadline = time.monotonic() + 60
    while not writing.locked() and time.monotonic() < deadline:
        time.sleep(0.0005)  # polling a condition: the insert has the write connection
    seen = stored(store, "big")
    still_inserting = insert.is_alive()
    insert.join(120)
    assert (seen, still_inserting) == (0, True)  # answered before the insert committed, not after it
    assert stored(store, "big") == ROWS


def test_parameters_never_cross_between_the_connections(store):
    wrong: list = []

    def ask(tag: str, run, n: int = 200):
        for i in range(n):
            value = f"{tag}-{i}"
            got = run("SELECT {v:String} AS v", {"v": value}).to_pylist()[0]["v"]
            if got != value:
                wrong.append((value, got))

    writes = store.backend._client  # the write connection, asked directly beside the read one
    threads = [
        threading.Thread(target=ask, args=("read", store.backend.query)),
        threading.Thread(target=ask, args=("write", lambda sql, p: writes.query_arrow(sql, parameters=p))),
        threading.Thread(target=store.insert_readings, args=(chunk(200_000, "beside"), "beside-1")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert wrong == []
    assert stored(store, "beside") == 200_000
