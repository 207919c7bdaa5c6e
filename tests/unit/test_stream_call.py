"""A Stream's hand-over from its reader to its writer (ingest.server.StreamCall): items leave in the order
they were put, the read-ahead window holds the reader at MAX_INFLIGHT_PER_STREAM, an ending always fits, and
an idle stream keeps no waiter behind."""

import asyncio

from iotstream.ingest.server import MAX_INFLIGHT_PER_STREAM, BadRequest, IngestService, StreamCall


async def _requests(*raw: bytes):
    for r in raw:
        yield r


def test_order_window_and_ending():
    async def scenario():
        call = StreamCall(IngestService(None), _requests(), None)
        for i in range(MAX_INFLIGHT_PER_STREAM):
            await call.acquire()
            call.put(i)
        blocked = asyncio.create_task(call.acquire())
        await asyncio.sleep(0)  # one turn of the loop: the reader is now waiting on the full window
        assert not blocked.done()
        call.put(None)  # the ending is not counted in the window
        got = [await call.get() for _ in range(MAX_INFLIGHT_PER_STREAM + 1)]
        assert got == [*range(MAX_INFLIGHT_PER_STREAM), None]
        assert not blocked.done()  # taking items off is not an ack: the window is still full
        call.release()
        await asyncio.wait_for(blocked, 5)
        assert call.unacked == MAX_INFLIGHT_PER_STREAM

    asyncio.run(scenario())


def test_writer_waits_then_wakes_and_leaves_nothing_behind():
    async def scenario():
        call = StreamCall(IngestService(None), _requests(), None)
        writer = asyncio.create_task(call.get())
        await asyncio.sleep(0)
        assert call._writer_waits is not None and not writer.done()
        call.put("ack")
        assert await asyncio.wait_for(writer, 5) == "ack"
        assert call._writer_waits is None and call._reader_waits is None and call.items == []

    asyncio.run(scenario())


def test_reader_hands_a_bad_request_to_the_writer():
    async def scenario():
        call = StreamCall(IngestService(None), _requests(b"\xff\xff\xff"), None)
        await call.read()
        assert isinstance(await call.get(), BadRequest) and call.device is None and call.unacked == 0

    asyncio.run(scenario())
