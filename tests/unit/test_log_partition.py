"""The local log's partition face on a real SQLite file: offsets, reads, snapshots that truncate, restarts."""

import asyncio
import time
from dataclasses import dataclass, field

from iotstream.bus import local as queue
from iotstream.bus.local import LocalLog


def append(log: LocalLog, payloads: list[bytes]) -> None:
    async def main():
        await asyncio.gather(*[await log.put(p, 1) for p in payloads])

    asyncio.run(main())


def test_offsets_reads_snapshot_truncation_and_restart(tmp_path, monkeypatch):
    monkeypatch.setattr(queue, "SNAPSHOT_CHUNK_BYTES", 4)  # several chunks
    path = str(tmp_path / "log.sqlite")
    log = LocalLog(path)
    append(log, [b"a", b"bb", b"ccc"])
    assert [(r.offset(), r.value()) for r in log.read(0, 10, 0)] == [(1, b"a"), (2, b"bb"), (3, b"ccc")]
    assert [r.offset() for r in log.read(2, 1, 0)] == [2]
    log.commit(3)
    assert log.depth == 1 and log.bytes == 6
    log.save_intents(0, b"[[3, 3]]")
    log.save_snapshot(0, 3, b"state of 18 bytes!")
    assert log.bytes == 3 and [r.offset() for r in log.read(0, 10, 0)] == [3]  # rows 1-2 truncated
    assert log.load_state(0) == (b"state of 18 bytes!", 3, b"[]")
    topic = log.topic
    log.close()
    log.close_reader()

    log = LocalLog(path)
    assert (log.topic, log.bytes, log.depth) == (topic, 3, 1)
    log.save_snapshot(0, 4, b"")
    append(log, [b"d"])
    assert [r.offset() for r in log.read(0, 10, 0)] == [4]  # offsets never go back
    assert log.load_state(0) == (b"", 4, b"[]")
    log.close()
    log.close_reader()


class Clock:
    """bus.local's `time`, with a monotonic clock the test moves (the lag is a clock reading: no waiting)."""

    def __init__(self) -> None:
        self.ms = 0

    def monotonic(self) -> float:
        return self.ms / 1000

    def __getattr__(self, name: str):
        return getattr(time, name)


def test_lag_is_the_age_of_the_oldest_unprocessed_batch(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(queue, "time", clock)

    @dataclass
    class Append(queue._Append):
        at: float = field(default_factory=clock.monotonic)  # the hand-over time, on the same clock

    monkeypatch.setattr(queue, "_Append", Append)

    def age(ms: int) -> None:
        clock.ms += ms

    log = LocalLog(str(tmp_path / "log.sqlite"))
    assert log.lag_ms() == 0  # empty
    append(log, [b"a"])
    age(60)
    append(log, [b"b"])
    age(10)
    oldest = log.lag_ms()
    assert oldest >= 70
    log.commit(2)  # row 1 processed: row 2, 60 ms younger, is the oldest now
    assert log.lag_ms() <= oldest - 50
    log.commit(3)
    assert log.lag_ms() == 0
    log.close()
    log.close_reader()

    again = LocalLog(str(tmp_path / "log.sqlite"))  # nothing truncated: rows 1-2 are unprocessed again,
    age(30)  # aged from the restart
    assert again.depth == 2 and 30 <= again.lag_ms() < oldest + 1_000
    again.commit(3)
    assert again.lag_ms() == 0
    again.close()
    again.close_reader()
