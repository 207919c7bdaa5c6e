"""The embedded processor loop: drain the local queue, store, then resolve the acks."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from iotstream.clickhouse import StorageError

log = logging.getLogger(__name__)

MAX_READINGS_PER_INSERT = 200_000
RETRY_DELAYS_S = (0.1, 0.5, 1.0, 2.0, 5.0)
SILENCE_EVERY_S = 10.0


async def check_silence(processor, now_ms: int) -> None:
    table = await asyncio.to_thread(processor.silence, now_ms)
    if table.num_rows:
        await asyncio.to_thread(processor.store.insert_anomalies, table)


async def run(queue, processor, silence_every_s: float = SILENCE_EVERY_S) -> None:
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


def batch_token(payloads: list[bytes]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for p in payloads:
        digest.update(len(p).to_bytes(8, "little"))
        digest.update(p)
    return "local-" + digest.hexdigest()
