"""The local log's snapshots on a real SQLite file: written a chunk a transaction, so appends commit between
the chunks of a big one; kill -9 at any point leaves one whole snapshot; an older log's snapshot loads."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import threading

from waiting import poll

from iotstream.bus import local
from iotstream.bus.local import LocalLog

MB = 1024 * 1024


def pointer(path: str) -> bytes | None:
    with sqlite3.connect(path, timeout=60) as db:
        row = db.execute("SELECT value FROM state WHERE key = '0/snapshot'").fetchone()
    return None if row is None else row[0]


def chunk_rows(path: str) -> int:
    with sqlite3.connect(path, timeout=60) as db:
        return db.execute("SELECT count(*) FROM state WHERE key LIKE '0/snapshot/%'").fetchone()[0]


def test_appends_commit_between_the_chunks_of_a_big_snapshot(tmp_path):
    """Oracle: at the moment an append is durable, the snapshot begun before it is not in force yet. When the
    whole snapshot was one transaction, the append waited for it (a 300 MB state held appends for 2 s)."""
    path = str(tmp_path / "log.sqlite")
    seen: list[bytes | None] = []
    log = LocalLog(path, on_commit=lambda _offset: seen.append(pointer(path)))
    saver = threading.Thread(target=log.save_snapshot, args=(0, 1, b"s" * (256 * MB)))
    saver.start()
    poll(lambda: chunk_rows(path) >= 1, what="the snapshot's first chunk written", every=0.005)

    async def append() -> None:
        await (await log.put(b"reading", 1))

    asyncio.run(append())
    saver.join()
    assert seen == [None]  # durable while the snapshot was still being written
    assert pointer(path) is not None and log.load_state(0)[0] == b"s" * (256 * MB)
    log.close()
    log.close_reader()


SAVER = """
import sys
from iotstream.bus.local import LocalLog
log = LocalLog(sys.argv[1])
log.save_snapshot(0, 1, b"A" * (20 * 1024 * 1024))
print("A", flush=True)
log.save_snapshot(0, 1, b"B" * (200 * 1024 * 1024))
print("B", flush=True)
"""


def kill_when(path: str, ready) -> None:
    """Run SAVER on `path`, kill -9 it once snapshot A is saved and `ready()` holds."""
    proc = subprocess.Popen([sys.executable, "-c", SAVER, path], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "A\n"
        poll(ready, timeout=60, what="the point to kill at", every=0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)


def test_kill_9_during_a_snapshot_leaves_one_whole_snapshot(tmp_path):
    a, b = b"A" * (20 * MB), b"B" * (200 * MB)
    a_chunks = -(-len(a) // local.SNAPSHOT_CHUNK_BYTES)
    first = str(tmp_path / "first.sqlite")  # killed while B's chunks are written: A is in force
    kill_when(first, lambda: chunk_rows(first) > a_chunks)
    log = LocalLog(first)
    assert log.load_state(0)[:2] == (a, 1)
    log.save_snapshot(0, 2, b"C")  # what the crash left is cleaned up by the next snapshot
    assert chunk_rows(first) == 1 and log.load_state(0)[:2] == (b"C", 2)
    log.close()
    log.close_reader()

    second = str(tmp_path / "second.sqlite")  # killed once the pointer moved: B is in force, whole
    kill_when(second, lambda: (p := pointer(second)) is not None and p.split()[2] != b"%d" % a_chunks)
    log = LocalLog(second)
    assert log.load_state(0)[:2] == (b, 1)
    log.close()
    log.close_reader()


def test_a_log_written_before_snapshot_generations_still_loads(tmp_path):
    path = str(tmp_path / "log.sqlite")
    LocalLog(path).close()
    with sqlite3.connect(path) as db:  # the former layout: the offset alone, chunks `0/snapshot/NNNNNN`
        db.executemany(
            "INSERT INTO state VALUES (?, ?)",
            [("0/snapshot", b"5"), ("0/snapshot/000000", b"old "), ("0/snapshot/000001", b"state")],
        )
        # chunks of a later save a crash cut short, under a generation that starts with a digit
        db.execute("INSERT INTO state VALUES ('0/snapshot/0a1b2c3d4e5f/000000', x'00')")
    log = LocalLog(path)
    assert log.load_state(0)[:2] == (b"old state", 5)
    log.save_snapshot(0, 6, b"new")
    assert log.load_state(0)[:2] == (b"new", 6) and chunk_rows(path) == 1
    log.close()
    log.close_reader()
