"""The processor loop, one for both modes: per partition, read -> compute -> write -> commit, exactly once.

A partition comes from a source: a Kafka consumer-group member (processor.kafka_loop.KafkaSource) or the
embedded durable log (LocalSource below). Both offer what a Kafka partition offers: records with offsets,
a commit, and a place to keep the partition's state (the compacted state topic, or the log's own table).

Each chunk of a partition is a contiguous offset range [a, b]; its inserts carry the deduplication token
`topic:partition:a:b`. Before inserting, the chunk's range is saved as an "intent". Every few seconds,
when a partition is revoked and at a clean stop, the partition's whole state (rolling windows, key slots,
recent batch fingerprints) is saved as a snapshot with the offset it covers, in chunks so any number of
keys fits. A loop that gains the partition restores the snapshot, reads from its offset, and re-processes
the recorded intents with exactly the same ranges: the state advances as it did before and the repeated
inserts carry the same tokens, so ClickHouse stores them once. The committed offsets only report progress
(lag); the snapshot decides where reading resumes, and the local log is truncated behind it.

Chunks are paced: a partition starts a chunk of less than MIN_CHUNK_BYTES at most every `chunk_interval_s`
(CHUNK_INTERVAL_S). Each insert costs ClickHouse ~50 ms of CPU whatever its size (a part per table and per
rollup view), so a stream of small messages chunked as it came (~10 chunks a second of ~40 one-reading
messages) spent most of the server's core on inserts (bench/profile/README.md section 10). A full chunk, a
replay and the drain at shutdown are not held back, and an idle partition's first chunk starts at once.

Storage errors go through iotstream.common.retry: transient ones are retried with backoff a bounded number of
times; a permanent one (or the last transient one) ends the loop, and the node turns NOT_SERVING and exits.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from iotstream.bus.local import LocalLog
from iotstream.clickhouse import StorageError
from iotstream.common.retry import Interrupted, retry

from .processor import Processor
from .state import IDLE_MS, MAX_KEYS, PartitionState

log = logging.getLogger(__name__)
# A chunk ends at this many bytes of batches too (~350,000 readings of a typical batch): smaller inserts
# become queryable sooner; larger ones cost less per reading.
MAX_CHUNK_BYTES = 4 * 1024 * 1024
# A source short of room (the local log over half full) gets snapshots, which truncate it, this often.
PRESSED_SNAPSHOT_S = 0.5
# Snapshots take at most about this share of a loop's time: a state whose snapshot takes over a tenth of
# snapshot_every_s (~10^6 keys: 12 s to serialize) is saved less often, not all the time. Under pressure, at
# most half of it.
SNAPSHOT_SHARE = 0.1
# One loop iteration stops starting chunks after this long and polls the source again: a Kafka member
# services the group's rebalances only in a poll, and an iteration that chunked all it had polled made a
# revoke wait for every partition's chunk (docs/scaling.md, "Why the pauses last a round").
ITERATION_S = 0.5
# A chunk this large starts at once; a smaller one waits until CHUNK_INTERVAL_S after the partition's last
# chunk started (~10,000 readings: the fixed insert cost is then a few microseconds a reading).
MIN_CHUNK_BYTES = 128 * 1024
CHUNK_INTERVAL_S = 0.25
# While every buffer waits for its interval and the source has no more, the loop polls it this often (a full
# chunk is noticed within this) instead of at every group commit of the log.
PACING_POLL_S = 0.05


def snapshot_due(since: float, every: float, cost: float, pressed: Callable[[], bool]) -> bool:
    """`since` s after the last snapshot, which took `cost` s: due at `every`, or at PRESSED_SNAPSHOT_S when
    the source is `pressed()` for room; a costly one waits till it is SNAPSHOT_SHARE of the time (or half)."""
    if since >= max(every, cost / SNAPSHOT_SHARE):
        return True
    return since >= max(PRESSED_SNAPSHOT_S, cost) and pressed()


def transient(exc: Exception) -> bool:
    return isinstance(exc, StorageError) and exc.transient


@dataclass
class PartitionRun:
    """A partition this loop currently owns."""

    next_offset: int
    replay: list[tuple[int, int]]  # ranges to re-process exactly as recorded
    intents: list[tuple[int, int]] = field(default_factory=list)  # ranges since the last snapshot
    buffer: list = field(default_factory=list)
    buffered_bytes: int = 0  # of the values in `buffer`
    chunked_at: float = float("-inf")  # monotonic time its last chunk started (pacing)
    snapshot_at: float = 0.0  # monotonic time of the last snapshot
    snapshot_cost: float = 0.0  # seconds the last one took, saved and flushed
    served_at: float = 0.0  # monotonic time of its last chunk: the least recently served goes first
    ahead: bool = False  # the state holds a chunk that is not stored yet: no snapshot may be taken


@dataclass
class Progress:
    readings: int = 0
    anomalies: int = 0
    resent: int = 0
    dead_letters: int = 0
    chunks: int = 0
    silence_checks: int = 0


class ChunkLoop:
    def __init__(
        self,
        source,
        store,
        max_chunk_messages: int = 1000,
        snapshot_every_s: float = 5.0,
        rules=None,
        silence_every_s: float = 10.0,
        max_keys: int = MAX_KEYS,
        idle_ms: int = IDLE_MS,
        chunk_interval_s: float = CHUNK_INTERVAL_S,
    ):
        self.source = source
        self.chunk_interval_s = chunk_interval_s
        self.processor = Processor(store, rules, max_keys, idle_ms)
        self.max_chunk_messages = max_chunk_messages
        self.snapshot_every_s = snapshot_every_s
        self.silence_every_s = silence_every_s
        self.runs: dict[int, PartitionRun] = {}
        self.progress = Progress()
        self.stopping = threading.Event()  # stop now (what is read and not stored is read again later)
        self.finishing = (
            threading.Event()
        )  # stop once the source has nothing more (the local log at shutdown)

    # ---- partitions come and go (the source calls these) ----------------------------------------

    def assign(self, partition: int, snapshot: bytes | None, offset: int, intents: list) -> None:
        """Take a partition over from its saved state; reading starts at `offset`."""
        state = PartitionState.from_bytes(snapshot) if snapshot is not None else PartitionState()
        replay = [tuple(r) for r in intents if r[0] >= offset]
        self.processor.adopt(partition, state)
        self.runs[partition] = PartitionRun(offset, replay, intents=list(replay))
        log.info(
            "partition %d assigned: from offset %s, %d chunk(s) to replay", partition, offset, len(replay)
        )

    def release(self, partition: int, save: bool) -> None:
        run = self.runs.pop(partition, None)
        if save and run is not None:
            self._snapshot(partition, run)
        self.processor.partitions.pop(partition, None)

    def _snapshot(self, partition: int, run: PartitionRun) -> None:
        """Not while a chunk is half done, nor while recorded ranges wait for replay (the snapshot clears
        the intents, and those ranges must be chunked as recorded if this loop dies too)."""
        if run.next_offset >= 0 and not run.ahead and not run.replay:
            self.source.save_snapshot(partition, run.next_offset, self.processor.state(partition).to_bytes())
            run.intents, run.snapshot_at = [], time.monotonic()

    # ---- the loop ----------------------------------------------------------------------------------

    def run(self) -> None:
        """Consume until `stopping` (or `finishing` and nothing is left); then snapshot and close. An error
        ends it without a snapshot: the next start replays from the last one."""
        self.source.start(self)
        next_check = time.monotonic() + self.silence_every_s
        clean, drained = False, False
        try:
            while not self.stopping.is_set():
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.silence_every_s
                    self._check_silence()
                # What is buffered counts against one poll's worth (memory stays as with one chunk's poll);
                # a poll takes one record at least, so the group's callbacks are serviced every iteration.
                buffered = sum(len(run.buffer) for run in self.runs.values())
                ready = any(self._ready(run) for run in self.runs.values())
                if drained and buffered and not ready:  # each buffer waits for its interval: let more come
                    self.stopping.wait(PACING_POLL_S)
                asked = max(1, self.max_chunk_messages - buffered)
                records = self.source.poll(asked, 0 if ready or buffered else 0.2)
                drained = len(records) < asked  # the source had no more for now
                for msg in records:
                    run = self.runs.get(msg.partition())
                    if run is not None and msg.offset() >= max(run.next_offset, 0):
                        run.buffer.append(msg)
                        run.buffered_bytes += len(msg.value())
                self._work(time.monotonic() + ITERATION_S)
                for partition, run in list(self.runs.items()):
                    since = time.monotonic() - run.snapshot_at
                    due = snapshot_due(since, self.snapshot_every_s, run.snapshot_cost, self.source.pressed)
                    if run.intents and due:
                        started = time.monotonic()
                        self._snapshot(partition, run)
                        self.source.flush()
                        run.snapshot_cost = time.monotonic() - started
                if (
                    not records
                    and self.finishing.is_set()
                    and self.source.caught_up()
                    and not any(run.buffer for run in self.runs.values())
                ):
                    break
            clean = True
        except Interrupted:
            clean = True
        finally:
            self._leave(clean)

    def _work(self, deadline: float) -> None:
        """Chunks of the ready partitions, least recently served first, until none is ready or `deadline`
        has passed (one chunk at least)."""
        while not self.stopping.is_set():
            ready = [(run.served_at, p) for p, run in self.runs.items() if self._ready(run)]
            if not ready:
                return
            partition = min(ready)[1]
            self._chunk(partition, self.runs[partition])
            if time.monotonic() >= deadline:
                return

    def _ready(self, run: PartitionRun) -> bool:
        """Records to chunk, and all of the next recorded range to replay if there is one; a new chunk
        also needs MIN_CHUNK_BYTES, or a poll's worth of records buffered (over all partitions, so pacing
        never caps a loop's rate), or its partition's interval since the last one, or the source draining."""
        if not run.buffer:
            return False
        if run.replay:
            return run.buffer[-1].offset() >= run.replay[0][1]
        return (
            run.buffered_bytes >= MIN_CHUNK_BYTES
            or sum(len(r.buffer) for r in self.runs.values()) >= self.max_chunk_messages  # a poll's worth
            or time.monotonic() - run.chunked_at >= self.chunk_interval_s
            or self.finishing.is_set()
        )

    def _chunk(self, partition: int, run: PartitionRun) -> None:
        run.chunked_at = time.monotonic()
        if run.replay:
            first, last = run.replay.pop(0)
            count = sum(1 for m in run.buffer if m.offset() <= last)
        else:
            count, size = 0, 0
            for m in run.buffer[: self.max_chunk_messages]:
                if count and size + len(m.value()) > MAX_CHUNK_BYTES:
                    break
                count, size = count + 1, size + len(m.value())
            first, last = run.buffer[0].offset(), run.buffer[count - 1].offset()
            run.intents.append((first, last))
            self.source.save_intents(partition, run.intents)
            self.source.flush()  # the intent is durable before the insert it describes
        chunk, run.buffer = run.buffer[:count], run.buffer[count:]
        run.buffered_bytes -= sum(len(m.value()) for m in chunk)
        self._process(partition, run, chunk, f"{self.source.topic}:{partition}:{first}:{last}")
        run.next_offset, run.served_at = last + 1, time.monotonic()
        self.source.commit(partition, last + 1)

    def _process(self, partition: int, run: PartitionRun, chunk: list, token: str) -> None:
        """Prepare once (the state advances once), then insert, retrying transient errors."""
        run.ahead = True
        prepared = self.processor.prepare([m.value() for m in chunk], partition)
        for index, reason in prepared.undecodable:
            self.source.dead_letter(chunk[index], reason)
            log.warning(
                "dead letter %s/%d/%d: %s", chunk[index].topic(), partition, chunk[index].offset(), reason
            )
        retry(lambda: self.processor.write(prepared, token), f"insert {token}", transient, self.stopping)
        run.ahead = False
        self.source.publish_anomalies(prepared.anomalies)
        p = self.progress
        p.readings += prepared.readings.num_rows
        p.anomalies += prepared.anomalies.num_rows
        p.resent += prepared.resent
        p.dead_letters += len(prepared.undecodable)
        p.chunks += 1

    def _check_silence(self) -> None:
        table = self.processor.silence(time.time_ns() // 1_000_000)
        self.progress.silence_checks += 1
        if table.num_rows:
            retry(
                lambda: self.processor.store.insert_anomalies(table),
                "silence anomalies",
                transient,
                self.stopping,
            )
            self.source.publish_anomalies(table)

    def _leave(self, clean: bool) -> None:
        try:
            if clean:
                for partition, run in self.runs.items():
                    self._snapshot(partition, run)
            self.source.flush()
            self.runs.clear()  # saved: a revoke while closing has nothing left to write
        finally:
            self.source.close()


class LocalSource:
    """The embedded durable log as the loop's one partition (0)."""

    def __init__(self, log: LocalLog):
        self.log = log
        self.topic = log.topic
        self._position = 0

    def start(self, loop: ChunkLoop) -> None:
        snapshot, offset, intents = self.log.load_state(0)
        loop.assign(0, snapshot, offset, json.loads(intents or b"[]"))
        self._position = max(offset, 1)  # the log's first offset is 1; reading from 0 would never wait

    def poll(self, max_records: int, timeout: float) -> list:
        records = self.log.read(self._position, max_records, timeout)
        if records:
            self._position = records[-1].offset() + 1
        return records

    def pressed(self) -> bool:
        """Over half full: snapshot now, so the log is truncated, rather than at the next period."""
        return self.log.bytes > self.log.max_bytes // 2

    def caught_up(self) -> bool:
        """Nothing more will come: the log is closed (its writer has committed everything) and read to the
        end."""
        return self.log.closed and not self.log.read(self._position, 1, 0)

    def commit(self, partition: int, next_offset: int) -> None:
        self.log.commit(next_offset)

    def save_snapshot(self, partition: int, next_offset: int, data: bytes) -> None:
        self.log.save_snapshot(partition, next_offset, data)

    def save_intents(self, partition: int, ranges: list) -> None:
        self.log.save_intents(partition, json.dumps(ranges).encode())

    def flush(self) -> None:
        """Every save above is its own committed transaction already."""

    def dead_letter(self, msg, reason: str) -> None:
        self.log.dead_letter(msg.offset(), reason, msg.value())

    def publish_anomalies(self, table) -> None:
        """Embedded, anomalies are read from ClickHouse (WatchAnomalies); there is no topic to feed."""

    def close(self) -> None:
        self.log.close_reader()
