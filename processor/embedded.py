"""The embedded processor loop: drain the local queue, store, then resolve the acks."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time

from iotstream.clickhouse import StorageError

from .state import PartitionState

log = logging.getLogger(__name__)

MAX_READINGS_PER_INSERT = 200_000
RETRY_DELAYS_S = (0.1, 0.5, 1.0, 2.0, 5.0)
SILENCE_EVERY_S = 10.0


async def check_silence(processor, now_ms: int) -> None:
    table = await asyncio.to_thread(processor.silence, now_ms)
    if table.num_rows:
        await asyncio.to_thread(processor.store.insert_anomalies, table)


class StateFile:
    """The embedded processor's state, kept across restarts in one file beside the data.

    Written every `every_s` and at shutdown, so after a crash the windows are at most that old: detection
    stays warm, though not bit-identical to an uninterrupted run (the Kafka mode is exact)."""

    def __init__(self, path: str, every_s: float = 5.0):
        self.path, self.every_s = path, every_s
        self.saved_at = time.monotonic()

    def load(self, processor) -> bool:
        if not os.path.exists(self.path):
            return False
        with open(self.path, "rb") as f:
            processor.adopt(0, PartitionState.from_bytes(f.read()))
        return True

    def save(self, processor) -> None:
        data = processor.state(0).to_bytes()
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # a crash mid-write leaves the previous snapshot whole
        self.saved_at = time.monotonic()

    async def maybe_save(self, processor) -> None:
        if time.monotonic() - self.saved_at >= self.every_s:
            await asyncio.to_thread(self.save, processor)


async def run(queue, processor, silence_every_s: float = SILENCE_EVERY_S, state_file: StateFile | None = None) -> None:
    """Runs until the queue is closed and drained. A batch's ack future resolves only after its insert succeeded; a failed
    insert is retried with the same deduplication token, so a retry that did land is not stored twice."""
    attempt = 0
    next_check = time.monotonic() + silence_every_s
    while True:
        try:
            items = await asyncio.wait_for(queue.take(MAX_READINGS_PER_INSERT),
                                           max(0.0, next_check - time.monotonic()))
        except TimeoutError:
            items = None
        if time.monotonic() >= next_check:  # the same task as the batches: the processor has one caller
            next_check = time.monotonic() + silence_every_s
            try:
                await check_silence(processor, time.time_ns() // 1_000_000)
            except StorageError as exc:
                log.warning("silence check not stored: %s", exc)
        if items is None:
            continue
        if not items:
            if state_file is not None:
                await asyncio.to_thread(state_file.save, processor)
            return
        token = batch_token([it.payload for it in items])
        prepared = None
        while True:
            try:
                # The work runs in a worker thread so the event loop keeps serving streams. The state
                # advances once (prepare); only the inserts are retried.
                if prepared is None:
                    prepared = await asyncio.to_thread(processor.prepare, [it.payload for it in items])
                await asyncio.to_thread(processor.write, prepared, token)
                break
            except StorageError as exc:
                delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
                attempt += 1
                log.warning("insert failed (retry %d in %.1fs): %s", attempt, delay, exc)
                await asyncio.sleep(delay)
            except Exception as exc:  # a bug, not an outage: fail these batches (unacked), keep serving
                log.exception("processing failed for %d batches", len(items))
                for it in items:
                    if not it.done.done():
                        it.done.set_exception(exc)
                break
        attempt = 0
        for it in items:
            if not it.done.done():
                it.done.set_result(None)
        if state_file is not None:
            await state_file.maybe_save(processor)


def batch_token(payloads: list[bytes]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for p in payloads:
        digest.update(len(p).to_bytes(8, "little"))
        digest.update(p)
    return "local-" + digest.hexdigest()
