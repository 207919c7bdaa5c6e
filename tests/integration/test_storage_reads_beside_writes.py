"""The embedded engine answers reads on a connection of their own: a query issued while an insert runs is
answered from what was committed before, without waiting for the insert, and parameters never cross."""

import errno
import os
import threading
import time
import uuid

import numpy as np
import pyarrow as pa
import pytest
from waiting import poll

from iotstream.clickhouse import Store, open_backend

ROWS = 100_000  # one insert block: its rows become visible together, when it commits


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


# Rows from a named pipe: the insert is under way in the engine, holding the write connection, until the
# test writes them (a condition, not a margin on how long a big insert takes).
INSERT_FROM_PIPE = (
    "INSERT INTO $db.readings (device_id, metric, time, value) "
    "SELECT device_id, metric, fromUnixTimestamp64Milli(t), value "
    "FROM file({path:String}, 'CSVWithNames', 'device_id String, metric String, t Int64, value Float64')"
)


def open_when_read(pipe: str, insert: threading.Thread) -> int:
    """The pipe's write end, once the insert has opened it to read its rows."""

    def opened() -> int | None:
        try:
            fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while no one reads it
        except OSError as exc:
            if exc.errno != errno.ENXIO or not insert.is_alive():
                raise
            return None
        os.set_blocking(fd, True)
        return fd

    return poll(opened, 60, "the insert reading the pipe", every=0.005)


def test_a_read_during_an_insert_does_not_wait_for_it(store, tmp_path):
    pipe = str(tmp_path / "rows.pipe")
    os.mkfifo(pipe)
    sql = INSERT_FROM_PIPE.replace("$db", store.backend.database)
    insert = threading.Thread(target=store.backend.command, args=(sql, {"path": pipe}))
    insert.start()
    fd = open_when_read(pipe, insert)
    seen: list = []
    reader = threading.Thread(target=lambda: seen.append(stored(store, "big")))
    reader.start()
    reader.join(60)  # a read that waited for the insert would wait for ever: the rows come after it
    answered, still_inserting = not reader.is_alive(), insert.is_alive()
    now = time.time_ns() // 1_000_000
    with os.fdopen(fd, "w") as rows:
        rows.write("device_id,metric,t,value\n")
        rows.writelines(f"big,temp,{now - 10 * i},{i}\n" for i in range(ROWS))
    insert.join(120)
    reader.join(120)
    assert (answered, still_inserting, seen) == (True, True, [0])  # answered from before the insert
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
