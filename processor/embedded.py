"""The embedded processor loop: drain the local queue, store, then resolve the acks."""

from __future__ import annotations

import asyncio
import hashlib
import logging

from iotstream.clickhouse import StorageError

log = logging.getLogger(__name__)

MAX_READINGS_PER_INSERT = 200_000
RETRY_DELAYS_S = (0.1, 0.5, 1.0, 2.0, 5.0)


async def run(queue, processor) -> None:
    """Runs until the queue is closed and drained. A batch's ack future resolves only after its insert succeeded; a failed
    insert is retried with the same deduplication token, so a retry that did land is not stored twice."""
    attempt = 0
    while True:
        items = await queue.take(MAX_READINGS_PER_INSERT)
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
