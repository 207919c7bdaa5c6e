"""The processor loop polls its source between chunks once an iteration's time is spent (a Kafka member
services rebalances only in a poll), counts what it has buffered against the next poll, and serves the
least recently served partition first. A fake source and store: pure loop logic."""

from __future__ import annotations

from iotstream.processor import loop as chunk_loop
from iotstream.processor.loop import ChunkLoop


class Msg:
    def __init__(self, partition: int, offset: int):
        self._partition, self._offset = partition, offset

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return b""  # an empty ReadingBatch: nothing to insert

    def topic(self) -> str:
        return "t"


class Source:
    """Hands out `batches` (one per poll, then nothing), assigns partition 9 at the fourth poll, as a
    rebalance would, and stops the loop once `stop_after` commits are in."""

    topic = "t"

    def __init__(self, batches: list[list[Msg]], stop_after: int):
        self.batches, self.stop_after = batches, stop_after
        self.events: list[tuple] = []

    def start(self, loop: ChunkLoop) -> None:
        self.loop = loop
        for p in (0, 1, 2):
            loop.assign(p, None, 0, [])

    def poll(self, max_messages: int, timeout: float) -> list:
        self.events.append(("poll", max_messages, timeout))
        if len([e for e in self.events if e[0] == "poll"]) == 4:
            self.loop.assign(9, None, 0, [])
        return self.batches.pop(0) if self.batches else []

    def commit(self, partition: int, next_offset: int) -> None:
        self.events.append(("commit", partition, next_offset))
        if len([e for e in self.events if e[0] == "commit"]) == self.stop_after:
            self.loop.stopping.set()

    def save_intents(self, partition, ranges) -> None: ...
    def save_snapshot(self, partition, next_offset, data) -> None: ...
    def flush(self) -> None: ...
    def publish_anomalies(self, table) -> None: ...
    def close(self) -> None: ...

    def pressed(self) -> bool:
        return False

    def caught_up(self) -> bool:
        return True


def test_a_spent_iteration_polls_between_chunks_least_recently_served_first(monkeypatch):
    monkeypatch.setattr(chunk_loop, "ITERATION_S", 0.0)  # every chunk spends the iteration
    first = [Msg(p, o) for p in (0, 1, 2) for o in range(3)]
    source = Source([first, [], [], [Msg(0, 3), Msg(9, 0), Msg(9, 1)]], stop_after=5)
    ChunkLoop(source, store=None, max_chunk_messages=10, snapshot_every_s=3600, chunk_interval_s=0).run()
    assert source.events == [
        ("poll", 10, 0.2),  # nothing buffered yet: a whole poll, waiting for it
        ("commit", 0, 3),
        ("poll", 4, 0),  # 6 records still buffered count against the poll; work is ready: no wait
        ("commit", 1, 3),
        ("poll", 7, 0),
        ("commit", 2, 3),
        ("poll", 10, 0.2),  # partition 9 assigned in it, as a rebalance is
        ("commit", 9, 2),  # never served: before partition 0, served longest ago of the others
        ("poll", 9, 0),
        ("commit", 0, 4),
    ]


def test_a_small_chunk_waits_for_its_interval_a_full_one_does_not():
    """Pacing (processor.loop CHUNK_INTERVAL_S): records less than a chunk wait until the partition's
    interval since its last chunk has passed; a full chunk, a replay and a draining source do not wait."""
    loop = ChunkLoop(Source([], 0), store=None, max_chunk_messages=3, chunk_interval_s=3600)
    run = loop.runs[0] = chunk_loop.PartitionRun(0, [], buffer=[Msg(0, 0)])
    assert loop._ready(run)  # no chunk yet: at once
    run.chunked_at = chunk_loop.time.monotonic()
    assert not loop._ready(run)
    loop.runs[1] = chunk_loop.PartitionRun(0, [], buffer=[Msg(1, 0), Msg(1, 1)])
    assert loop._ready(run)  # max_chunk_messages buffered over all partitions: the loop's rate is not capped
    del loop.runs[1]
    run.buffered_bytes = chunk_loop.MIN_CHUNK_BYTES
    assert loop._ready(run)
    run.buffered_bytes = 0
    run.replay = [(0, 0)]
    assert loop._ready(run)
    run.replay = []
    loop.finishing.set()
    assert loop._ready(run)
    assert not loop._ready(chunk_loop.PartitionRun(0, []))  # nothing buffered


def test_a_costly_snapshot_is_taken_less_often_so_it_stays_a_tenth_of_the_time():
    """processor.loop.snapshot_due: cheap snapshots every `snapshot_every_s` as always; one that took 12 s
    (10^6 keys) waits until it is SNAPSHOT_SHARE of the time, or half of it while the source is pressed."""
    due, calm = chunk_loop.snapshot_due, lambda: False
    assert not due(4.9, 5.0, 0.01, calm) and due(5.0, 5.0, 0.01, calm)
    assert not due(119.0, 5.0, 12.0, calm) and due(120.0, 5.0, 12.0, calm)
    pressed = lambda: True  # noqa: E731
    assert not due(0.4, 5.0, 0.01, pressed) and due(0.5, 5.0, 0.01, pressed)
    assert not due(11.0, 5.0, 12.0, pressed) and due(12.0, 5.0, 12.0, pressed)
    asked: list[int] = []
    assert not due(0.1, 5.0, 0.0, lambda: asked.append(1) or True)
    assert not asked  # the source (a query of the log) is not asked before its answer could matter
