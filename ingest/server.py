"""The gRPC ingest service: decode, validate, hand accepted readings to the queue, ack once durable.

Handlers take the request as raw bytes (a generic handler without a deserializer) for two reasons: a
fully accepted batch is forwarded to the queue byte for byte, and undecodable input gets a clear
INVALID_ARGUMENT instead of gRPC's generic deserialization failure.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError

from iotstream.queue import QueueUnavailable
from iotstream.v1 import ingest_pb2 as pb

from .validate import Limits, accepted_only, validate

SERVICE = "iotstream.v1.Ingest"
MAX_INFLIGHT_PER_STREAM = 64  # batches read ahead of their acks; past this the stream is not read


def fingerprint(raw: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")


class BadRequest(Exception):
    """The client sent something that is not a ReadingBatch."""


class Counters:
    """Accepted and rejected readings since start, and the accepted rate over the last minute."""

    def __init__(self):
        self.accepted = 0
        self.rejected: collections.Counter[str] = collections.Counter()
        self._per_second: collections.deque[list[int]] = collections.deque(maxlen=61)  # [second, count]

    def add(self, accepted: int, rejections) -> None:
        self.accepted += accepted
        for r in rejections:
            self.rejected[pb.RejectReason.Name(r.reason)] += 1
        now = int(time.monotonic())
        if not self._per_second or self._per_second[-1][0] != now:
            self._per_second.append([now, 0])
        self._per_second[-1][1] += accepted

    def rate_per_s(self) -> float:
        now = int(time.monotonic())
        return sum(n for sec, n in self._per_second if sec > now - 60) / 60.0


class IngestService:
    def __init__(self, queue, limits: Limits | None = None, counters: Counters | None = None):
        self.queue = queue
        self.limits = limits or Limits()
        self.counters = counters or Counters()

    async def accept(self, raw: bytes) -> tuple[asyncio.Future | None, pb.Ack]:
        """Validate and queue one batch; returns (durability future or None, the Ack to send)."""
        try:
            batch = pb.ReadingBatch.FromString(raw)
        except DecodeError as exc:
            raise BadRequest(f"request is not a valid iotstream.v1.ReadingBatch ({exc})") from None
        now_ms = time.time_ns() // 1_000_000
        verdict = validate(batch, now_ms, self.limits)
        self.counters.add(verdict.n_accepted, verdict.rejections)
        ack = pb.Ack(seq=batch.seq, accepted=verdict.n_accepted, rejected=verdict.rejections)
        if verdict.n_accepted == 0:
            return None, ack
        payload = raw if not verdict.rejections else accepted_only(batch, verdict).SerializeToString()
        # Protobuf merges concatenated messages, so appending sets these fields without re-encoding.
        payload += pb.ReadingBatch(received_ms=now_ms, fingerprint=fingerprint(raw)).SerializeToString()
        return await self.queue.put(payload, verdict.n_accepted, batch.device_id), ack

    async def Send(self, request: bytes, context: grpc.aio.ServicerContext) -> pb.Ack:
        try:
            done, ack = await self.accept(request)
        except (BadRequest, QueueUnavailable) as exc:
            await abort_for(exc, context)
        return await durable(done, ack, context)

    async def Stream(self, request_iterator: AsyncIterator[bytes],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Ack]:
        # The reader runs ahead of the acks (pipelining) but at most MAX_INFLIGHT_PER_STREAM batches;
        # acks leave in the order the batches came.
        pending: asyncio.Queue = asyncio.Queue(maxsize=MAX_INFLIGHT_PER_STREAM)

        async def read() -> None:
            try:
                async for raw in request_iterator:
                    await pending.put(await self.accept(raw))
                await pending.put(None)
            except Exception as exc:  # handed to the writer, which ends the call with a status
                await pending.put(exc)

        reader = asyncio.create_task(read())
        try:
            while (item := await pending.get()) is not None:
                if isinstance(item, (BadRequest, QueueUnavailable)):
                    await abort_for(item, context)
                if isinstance(item, Exception):
                    raise item
                yield await durable(*item, context)
        finally:
            reader.cancel()


async def abort_for(exc: Exception, context) -> None:
    code = grpc.StatusCode.INVALID_ARGUMENT if isinstance(exc, BadRequest) else grpc.StatusCode.UNAVAILABLE
    await context.abort(code, str(exc))


async def durable(done: asyncio.Future | None, ack: pb.Ack, context) -> pb.Ack:
    """The Ack, once its batch is durable. A batch that could not be made durable ends the call with
    UNAVAILABLE and no Ack, so the device resends it (and a resend is stored once)."""
    if done is not None:
        try:
            await done
        except Exception as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"batch seq={ack.seq} was not stored ({exc}); resend it")
    return ack


def add_to_server(service: IngestService, server: grpc.aio.Server) -> None:
    handlers = {
        "Stream": grpc.stream_stream_rpc_method_handler(
            service.Stream, response_serializer=pb.Ack.SerializeToString),
        "Send": grpc.unary_unary_rpc_method_handler(
            service.Send, response_serializer=pb.Ack.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
