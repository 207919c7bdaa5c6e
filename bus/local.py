"""The durable local log that stands in for a Kafka partition in the embedded mode.

One SQLite database in WAL mode with `synchronous=FULL` (standard library; a proven store rather than a
new file format). Tables:

* `log(offset INTEGER PRIMARY KEY AUTOINCREMENT, readings, payload)`: one row per accepted batch, the
  serialized ReadingBatch; offsets only grow, even across truncation and restarts;
* `state(key, value)`: the processor's chunk intents and snapshots (processor.loop). A snapshot's chunks
  are written under a new generation, one short transaction each, so the appends' group commits go on
  between them; then one transaction points `<p>/snapshot` at that generation, clears the intents and
  deletes the rows it covers; then the former generation's chunks are deleted, a chunk a transaction. A
  crash at any point leaves one whole snapshot: the former one until the pointer moves, then the new one;
* `dead_letters(offset, reason, payload)` and `meta(key, value)` (the log's id, which names the
  deduplication tokens so a recreated log never reuses a token of an old one).

Group commit: one writer thread takes every batch appended since its last commit, writes them in one
transaction and commits (SQLite fsyncs the WAL before COMMIT returns), then resolves their futures, and
only then does ingest send their Acks. Under load the batches that arrive during one fsync share the next;
an idle single batch is committed at once, never held back for company.

The processor's writes (intents, snapshots, dead letters) and the appends take turns on one lock of this
process (`_writing`) rather than meeting in SQLite's: SQLite's busy handler sleeps 1, 2, 5, 10, 15, 20 ...
ms between tries, so an append that found the processor's intent being fsynced waited 10-70 ms more than
the fsync itself (measured under `bench.e2e --rate 143000`: 45 of 3,033 group commits; docs/benchmarks.md).

Bounded: the rows not yet truncated plus those waiting for the writer may hold at most `max_bytes` of
payload. At the cap, or while the disk is full, `put` waits (so ingest stops reading its streams and gRPC
flow control slows the device) and after `unavailable_after_s` raises QueueUnavailable; nothing acked is
dropped. Rows are deleted once a processor snapshot covers them (`save_snapshot`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MAX_BYTES = 512 * 1024 * 1024
UNAVAILABLE_AFTER_S = 30.0
MAX_GROUP_BYTES = 16 * 1024 * 1024  # one commit's worth: bounds the time a transaction holds the lock
# A snapshot chunk, one transaction (~50 ms to write and fsync): the longest an append waits behind a
# snapshot, whatever its size (a whole 300 MB state in one transaction held appends for 2 s).
SNAPSHOT_CHUNK_BYTES = 8 * 1024 * 1024


class QueueUnavailable(Exception):
    """The queue stayed full (or its broker away) for longer than a device should wait."""


@dataclass
class _Append:
    payload: bytes
    readings: int
    done: asyncio.Future = field(repr=False)
    offset: int = -1
    at: float = field(default_factory=time.monotonic)  # when ingest handed it over (for the lag)


class Record:
    """One log row with the accessors of a confluent_kafka Message, so the processor loop reads both alike."""

    __slots__ = ("_offset", "_value", "_topic")

    def __init__(self, topic: str, offset: int, value: bytes):
        self._topic, self._offset, self._value = topic, offset, value

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return b""

    def error(self):
        return None


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit: a commit is on disk
    db.execute("PRAGMA secure_delete=OFF")  # a truncation writes page headers, not the freed pages
    return db


class LocalLog:
    """`put` (ingest) appends and resolves once durable; `read`/`save_snapshot` (processor) as a partition."""

    def __init__(
        self,
        path: str,
        max_bytes: int = MAX_BYTES,
        unavailable_after_s: float = UNAVAILABLE_AFTER_S,
        on_commit: Callable[[int], None] | None = None,
        on_death: Callable[[str], None] | None = None,
    ):
        self.path, self.max_bytes, self.unavailable_after_s = path, max_bytes, unavailable_after_s
        self.on_commit = on_commit  # test hook: called with the last durable offset after each commit
        self.on_death = on_death  # the writer thread died (a bug): the node must say so
        self._writing = threading.Lock()  # one SQLite writer at a time, handed over without busy sleeps
        self._w = _connect(path)
        self._w.executescript("""
            CREATE TABLE IF NOT EXISTS log (offset INTEGER PRIMARY KEY AUTOINCREMENT, readings INTEGER NOT
            NULL,
                                            payload BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS dead_letters (offset INTEGER PRIMARY KEY, reason TEXT, payload BLOB);
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """)
        self._w.execute("INSERT OR IGNORE INTO meta VALUES ('id', ?)", (uuid.uuid4().hex[:12],))
        self.topic = "log-" + self._w.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()[0]
        self._r = _connect(path)  # the processor's own connection: WAL readers never wait for the writer
        nbytes, readings, last = self._w.execute(
            "SELECT COALESCE(SUM(length(payload)), 0), COALESCE(SUM(readings), 0), MAX(offset) FROM log"
        ).fetchone()
        self.bytes = nbytes  # payload held: rows not truncated yet, plus appends not yet committed
        self.depth = readings  # readings not yet processed: rows past the processor's progress, plus appends
        self.durable_offset = last or 0
        first = self._w.execute("SELECT MIN(offset) FROM log").fetchone()[0]
        self._processed = first if first is not None else self.durable_offset + 1
        # (last offset, append time) of the rows on disk not yet processed, oldest first: the queue's lag.
        # The rows found at start count from the start.
        self._ages: collections.deque[tuple[int, float]] = collections.deque(
            [(last, time.monotonic())] if last is not None and last >= self._processed else []
        )
        self.closed = False
        self._pending: list[_Append] = []
        self._committing = False  # the writer holds a group taken from _pending
        self._commits = 0  # groups the writer has finished
        # One lock, two waits: the writer's for appends, the processor's (`read`) for commits, so an append
        # wakes only the writer.
        lock = threading.RLock()
        self._cv = threading.Condition(lock)
        self._durable = threading.Condition(lock)
        self._space = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer = threading.Thread(target=self._write_loop, name="local-log-writer", daemon=True)
        self._writer.start()

    # ---- ingest side ------------------------------------------------------------------------------

    async def put(self, payload: bytes, readings: int, key: str = "") -> asyncio.Future:
        """Append a batch; returns the future resolved once it is on disk (`key` orders batches in Kafka;
        one log keeps them all in order anyway)."""
        if self.closed:
            raise QueueUnavailable("the local log is closed (server shutting down)")
        self._loop = asyncio.get_running_loop()
        give_up = time.monotonic() + self.unavailable_after_s
        # A batch larger than the whole cap still goes in alone, so it cannot wait forever.
        while self.bytes > 0 and self.bytes + len(payload) > self.max_bytes:
            left = give_up - time.monotonic()
            if left <= 0:
                raise QueueUnavailable(
                    f"local log full ({self.bytes} of {self.max_bytes} bytes) for "
                    f"{self.unavailable_after_s:.0f} s: storage is not keeping up; retry later"
                )
            self._space.clear()
            try:
                await asyncio.wait_for(self._space.wait(), min(left, 0.5))
            except TimeoutError:
                pass
        item = _Append(payload, readings, self._loop.create_future())
        with self._cv:
            self.bytes += len(payload)
            self.depth += readings
            self._pending.append(item)
            if len(self._pending) == 1:  # else the writer has been woken already and takes them all
                self._cv.notify()
        return item.done

    def _write_loop(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._pending and not self.closed:
                        self._cv.wait()
                    if not self._pending:
                        return
                    group: list[_Append] = []
                    size = 0
                    while self._pending and (
                        not group or size + len(self._pending[0].payload) <= MAX_GROUP_BYTES
                    ):
                        group.append(self._pending.pop(0))
                        size += len(group[-1].payload)
                    self._committing = True
                try:
                    self._commit(group)
                finally:
                    with self._cv:
                        self._committing = False
                        self._commits += 1
                        self._durable.notify_all()
        except Exception as exc:
            log.exception("the local log's writer died")
            self._fail_all(exc)
            if self.on_death is not None:
                self.on_death(f"the local log's writer died: {exc}")

    def _commit(self, group: list[_Append]) -> None:
        """Write and fsync one group; on a full or failing disk retry (the devices wait) until
        `unavailable_after_s`, then fail the group: those batches were never acked."""
        give_up = time.monotonic() + self.unavailable_after_s
        delay = 0.05
        while True:
            try:
                with self._writing:
                    self._append(group)
                break
            except sqlite3.OperationalError as exc:
                if time.monotonic() > give_up:
                    log.error(
                        "local log: %d batches not written (%s); the devices get UNAVAILABLE", len(group), exc
                    )
                    self._release(group)
                    self._settle(group, QueueUnavailable(f"local log cannot write ({exc}); retry later"))
                    return
                log.warning("local log: commit failed (%s); retrying in %.2f s", exc, delay)
                time.sleep(
                    delay
                )  # the writer thread's own backoff; nothing waits on this thread but the group
                delay = min(delay * 2, 1.0)
        self.durable_offset = group[-1].offset
        with self._cv:
            self._ages.extend((it.offset, it.at) for it in group)
        if self.on_commit is not None:
            self.on_commit(self.durable_offset)
        self._settle(group, None)
        with self._cv:
            self._durable.notify_all()  # wakes a processor waiting in `read`

    def _append(self, group: list[_Append]) -> None:
        try:
            self._w.execute("BEGIN IMMEDIATE")
            for item in group:
                item.offset = int(
                    self._w.execute(
                        "INSERT INTO log (readings, payload) VALUES (?, ?)", (item.readings, item.payload)
                    ).lastrowid
                    or 0
                )
            self._w.execute("COMMIT")
        except sqlite3.OperationalError:
            if self._w.in_transaction:
                self._w.execute("ROLLBACK")
            raise

    def _settle(self, group: list[_Append], exc: Exception | None) -> None:
        def resolve():
            for item in group:
                if item.done.done():
                    continue
                if exc is None:
                    item.done.set_result(None)
                else:
                    item.done.set_exception(exc)

        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(resolve)

    def _release(self, group: list[_Append]) -> None:
        with self._cv:
            self.bytes -= sum(len(it.payload) for it in group)
            self.depth -= sum(it.readings for it in group)
        self._wake_putters()

    def _wake_putters(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._space.set)

    def _fail_all(self, exc: Exception) -> None:
        with self._cv:
            group, self._pending = self._pending, []
        self._release(group)
        self._settle(group, QueueUnavailable(f"local log failed: {exc}"))

    def close(self) -> None:
        """No more puts; what was appended is committed first (its acks go out). The processor may still
        read what is there, until `close_reader`."""
        with self._cv:
            self.closed = True
            self._cv.notify_all()
            self._durable.notify_all()
        self._writer.join()
        self._w.close()

    def close_reader(self) -> None:
        self._r.close()

    # ---- processor side ---------------------------------------------------------------------------

    def read(self, from_offset: int, max_records: int, timeout: float) -> list[Record]:
        """Up to `max_records` durable rows from `from_offset` on; waits up to `timeout` for the first."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self.durable_offset < from_offset and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._durable.wait(left)
        rows = self._r.execute(
            "SELECT offset, payload FROM log WHERE offset >= ? ORDER BY offset LIMIT ?",
            (from_offset, max_records),
        ).fetchall()
        return [Record(self.topic, offset, payload) for offset, payload in rows]

    def lag_ms(self) -> int:
        """Age of the oldest batch acked or waiting for the disk and not yet processed (0: none)."""
        with self._cv:
            oldest = [
                t
                for t in (
                    self._ages[0][1] if self._ages else None,
                    self._pending[0].at if self._pending else None,
                )
                if t is not None
            ]
        return int((time.monotonic() - min(oldest)) * 1000) if oldest else 0

    def end_offset(self) -> int:
        """The offset the next append gets (the processor has caught up when it reads from here)."""
        return self.durable_offset + 1

    def commit(self, next_offset: int) -> None:
        """The processor stored every row before `next_offset` (progress only: rows go at the next
        snapshot)."""
        if next_offset <= self._processed:
            return
        (readings,) = self._r.execute(
            "SELECT COALESCE(SUM(readings), 0) FROM log WHERE offset >= ? AND offset < ?",
            (self._processed, next_offset),
        ).fetchone()
        self._processed = next_offset
        with self._cv:
            self.depth -= readings
            while self._ages and self._ages[0][0] < next_offset:
                self._ages.popleft()

    def save_snapshot(self, partition: int, next_offset: int, data: bytes) -> None:
        """Store a state snapshot covering the rows before `next_offset`, clear the intents, and delete
        those rows. The pointer to the new generation, the intents and the deletion share one transaction:
        the log never lacks a row the snapshot in force does not cover."""
        prefix, generation = f"{partition}/snapshot", uuid.uuid4().hex[:12]
        starts = range(0, max(len(data), 1), SNAPSHOT_CHUNK_BYTES)
        view = memoryview(data)  # chunks without copying the state
        db = self._r
        for i, at in enumerate(starts):
            self._let_appends_first()
            with self._writing:
                db.execute(
                    "INSERT INTO state VALUES (?, ?)",
                    (f"{prefix}/{generation}/{i:06d}", view[at : at + SNAPSHOT_CHUNK_BYTES]),
                )
        self._let_appends_first()
        with self._writing:
            db.execute("BEGIN IMMEDIATE")
            try:
                (freed,) = db.execute(
                    "SELECT COALESCE(SUM(length(payload)), 0) FROM log WHERE offset < ?", (next_offset,)
                ).fetchone()
                pointer = f"{next_offset} {generation} {len(starts)}".encode()
                db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (prefix, pointer))
                db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (f"{partition}/intents", b"[]"))
                db.execute("DELETE FROM log WHERE offset < ?", (next_offset,))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        with self._cv:
            self.bytes -= freed
        self._wake_putters()
        stale = db.execute(
            "SELECT key FROM state WHERE key LIKE ? AND key NOT LIKE ?",
            (prefix + "/%", f"{prefix}/{generation}/%"),
        ).fetchall()
        for (key,) in stale:  # former generations, and chunks of a save that a crash cut short
            with self._writing:
                db.execute("DELETE FROM state WHERE key = ?", (key,))

    def _let_appends_first(self) -> None:
        """Between a snapshot's transactions: a group of appends waiting commits first. The lock is not fair
        (the thread that released it takes it again first), so without this the appends could wait out
        the whole snapshot. Bounded: a writer stuck on a full disk does not hold the snapshot for long."""
        with self._cv:
            if self._pending or self._committing:
                done = self._commits
                self._durable.wait_for(lambda: self._commits != done or self.closed, timeout=1.0)

    def save_intents(self, partition: int, intents: bytes) -> None:
        with self._writing:
            self._r.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (f"{partition}/intents", intents))

    def load_state(self, partition: int) -> tuple[bytes | None, int, bytes | None]:
        """(snapshot bytes or None, the offset it covers or -1, the intents as saved or None)."""
        prefix = f"{partition}/snapshot"
        intents, pointer = (self._state(key) for key in (f"{partition}/intents", prefix))
        if pointer is None:
            return None, -1, intents
        offset, *generation = pointer.split()
        if generation:
            name, count = generation[0].decode(), int(generation[1])
            start = f"{prefix}/{name}/"  # its chunks are the keys from `start` up to `start` with '/' -> '0'
            rows = self._r.execute(
                "SELECT value FROM state WHERE key >= ? AND key < ? ORDER BY key", (start, start[:-1] + "0")
            ).fetchall()
            if len(rows) != count:
                raise RuntimeError(
                    f"local log {self.path}: snapshot {name} has {len(rows)} of {count} chunks"
                )
        else:  # written before generations: its chunks are `<p>/snapshot/NNNNNN`
            rows = self._r.execute(
                "SELECT value FROM state WHERE key GLOB ? ORDER BY key", (prefix + "/" + "[0-9]" * 6,)
            ).fetchall()
        return b"".join(value for (value,) in rows), int(offset), intents

    def _state(self, key: str) -> bytes | None:
        row = self._r.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def dead_letter(self, offset: int, reason: str, payload: bytes) -> None:
        with self._writing:
            self._r.execute("INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?)", (offset, reason, payload))


def open_log(data_dir: str, database: str, **kw) -> LocalLog:
    os.makedirs(data_dir, exist_ok=True)
    return LocalLog(os.path.join(data_dir, f"log-{database}.sqlite"), **kw)
