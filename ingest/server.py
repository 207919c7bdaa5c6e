"""The gRPC ingest service: authenticate, decode, pace, validate, hand accepted readings to the queue, ack
once durable.

Handlers take the request as raw bytes (a generic handler without a deserializer) for two reasons: a
fully accepted batch is forwarded to the queue byte for byte, and undecodable input gets a clear
INVALID_ARGUMENT instead of gRPC's generic deserialization failure.

What ends a call, and with which status (each one counted in `Counters` under the name in brackets):

* bytes that are not a ReadingBatch: INVALID_ARGUMENT [MALFORMED_REQUEST_CALLS];
* a message over `Limits.max_message_bytes`: RESOURCE_EXHAUSTED [MESSAGE_TOO_LARGE_CALLS]. gRPC's own cap is
  set at twice that (iotstream.node.server_options), so the handler sees, refuses and counts the usual
  oversized message; one over twice the limit gRPC refuses by itself, with the same status, uncounted;
* with auth on, a batch of another device than the token's: PERMISSION_DENIED [WRONG_DEVICE, readings];
  no token or a bad one never reaches a handler (iotstream.auth.AuthInterceptor) [UNAUTHENTICATED_CALLS];
* more open streams for one device than `max_streams_per_device`: RESOURCE_EXHAUSTED [TOO_MANY_STREAMS_CALLS];
  more Send calls of one device in progress than `max_sends_per_device`: the same [TOO_MANY_SENDS_CALLS];
* with auth on, the call's token revoked while a stream is open: UNAUTHENTICATED within the token refresh
  interval [REVOKED_CALLS];
* a device over its rate for too long: RESOURCE_EXHAUSTED with trailing metadata `grpc-retry-pushback-ms`
  [RATE_LIMITED, readings]; before that, its batches are only held back [THROTTLED_BATCHES];
* the queue unavailable, or the server shutting down: UNAVAILABLE [QUEUE_UNAVAILABLE_CALLS, DRAINING_CALLS].

On a stream, every batch before the one that ended the call has been acked (acks leave in order), so the
device knows exactly what to resend.

A message over OFFLOAD_BYTES is decoded and validated in a small pool of worker threads, so one large batch
(validation is linear in its size) never holds the event loop that serves every other call and health.
A device's batches in flight (read, not yet acked) are held under `max_inflight_bytes_per_device`.
A stream answers StreamResponse: each Ack wrapped, in batch order, and between them the device's desired
DeviceConfig whenever one is due (iotstream.auth.device_config.ConfigHub: on open, on change, until the device
reports it applied in ReadingBatch.config_applied). A stream's device is its token's, or with auth off its
first batch's, so a device is only ever sent its own configuration.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError

from iotstream.auth import AuthError
from iotstream.bus.local import QueueUnavailable
from iotstream.v1 import ingest_pb2 as pb

from .limits import DeviceLimiter, MetricBook, RateLimited, TooManySends, TooManyStreams
from .validate import Limits, accepted_only, validate

log = logging.getLogger(__name__)

SERVICE = "iotstream.v1.Ingest"
MAX_INFLIGHT_PER_STREAM = 64  # batches read ahead of their acks; past this the stream is not read
OFFLOAD_BYTES = 64 * 1024  # larger messages are decoded and validated off the event loop
OFFLOAD_THREADS = 2  # at most this many large messages are worked on at once; the rest wait their turn

# Call-level counters next to the per-reading RejectReason names (see the module docstring).
MALFORMED_REQUEST_CALLS = "MALFORMED_REQUEST_CALLS"
MESSAGE_TOO_LARGE_CALLS = "MESSAGE_TOO_LARGE_CALLS"
WRONG_DEVICE = "WRONG_DEVICE"
TOO_MANY_STREAMS_CALLS = "TOO_MANY_STREAMS_CALLS"
TOO_MANY_SENDS_CALLS = "TOO_MANY_SENDS_CALLS"
REVOKED_CALLS = "REVOKED_CALLS"
RATE_LIMITED = "RATE_LIMITED"
THROTTLED_BATCHES = "THROTTLED_BATCHES"
QUEUE_UNAVAILABLE_CALLS = "QUEUE_UNAVAILABLE_CALLS"
DRAINING_CALLS = "DRAINING_CALLS"


def fingerprint(raw: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")


class BadRequest(Exception):
    """The client sent something that is not a ReadingBatch."""


class WrongDevice(Exception):
    """A batch for another device than the one the call's token belongs to."""

    readings = 0  # the batch's, counted under WRONG_DEVICE


class MessageTooLarge(Exception):
    """A message over Limits.max_message_bytes."""


class Draining(Exception):
    """The server is shutting down."""


class Counters:
    """Accepted and rejected readings since start, call-level refusals and throttles by reason, and the
    accepted rate over the last minute."""

    def __init__(self):
        self.accepted = 0
        self.rejected: collections.Counter[str] = collections.Counter()
        self.throttled_s = 0.0  # total time batches were held back by rate limits
        self._per_second: collections.deque[list[int]] = collections.deque(maxlen=61)  # [second, count]

    def add(self, accepted: int, rejected: dict[str, int]) -> None:
        """`rejected`: reason name -> readings (Verdict.counts)."""
        self.accepted += accepted
        if rejected:  # Counter.update checks its argument's type even when it is empty
            self.rejected.update(rejected)
        now = int(time.monotonic())
        if not self._per_second or self._per_second[-1][0] != now:
            self._per_second.append([now, 0])
        self._per_second[-1][1] += accepted

    def count(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] += n

    def rate_per_s(self) -> float:
        now = int(time.monotonic())
        return sum(n for sec, n in self._per_second if sec > now - 60) / 60.0


def decode(raw: bytes, limits: Limits) -> pb.ReadingBatch:
    if len(raw) > limits.max_message_bytes:
        raise MessageTooLarge(
            f"message of {len(raw)} bytes is over the limit of {limits.max_message_bytes}; "
            "send smaller batches"
        )
    try:
        return pb.ReadingBatch.FromString(raw)
    except DecodeError as exc:
        raise BadRequest(f"request is not a valid iotstream.v1.ReadingBatch ({exc})") from None


class IngestService:
    def __init__(
        self, queue, limits: Limits | None = None, counters: Counters | None = None, auth=None, configs=None
    ):
        self.queue = queue
        self.configs = configs  # iotstream.auth.device_config.ConfigHub, or None: no configuration push
        self.limits = limits or Limits()
        self.counters = counters or Counters()
        self.auth = auth  # iotstream.auth.Authenticator, or None: open (any caller may send for any device)
        lim = self.limits
        self.limiter = DeviceLimiter(
            lim.rate_readings_per_s,
            lim.burst_readings,
            lim.max_delay_s,
            lim.reject_after_s,
            lim.max_streams_per_device,
            lim.max_sends_per_device,
            lim.max_inflight_bytes_per_device,
        )
        self.metric_book = MetricBook(lim.max_metrics_per_device, lim.metrics_idle_s)
        self.draining = asyncio.Event()
        self._readers: set[asyncio.Task] = set()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            OFFLOAD_THREADS, thread_name_prefix="ingest-validate"
        )

    async def offload(self, fn, *args):
        """fn(*args) here when the message is small, else in the validation pool."""
        if len(args[0]) <= OFFLOAD_BYTES:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _decode(self, raw: bytes) -> pb.ReadingBatch:
        return decode(raw, self.limits)

    def _validate(self, raw: bytes, batch: pb.ReadingBatch, now_ms: int):
        """(verdict, payload of the accepted readings, Ack): all the work linear in the batch's size."""
        verdict = validate(batch, now_ms, self.limits, self.metric_book.admit)
        ack = pb.Ack(seq=batch.seq, accepted=verdict.n_accepted, rejected=verdict.rejections)
        if not verdict.rejections:
            return verdict, raw, ack
        if verdict.n_accepted == 0:
            return verdict, b"", ack
        return verdict, accepted_only(batch, verdict).SerializeToString(), ack

    def drain(self) -> None:
        """Stop reading: new calls get UNAVAILABLE, open streams send the acks of what they have read and
        then end with UNAVAILABLE (reconnect elsewhere or later)."""
        self.draining.set()
        for reader in list(self._readers):
            reader.cancel()

    def device_of(self, context) -> str | None:
        """The device the call's token belongs to (None when auth is off). The interceptor has already
        refused calls without a device token."""
        if self.auth is None:
            return None
        return self.auth.identify(context.invocation_metadata()).subject

    async def accept(
        self, raw: bytes, batch: pb.ReadingBatch | None = None, device: str | None = None
    ) -> tuple[asyncio.Future | None, pb.Ack]:
        """Check, pace, validate and queue one batch; returns (durability future or None, the Ack to send)."""
        if self.draining.is_set():
            raise Draining("server is shutting down; reconnect and resend what was not acked")
        if batch is None:
            batch = await self.offload(self._decode, raw)
        if device is not None and batch.device_id != device:
            exc = WrongDevice(
                f"batch seq={batch.seq} is for device {batch.device_id[:80]!r}, "
                f"but the token belongs to {device!r}"
            )
            exc.readings = len(batch.values)
            raise exc
        if batch.config_applied and self.configs is not None:
            await self.configs.report(batch.device_id, batch.config_applied)
        await self.pace(batch)
        now_ms = time.time_ns() // 1_000_000
        verdict, payload, ack = await self.offload(self._validate, raw, batch, now_ms)
        self.counters.add(verdict.n_accepted, verdict.counts)
        if verdict.n_accepted == 0:
            return None, ack
        # Protobuf merges concatenated messages, so appending sets these fields without re-encoding.
        payload += pb.ReadingBatch(received_ms=now_ms, fingerprint=fingerprint(raw)).SerializeToString()
        device, size = batch.device_id, len(payload)
        await self.limiter.hold_bytes(device, size)
        try:
            done = await self.queue.put(payload, verdict.n_accepted, device)
        except BaseException:
            self.limiter.free_bytes(device, size)
            raise
        done.add_done_callback(lambda _: self.limiter.free_bytes(device, size))
        return done, ack

    async def pace(self, batch: pb.ReadingBatch) -> None:
        """Hold the batch while its device is over its rate (the stream is not read meanwhile)."""
        try:
            delay = self.limiter.take(batch.device_id, len(batch.values))
        except RateLimited as exc:
            exc.readings = len(batch.values)
            raise
        if delay > 0:
            self.counters.count(THROTTLED_BATCHES)
            self.counters.throttled_s += delay
            await asyncio.sleep(delay)

    async def Send(self, request: bytes, context: grpc.aio.ServicerContext) -> pb.Ack:
        try:
            device = self.device_of(context)
            batch = await self.offload(self._decode, request)
            sender = device or batch.device_id
            self.limiter.open_send(sender)
        except Exception as exc:
            await self.end_call(exc, context)
        try:
            try:
                done, ack = await self.accept(request, batch, device)
            except Exception as exc:
                await self.end_call(exc, context)
            return await durable(done, ack, context)
        finally:
            self.limiter.close_send(sender)

    async def Stream(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamResponse]:
        # One reader task runs ahead of the acks (pipelining) but at most MAX_INFLIGHT_PER_STREAM batches;
        # this handler writes what it hands over, acks in the order the batches came.
        call = StreamCall(self, request_iterator, context)
        reader = asyncio.create_task(call.read())
        self._readers.add(reader)
        guard = None
        if call.revocation is not None:
            guard = asyncio.create_task(_cancel_when(call.revocation, reader))
        try:
            while (item := await call.get()) is not None:
                if isinstance(item, Exception):
                    await self.end_call(item, context)
                if isinstance(item, pb.StreamResponse):  # a configuration, between two acks
                    yield item
                    continue
                done, ack = item
                ack = await durable(done, ack, context)
                call.release()
                yield pb.StreamResponse(ack=ack)
        finally:
            self._readers.discard(reader)
            reader.cancel()
            if guard is not None:
                guard.cancel()
            call.close()

    async def end_call(self, exc: Exception, context) -> None:
        """End the call with the status `exc` stands for (ENDINGS), counting why."""
        if isinstance(exc, AuthError):
            revoked = exc.code == grpc.StatusCode.UNAUTHENTICATED
            code, reason = exc.code, REVOKED_CALLS if revoked else f"{exc.code.name}_CALLS"
        else:
            code, reason = next((end for kind, end in ENDINGS.items() if isinstance(exc, kind)), (None, ""))
            if code is None:
                raise exc
        if isinstance(exc, RateLimited):
            pushback = str(max(1, round(exc.retry_after_s * 1000)))
            context.set_trailing_metadata((("grpc-retry-pushback-ms", pushback),))
        # WRONG_DEVICE and RATE_LIMITED count the batch's readings; the others count calls.
        self.counters.count(reason, getattr(exc, "readings", 1))
        await context.abort(code, str(exc))


# What ends a call, by exception: its status and the counter it is counted under (module docstring).
ENDINGS: dict[type[Exception], tuple[grpc.StatusCode, str]] = {
    BadRequest: (grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_REQUEST_CALLS),
    WrongDevice: (grpc.StatusCode.PERMISSION_DENIED, WRONG_DEVICE),
    TooManyStreams: (grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_MANY_STREAMS_CALLS),
    TooManySends: (grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_MANY_SENDS_CALLS),
    RateLimited: (grpc.StatusCode.RESOURCE_EXHAUSTED, RATE_LIMITED),
    QueueUnavailable: (grpc.StatusCode.UNAVAILABLE, QUEUE_UNAVAILABLE_CALLS),
    Draining: (grpc.StatusCode.UNAVAILABLE, DRAINING_CALLS),
    MessageTooLarge: (grpc.StatusCode.RESOURCE_EXHAUSTED, MESSAGE_TOO_LARGE_CALLS),
}


class StreamCall:
    """What one open Stream holds beside grpc.aio's own call: its devices, configuration subscription and
    revocation watch, and the hand-over from its reader task to its writer (the handler): what to send, in
    order (durability future and Ack pairs, configurations, the ending) and the read-ahead window.

    A fleet stream is idle almost always, so this is one slotted object with a plain list and at most one
    waiting future per side, in place of an asyncio.Queue (four deques and an Event), a Semaphore and
    closures (bench/fleet.py measures the per-stream memory). The list is not bounded itself (the window
    bounds the batches) so that an ending always fits."""

    __slots__ = (
        "service",
        "requests",
        "context",
        "items",
        "unacked",
        "device",
        "unsubscribe",
        "revocation",
        "_writer_waits",
        "_reader_waits",
    )

    def __init__(self, service: IngestService, requests: AsyncIterator[bytes], context):
        self.service, self.requests, self.context = service, requests, context
        self.items: list = []
        self.unacked = 0  # batches handed over and not yet acked
        self.device: str | None = None  # once counted in the limiter's open streams
        self.unsubscribe: Callable[[], None] | None = None  # ends the configuration subscription
        self.revocation = None
        if service.auth is not None:
            self.revocation = service.auth.watch(context.invocation_metadata())
        self._writer_waits: asyncio.Future | None = None
        self._reader_waits: asyncio.Future | None = None

    def put(self, item) -> None:
        self.items.append(item)
        _wake(self._writer_waits)
        self._writer_waits = None

    async def get(self):
        while not self.items:
            self._writer_waits = asyncio.get_running_loop().create_future()
            await self._writer_waits
        return self.items.pop(0)

    async def acquire(self) -> None:
        """Wait for room in the read-ahead window, then take a place in it."""
        while self.unacked >= MAX_INFLIGHT_PER_STREAM:
            self._reader_waits = asyncio.get_running_loop().create_future()
            await self._reader_waits
        self.unacked += 1

    def release(self) -> None:
        self.unacked -= 1
        _wake(self._reader_waits)
        self._reader_waits = None

    def push_config(self, config) -> None:
        self.put(pb.StreamResponse(config=config))

    def open(self, device: str) -> None:
        self.service.limiter.open_stream(device)
        self.device = device
        if self.service.configs is not None:
            self.unsubscribe = self.service.configs.subscribe(device, self.push_config)

    async def read(self) -> None:
        service = self.service
        try:
            device = service.device_of(self.context)
            if service.draining.is_set():
                raise Draining("server is shutting down; reconnect to another node or later")
            if device is not None:
                self.open(device)
            async for raw in self.requests:
                batch = await service.offload(service._decode, raw)
                if self.device is None:  # open mode: the stream belongs to its first batch's device
                    self.open(batch.device_id)
                await self.acquire()
                self.put(await service.accept(raw, batch, device))
            self.put(None)
        except asyncio.CancelledError:  # drain() or revocation: no more reading; what was read gets its ack
            if self.revocation is not None and self.revocation.revoked.is_set():
                self.put(self.revocation.error())
            else:
                self.put(Draining("server is shutting down; resend what was not acked"))
        except Exception as exc:  # handed to the writer, which ends the call with a status
            self.put(exc)

    def close(self) -> None:
        if self.unsubscribe is not None:
            self.unsubscribe()
        if self.revocation is not None:
            self.revocation.close()
        if self.device is not None:
            self.service.limiter.close_stream(self.device)


def _wake(waiter: asyncio.Future | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


async def _cancel_when(revocation, reader: asyncio.Task) -> None:
    await revocation.revoked.wait()
    reader.cancel()


async def durable(done: asyncio.Future | None, ack: pb.Ack, context) -> pb.Ack:
    """The Ack, once its batch is durable. A batch that could not be made durable ends the call with
    UNAVAILABLE and no Ack, so the device resends it (and a resend is stored once)."""
    if done is not None:
        try:
            await done
        except Exception as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"batch seq={ack.seq} was not stored ({exc}); resend it"
            )
    return ack


def add_to_server(service: IngestService, server: grpc.aio.Server) -> None:
    handlers = {
        "Stream": grpc.stream_stream_rpc_method_handler(
            service.Stream, response_serializer=pb.StreamResponse.SerializeToString
        ),
        "Send": grpc.unary_unary_rpc_method_handler(
            service.Send, response_serializer=pb.Ack.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
