"""The device client library: record readings, and they reach the server exactly once, whatever the network
does.

    async with DeviceClient("ingest.example:50051", "pump-7", token=TOKEN) as device:
        device.record("temperature", 21.5)
        await device.flush()

`record` puts a reading into the open column batch; a batch is sealed when it holds `batch_readings`
readings or its first reading is `batch_age_s` old, gets the next `seq`, and joins the buffer of unacked
batches. One task keeps a stream open and sends the buffer in order, at most `max_inflight` batches ahead of
their acks; an Ack removes its batch. When the stream breaks, the unacked batches are resent in order with
the same seq and the same bytes (so the server stores a resend once), after a jittered exponential backoff,
or after exactly the `grpc-retry-pushback-ms` the server asked for.

Guarantees (README "Device client"): a reading is acked once it is durable on the server; an unacked batch
stays buffered and is resent across network cuts and server restarts; with `buffer_path` the buffer is a
SQLite file, so sealed batches also survive a restart of the client (the open batch, at most
`batch_age_s` of readings, does not: `close()` seals it first). The buffer is bounded: `record` raises
BufferFull rather than grow it past `max_unacked_batches`.

Configuration pushed by the server (DeviceConfig) goes to `on_config`; once it returns, the client reports
the version applied, and the server stops sending it. Readings the server refused go to `on_rejected`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import logging
import math
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from iotstream.v1 import ingest_pb2 as pb

log = logging.getLogger(__name__)

STREAM_METHOD = "/iotstream.v1.Ingest/Stream"
# NATs forget idle flows after 30-60 s: ping every 30 s (the server accepts pings 20 s apart even without
# calls), and give up on a silent peer after 10 s so a dead path is noticed and redialled.
KEEPALIVE_OPTIONS = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)
# Resending cannot help with these: the client stops and says why.
FATAL = frozenset(
    {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED}
)


class BufferFull(Exception):
    """The unacked buffer is at `max_unacked_batches`: the server is away or slower than the device."""


class ClientFailed(Exception):
    """The server refused the stream for good (wrong token for this device, a malformed batch)."""


@dataclass(frozen=True)
class Rejected:
    """A reading the server did not accept, and why (RejectReason name and detail)."""

    metric: str
    value: float
    time_ms: int
    reason: str
    detail: str


@dataclass
class Stats:
    recorded: int = 0
    batches: int = 0  # sealed
    acked: int = 0  # readings accepted
    rejected: int = 0  # readings refused
    resent: int = 0  # batches sent again after a reconnect
    reconnects: int = 0
    pushbacks: int = 0  # reconnects delayed by grpc-retry-pushback-ms
    configs: int = 0  # configurations applied


class Buffer:
    """Sealed, unacked batches by seq, in memory, mirrored to SQLite when `path` is given (WAL,
    synchronous=FULL: a batch is on disk before `record` that sealed it returns)."""

    def __init__(self, path: str | None = None):
        self.batches: collections.OrderedDict[int, tuple[bytes, int]] = collections.OrderedDict()
        self.applied = 0  # DeviceConfig version applied
        self.db = None
        if path is not None:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS batches (seq INTEGER PRIMARY KEY, raw BLOB, readings INTEGER)"
            )
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER)")
            for seq, raw, n in self.db.execute("SELECT seq, raw, readings FROM batches ORDER BY seq"):
                self.batches[seq] = (raw, n)
            row = self.db.execute("SELECT value FROM meta WHERE key = 'applied'").fetchone()
            self.applied = row[0] if row else 0

    def add(self, seq: int, raw: bytes, readings: int) -> None:
        if self.db is not None:
            self.db.execute("INSERT INTO batches VALUES (?, ?, ?)", (seq, raw, readings))
        self.batches[seq] = (raw, readings)

    def remove(self, seq: int) -> None:
        if self.batches.pop(seq, None) is not None and self.db is not None:
            self.db.execute("DELETE FROM batches WHERE seq = ?", (seq,))

    def set_applied(self, version: int) -> None:
        self.applied = version
        if self.db is not None:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('applied', ?)", (version,))

    def last_seq(self) -> int:
        return next(reversed(self.batches), 0)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


class Columns:
    """The open batch, as the columns of a ReadingBatch."""

    def __init__(self):
        self.times: list[int] = []
        self.index: list[int] = []
        self.values: list[float] = []
        self.names: dict[str, int] = {}
        self.opened = 0.0  # monotonic time of the first reading

    def add(self, metric: str, value: float, time_ms: int) -> None:
        if not self.values:
            self.opened = time.monotonic()
        self.times.append(time_ms)
        self.index.append(self.names.setdefault(metric, len(self.names)))
        self.values.append(value)

    def seal(self, device_id: str, seq: int) -> bytes:
        base = self.times[0]
        return pb.ReadingBatch(
            device_id=device_id,
            seq=seq,
            base_time_ms=base,
            time_offset_ms=[t - base for t in self.times],
            metric_names=list(self.names),
            metric_index=self.index,
            values=self.values,
        ).SerializeToString()


def rejected_readings(raw: bytes, ack: pb.Ack) -> list[Rejected]:
    batch = pb.ReadingBatch.FromString(raw)
    out = []
    for r in ack.rejected:
        i = r.index
        known = i < len(batch.values) and i < len(batch.metric_index) and i < len(batch.time_offset_ms)
        metric = (
            batch.metric_names[batch.metric_index[i]]
            if known and batch.metric_index[i] < len(batch.metric_names)
            else ""
        )
        out.append(
            Rejected(
                metric,
                batch.values[i] if known else math.nan,
                batch.base_time_ms + batch.time_offset_ms[i] if known else 0,
                pb.RejectReason.Name(r.reason),
                r.detail,
            )
        )
    return out


class DeviceClient:
    """One device's connection (asyncio). Use as `async with`, or `start()` ... `close()`.

    Args:
        target: "host:port" of an ingest server.
        device_id: the device's id (must match the token's device when the server has auth on).
        token: bearer token of the device.
        tls: an iotstream.common.tls.ClientTLS for servers with TLS on.
        batch_readings / batch_age_s: a batch is sealed at this many readings or this age.
        max_unacked_batches: the buffer's bound; `record` raises BufferFull past it.
        max_inflight: batches sent ahead of their acks.
        buffer_path: SQLite file for the buffer (sealed batches survive a client restart); None: memory.
        on_config: called with each new DeviceConfig (may be async); the version is reported applied
            once it returns, not when it raises.
        on_rejected: called with a list of Rejected per batch that had any (default: a log warning).
        on_ack: called with each Ack and the seconds from its batch's send (for benchmarks).
        backoff_s / backoff_max_s: first and largest reconnect delay (full jitter, doubling per failure).
        channel: an aio channel to share between devices (not closed by the client).
        options: extra gRPC channel options (on top of KEEPALIVE_OPTIONS).
    """

    def __init__(
        self,
        target: str,
        device_id: str,
        token: str | None = None,
        tls=None,
        *,
        batch_readings: int = 500,
        batch_age_s: float = 1.0,
        max_unacked_batches: int = 1000,
        max_inflight: int = 16,
        buffer_path: str | None = None,
        on_config: Callable[[pb.DeviceConfig], object] | None = None,
        on_rejected: Callable[[list[Rejected]], None] | None = None,
        on_ack: Callable[[pb.Ack, float], None] | None = None,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        channel: grpc.aio.Channel | None = None,
        options=(),
    ):
        if batch_readings < 1 or max_unacked_batches < 1 or max_inflight < 1:
            raise ValueError("batch_readings, max_unacked_batches and max_inflight must be at least 1")
        self.target, self.device_id, self.token, self.tls = target, device_id, token, tls
        self.batch_readings, self.batch_age_s = batch_readings, batch_age_s
        self.max_unacked_batches, self.max_inflight = max_unacked_batches, max_inflight
        self.on_config, self.on_ack = on_config, on_ack
        self.on_rejected = on_rejected or (
            lambda rs: log.warning("%s: %d readings rejected, first: %s", device_id, len(rs), rs[0])
        )
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.buffer = Buffer(buffer_path)
        self.stats = Stats()
        self.columns = Columns()
        # Seqs only grow, across restarts too (a restarted memory-only client must not reuse a seq with
        # other readings): start at the clock in microseconds, or after the buffered batches.
        self._seq = max(time.time_ns() // 1000, self.buffer.last_seq())
        self._channel, self._own_channel, self._options = channel, channel is None, options
        self._changed: asyncio.Event | None = (
            None  # set and replaced whenever the buffer or the state changes
        )
        self._sent: set[int] = set()  # seqs written at least once and not acked yet
        self._task: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.failed: ClientFailed | None = None

    # ---- recording --------------------------------------------------------------------------------

    def record(self, metric: str, value: float, time_ms: int | None = None) -> None:
        """Add a reading (time: now unless given, Unix ms). Raises BufferFull when the open batch is full
        and the buffer holds max_unacked_batches; ClientFailed once the server refused the device."""
        if self.failed is not None:
            raise self.failed
        if len(self.columns.values) >= self.batch_readings:
            self._seal()
            if self.columns.values:
                raise BufferFull(
                    f"{len(self.buffer.batches)} batches wait for their acks "
                    f"(max_unacked_batches={self.max_unacked_batches}); retry later"
                )
        self.columns.add(
            metric, float(value), time.time_ns() // 1_000_000 if time_ms is None else int(time_ms)
        )
        self.stats.recorded += 1
        if len(self.columns.values) >= self.batch_readings:
            self._seal()
        elif len(self.columns.values) == 1 and self._changed is not None:
            self._timer = asyncio.get_running_loop().call_later(self.batch_age_s, self._seal)

    def _seal(self) -> None:
        """Move the open batch into the buffer (unless the buffer is full: then it stays open)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.columns.values or len(self.buffer.batches) >= self.max_unacked_batches:
            return
        self._seq += 1
        self.buffer.add(self._seq, self.columns.seal(self.device_id, self._seq), len(self.columns.values))
        self.columns = Columns()
        self.stats.batches += 1
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def room(self) -> None:
        """Wait until the buffer can take another batch."""
        await self._wait(lambda: len(self.buffer.batches) < self.max_unacked_batches)

    async def flush(self, timeout: float | None = None) -> None:
        """Seal the open batch and wait until every batch is acked (TimeoutError after `timeout` s)."""
        self._seal()
        await asyncio.wait_for(
            self._wait(lambda: not self.buffer.batches and not self.columns.values), timeout
        )

    async def _wait(self, ready: Callable[[], bool]) -> None:
        while not ready() and self.failed is None:
            assert self._changed is not None  # made by start(), on the client's loop
            await self._changed.wait()  # (no await between the check and taking the event: no lost wake-up)
        if self.failed is not None:
            raise self.failed

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> DeviceClient:
        self._changed = asyncio.Event()
        if self._channel is None:
            from iotstream.common.tls import aio_channel

            self._channel = aio_channel(self.target, self.tls, [*KEEPALIVE_OPTIONS, *self._options])
        self._task = asyncio.create_task(self._run(), name=f"device-{self.device_id}")
        if self.columns.values:
            self._timer = asyncio.get_running_loop().call_later(self.batch_age_s, self._seal)
        return self

    async def close(self, timeout: float = 10.0) -> int:
        """Seal, wait up to `timeout` s for the acks, stop. Returns the batches left unacked (kept on disk
        with `buffer_path`, resent by the next client on that file)."""
        if self._task is None:
            return len(self.buffer.batches)
        try:
            await self.flush(timeout)
        except (TimeoutError, ClientFailed):
            pass
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        if self._own_channel and self._channel is not None:
            await self._channel.close()
            self._channel = None
        left = len(self.buffer.batches)
        self.buffer.close()
        return left

    async def __aenter__(self) -> DeviceClient:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ---- the stream --------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            outcome = await self._session()
            if outcome.acked:
                failures = 0
            code = outcome.code
            if code is not None and code in FATAL:
                self.failed = ClientFailed(
                    f"device {self.device_id}: the server refused the stream with "
                    f"{code.name}: {outcome.details}"
                )
                log.error("%s", self.failed)
                self._notify()
                return
            self.stats.reconnects += 1
            if outcome.pushback_s is not None:  # the server said how long: exactly that, no less
                self.stats.pushbacks += 1
                delay = outcome.pushback_s
            else:
                delay = random.uniform(0, min(self.backoff_max_s, self.backoff_s * 2**failures))
                failures += 1
            log.info(
                "%s: stream ended (%s: %s); reconnecting in %.2f s",
                self.device_id,
                code.name if code else "?",
                outcome.details,
                delay,
            )
            await asyncio.sleep(delay)

    async def _session(self) -> Outcome:
        """One stream, until it breaks: resend the buffer in order, then send batches as they are sealed."""
        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else None
        assert self._channel is not None  # opened by start()
        call = self._channel.stream_stream(
            STREAM_METHOD, request_serializer=None, response_deserializer=pb.StreamResponse.FromString
        )(metadata=metadata)
        inflight: collections.deque[tuple[int, float]] = collections.deque()  # (seq or 0, sent at)
        lock = asyncio.Lock()
        outcome = Outcome()

        async def write(seq: int, raw: bytes) -> None:
            async with lock:
                inflight.append((seq, time.perf_counter()))
                await call.write(raw)

        async def report() -> None:
            # seq 0: a control batch without readings, acked like any other and never stored.
            await write(
                0,
                pb.ReadingBatch(
                    device_id=self.device_id, config_applied=self.buffer.applied
                ).SerializeToString(),
            )

        async def send() -> None:
            await report()  # says who this stream is (auth off) and which configuration is applied
            last = 0
            while True:

                def sendable(last: int = last) -> bool:
                    return (
                        self.buffer.last_seq() > last and sum(1 for s, _ in inflight if s) < self.max_inflight
                    )

                await self._wait(sendable)
                seq = next(s for s in self.buffer.batches if s > last)
                if seq in self._sent:
                    self.stats.resent += 1
                self._sent.add(seq)
                last = seq
                await write(seq, self.buffer.batches[seq][0])

        async def receive() -> None:
            async for response in call:
                if response.HasField("config"):
                    if await self._apply(response.config):
                        await report()
                    continue
                ack = response.ack
                seq, sent = inflight.popleft()
                if ack.seq != seq:
                    raise RuntimeError(f"ack for seq {ack.seq} while seq {seq} was due: acks out of order")
                outcome.acked = True
                if seq:
                    self._acked(seq, ack, time.perf_counter() - sent)

        # Receiving runs here, sending in one task (a task less per device: 10,000 devices hold 10,000
        # sessions).
        # Whichever ends first ends the call, so the other one ends too.
        sender = asyncio.create_task(send())
        sender.add_done_callback(lambda _: call.cancel())
        try:
            await receive()
        except asyncio.CancelledError:
            if not sender.done():  # close() stops the client; else the sender ended the call
                raise
        except Exception as exc:  # a broken call, or acks out of order: the status below says more
            outcome.details = str(exc)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            call.cancel()
        try:
            # A failed write hides the status the server sent (grpc/grpc#36066): ask the call.
            outcome.code = await asyncio.wait_for(call.code(), 5)
            outcome.details = await call.details()
            for key, value in await call.trailing_metadata() or ():
                if key == "grpc-retry-pushback-ms":
                    outcome.pushback_s = int(value) / 1000
        except (TimeoutError, ValueError, grpc.RpcError) as exc:
            outcome.details = outcome.details or str(exc)
        return outcome

    def _acked(self, seq: int, ack: pb.Ack, seconds: float) -> None:
        raw = self.buffer.batches.get(seq, (b"",))[0]
        self.buffer.remove(seq)
        self._sent.discard(seq)
        self.stats.acked += ack.accepted
        self.stats.rejected += len(ack.rejected)
        if ack.rejected:
            self.on_rejected(rejected_readings(raw, ack))
        if self.on_ack is not None:
            self.on_ack(ack, seconds)
        if self.columns.values and self._timer is None:  # it waited for room in the buffer
            self._seal()
        self._notify()

    async def _apply(self, config: pb.DeviceConfig) -> bool:
        """Hand a new configuration to on_config; True when the server should hear the applied version."""
        if config.version > self.buffer.applied:
            try:
                if self.on_config is not None:
                    done = self.on_config(config)
                    if inspect.isawaitable(done):
                        await done
            except Exception:
                log.exception(
                    "%s: on_config failed for version %d; not reported applied",
                    self.device_id,
                    config.version,
                )
                return False
            self.buffer.set_applied(config.version)
            self.stats.configs += 1
        return True


@dataclass
class Outcome:
    code: grpc.StatusCode | None = None
    details: str = ""
    pushback_s: float | None = None
    acked: bool = False  # the stream got at least one ack (the connection worked)


class BlockingDeviceClient:
    """DeviceClient for code without an event loop: the client runs on a loop in its own thread.

    with BlockingDeviceClient("localhost:50051", "pump-7") as device:
        device.record("temperature", 21.5)
        device.flush(timeout=10)
    """

    def __init__(self, *args, **kwargs):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="device-client")
        self._thread.start()
        self.client = DeviceClient(*args, **kwargs)
        self._run(self.client.start())

    def _run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _call(self, fn, *args):
        done: concurrent.futures.Future = concurrent.futures.Future()

        def run():
            try:
                done.set_result(fn(*args))
            except Exception as exc:
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return done.result()

    def record(self, metric: str, value: float, time_ms: int | None = None) -> None:
        self._call(self.client.record, metric, value, time_ms)

    def flush(self, timeout: float | None = None) -> None:
        self._run(self.client.flush(timeout))

    @property
    def stats(self) -> Stats:
        return self.client.stats

    def close(self, timeout: float = 10.0) -> int:
        try:
            return self._run(self.client.close(timeout))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __enter__(self) -> BlockingDeviceClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
