"""The gRPC Query service: argument checks and paging here, every SQL statement in clickhouse.Store.

Guardrails (QueryLimits; each refusal counted in GetStats' `rejected` map under the name in brackets):

* a call without a deadline gets `default_deadline_s`; past its deadline it ends with DEADLINE_EXCEEDED and
  ClickHouse stops the query too (max_execution_time) [QUERY_DEADLINE_CALLS];
* Aggregate and GetHistory reading more than `max_rows_read` rows: RESOURCE_EXHAUSTED, ClickHouse stops
  the query (max_rows_to_read) [ROWS_READ_LIMIT_CALLS]; an Aggregate answer of more than `max_buckets`
  buckets over all its series: RESOURCE_EXHAUSTED [AGGREGATE_TOO_LARGE_CALLS]. Buckets are counted in the
  answer, not in the range asked for: "everything since 1970 by the minute" is fine over a day of data;
  over years of data the rows-read cap stops it first;
* more than `max_watches` WatchAnomalies streams open: RESOURCE_EXHAUSTED [TOO_MANY_WATCHES_CALLS]; an
  idle stream costs no query: it wakes when this process writes an episode (EpisodeSignal; at most once per
  WATCH_MIN_LOOK_S), when the next episode it saw open closes, or, where another process writes the
  episodes (a query node apart from its processors, or a shared ClickHouse server), every `watch_poll_s`;
* with auth on, a WatchAnomalies stream whose token is revoked ends UNAUTHENTICATED [REVOKED_CALLS];
* GetStats' stored figures are computed once for all callers: at most `stats_max_age_s` old (1 s) while
  acked readings wait to be stored, and fresh after every write of this process once none wait (the live
  ingest figures are read per call).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextvars
import json
import time
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from iotstream.clickhouse import StorageError
from iotstream.clickhouse.store import ReadCap
from iotstream.v1 import query_pb2 as pb
from iotstream.v1 import query_pb2_grpc as pb_grpc

from .shared import Shared
from .wakeup import EpisodeSignal

DEFAULT_SILENCE_MS = 5 * 60_000
HISTORY_PAGE_CAP = 100_000
QUERY_DEADLINE_CALLS = "QUERY_DEADLINE_CALLS"
AGGREGATE_TOO_LARGE_CALLS = "AGGREGATE_TOO_LARGE_CALLS"
ROWS_READ_LIMIT_CALLS = "ROWS_READ_LIMIT_CALLS"
TOO_MANY_WATCHES_CALLS = "TOO_MANY_WATCHES_CALLS"
REVOKED_CALLS = "REVOKED_CALLS"

# When the current unary call must end (monotonic seconds), set by its handler wrapper.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("query_deadline", default=None)


@dataclass(frozen=True)
class QueryLimits:
    default_deadline_s: float = 30.0  # for calls that set no deadline (streams: per query they run)
    max_buckets: int = 1_000_000  # in one Aggregate answer, over all its series
    max_rows_read: int = 200_000_000  # rows one Aggregate or GetHistory query may read
    max_watches: int = 100  # WatchAnomalies streams open at once on this node
    watch_poll_s: float = 1.0  # how often a stream looks for episodes written by another process
    # GetStats' stored figures (counts, devices, table sizes) are shared by its callers and at most this old
    # (query.shared.Shared); 0: one statement per call.
    stats_max_age_s: float = 1.0


class InvalidArgument(ValueError):
    pass


class Refused(Exception):
    """A request the guardrails refuse: ends the call with `code`, counted under `reason`."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason = code, reason


def encode_token(key: list) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def decode_token(token: str, size: int, field: str = "page_token", types: tuple | None = None) -> list | None:
    """The key list inside a token made by encode_token; `types` checks each item's type."""
    if not token:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(token.encode()))
    except ValueError:
        key = None
    if (
        not isinstance(key, list)
        or len(key) != size
        or (
            types
            and not all(isinstance(k, t) and not isinstance(k, bool) for k, t in zip(key, types, strict=True))
        )
    ):
        raise InvalidArgument(f"{field}: not a value returned by this service")
    return key


def page_size(value: int, default: int, cap: int) -> int:
    return default if value == 0 else min(value, cap)


MAX_TIME_MS = 4_102_444_800_000  # 2100-01-01: past it, ClickHouse DateTime arithmetic overflows


def time_range(start_ms: int, end_ms: int) -> tuple[int, int]:
    end = end_ms or time.time_ns() // 1_000_000 + 1
    if not 0 <= start_ms <= MAX_TIME_MS:
        raise InvalidArgument(f"start_ms: {start_ms} is outside [0, {MAX_TIME_MS}]")
    if not 0 <= end <= MAX_TIME_MS:
        raise InvalidArgument(f"end_ms: {end} is outside [0, {MAX_TIME_MS}]")
    if end <= start_ms:
        raise InvalidArgument(f"end_ms: {end} must be after start_ms {start_ms}")
    return start_ms, end


WATCH_MIN_LOOK_S = 0.2  # a woken WatchAnomalies stream looks at most this often
FAR_MS = 4_102_444_800_000  # 2100-01-01: "any time later" for the next-closure look


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def check_enum(field: str, value: int, enum) -> int:
    if value not in enum.values():
        raise InvalidArgument(f"{field}: {value} is not one of {sorted(enum.values())}")
    return value


def aggregate_response(table, funcs: list[str], sources: list[str]) -> pb.AggregateResponse:
    """Rows ordered by (dev, metric, bucket_ms) as one series per (dev, metric), filled a column slice at
    a time rather than a value at a time (thousands of buckets per reply)."""
    resp = pb.AggregateResponse(sources=sources)
    dev, metric = table.column("dev").to_pylist(), table.column("metric").to_pylist()
    starts = [i for i in range(len(dev)) if i == 0 or (dev[i], metric[i]) != (dev[i - 1], metric[i - 1])]
    cols = {name: table.column(name).to_pylist() for name in ("bucket_ms", *(f.lower() for f in funcs))}
    ends = [*starts[1:], len(dev)] if starts else []  # no rows: no series
    for a, b in zip(starts, ends, strict=True):
        series = resp.series.add(device_id=dev[a], metric=metric[a])
        series.bucket_start_ms.extend(cols["bucket_ms"][a:b])
        for f in funcs:
            getattr(series, f.lower()).extend(cols[f.lower()][a:b])
    return resp


# ---- anomaly episodes ---------------------------------------------------------------------------------

EPISODE_KEY = (str, str, str, int)  # device_id, metric, kind, opened_ms: an episode's identity


def anomaly_id(row: dict) -> str:
    return encode_token([row["device_id"], row["metric"], row["kind"], row["opened_ms"]])


def anomaly_message(row: dict, now: int) -> pb.Anomaly:
    """A store row (clickhouse.episodes.COLUMNS) as the wire message, open or closed as of `now`."""
    return pb.Anomaly(
        device_id=row["device_id"],
        metric=row["metric"],
        kind=row["kind"],
        time_ms=row["time_ms"],
        value=row["value"],
        score=row["score"],
        zscore=row["zscore"],
        id=anomaly_id(row),
        severity=row["severity"],
        state=pb.ANOMALY_OPEN if row["closes_ms"] > now else pb.ANOMALY_CLOSED,
        opened_ms=row["opened_ms"],
        updated_ms=row["updated_ms"],
        closes_ms=row["closes_ms"],
        readings=row["readings"],
        acknowledged_ms=row["acked_ms"],
        acknowledged_by=row["acked_by"],
        detectors=row["detectors"],
    )


def episode_key(row: dict) -> tuple:
    return row["device_id"], row["metric"], row["kind"], row["opened_ms"]


# A watch position: `changes` = (version_us, *episode key) of the last episode version reported;
# `closures` = (closes_ms, *episode key) of the last closure reported. (v, "", "", "", -1) means "all
# before v", as no real key sorts before it.
WATCH_CURSOR = (int, str, str, str, int, int, str, str, str, int)


def encode_cursor(changes: tuple, closures: tuple) -> str:
    return encode_token([*changes, *closures])


def watch_event_type(row: dict, seen: tuple, now: int) -> int:
    """OPENED for an open episode the watcher at `seen` has not reported, UPDATED for one it has, CLOSED
    for one already closed."""
    if row["closes_ms"] <= now:
        return pb.AnomalyEvent.CLOSED
    unseen = (row["created_us"], *episode_key(row)) > seen
    return pb.AnomalyEvent.OPENED if unseen else pb.AnomalyEvent.UPDATED


def watch_matches(request: pb.WatchAnomaliesRequest, row: dict) -> bool:
    return (
        (not request.device_id or row["device_id"] == request.device_id)
        and (not request.metric or row["metric"] == request.metric)
        and (not request.kind or row["kind"] == request.kind)
    )


def start_cursor(version_us: int) -> tuple[tuple, tuple]:
    """Watch positions for "from now on": every version written so far and every closure so far seen."""
    return (version_us + 1, "", "", "", -1), (now_ms() + 1, "", "", "", -1)


async def episode_events(store, changes: tuple, closures: tuple, run, pause, batch: int):
    """Episode changes after the positions (see WATCH_CURSOR), forever: (AnomalyEvent type, store row, now,
    cursor after it), deletions included (row["deleted"]). Each look reports, in order: episodes seen open
    before whose quiet period has now ended
    (CLOSED), then new versions of episodes (OPENED / UPDATED, or CLOSED if already closed). Closures come
    first so that an episode reported open in a look is reported closed by a later one, exactly once.
    `run(fn, *args)` awaits a blocking store call; `pause(changes, closures)` waits between looks that found
    nothing more, given the positions after the look.
    WatchAnomalies and the webhooks both follow this."""
    while True:
        now = now_ms()
        while True:
            rows = await run(store.episode_closures, changes, closures, now, batch)
            for row in rows:
                closures = (row["closes_ms"], *episode_key(row))
                yield pb.AnomalyEvent.CLOSED, row, now, encode_cursor(changes, closures)
            if len(rows) < batch:
                break
        closures = (now + 1, "", "", "", -1)
        rows = await run(store.episode_changes, changes, now, batch)
        for row in rows:
            seen, changes = changes, (row["version_us"], *episode_key(row))
            # A deleted episode was merged into an earlier one, which comes as its own change; the
            # deletion is yielded too (row["deleted"]), for followers that told someone it was open.
            yield watch_event_type(row, seen, now), row, now, encode_cursor(changes, closures)
        if len(rows) < batch:
            await pause(changes, closures)


class QueryService(pb_grpc.QueryServicer):
    WATCH_BATCH = 500  # episode changes read per look

    def __init__(
        self,
        store,
        stats_source=None,
        silence_ms: int = DEFAULT_SILENCE_MS,
        auth=None,
        limits: QueryLimits | None = None,
        episodes_written: EpisodeSignal | None = None,
    ):
        self.store = store
        self.stats_source = stats_source  # gives live ingest figures (rate, queue depth, rejections)
        self.silence_ms = silence_ms
        self.auth = auth  # iotstream.auth.Authenticator, or None: open
        self.limits = limits or QueryLimits()
        # Given when every episode write of the store is this process's: watchers then wait for it instead
        # of polling.
        self.episodes_written = episodes_written
        self.refused: collections.Counter[str] = collections.Counter()
        self.watches = 0
        self.stored_stats = Shared(
            lambda: asyncio.to_thread(self._stored_stats), self.limits.stats_max_age_s, self._stats_valid
        )

    def remaining_s(self, context) -> float:
        deadline = _DEADLINE.get()
        if deadline is not None:
            return max(0.0, deadline - time.monotonic())
        remaining = context.time_remaining()
        return self.limits.default_deadline_s if remaining is None else remaining

    async def _run(self, context, fn, *args, capped: bool = False):
        """Run a blocking store call off the event loop, within the call's deadline (or the default one);
        `capped` store calls also get the rows-read cap and the time left, enforced by ClickHouse."""
        remaining = self.remaining_s(context)
        kwargs = {"cap": ReadCap(self.limits.max_rows_read, remaining)} if capped else {}
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), remaining)
        except TimeoutError:
            raise self._deadline_passed(context) from None
        except StorageError as exc:
            if "TIMEOUT_EXCEEDED" in str(exc):
                raise self._deadline_passed(context) from None
            if "TOO_MANY_ROWS" in str(exc):
                raise Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    ROWS_READ_LIMIT_CALLS,
                    f"the query would read more than {self.limits.max_rows_read} rows (the limit); "
                    "narrow the time range, the devices or the metrics (Aggregate: an interval "
                    "that is a multiple of 1 min, 1 h or 1 day reads the rollups)",
                ) from None
            raise

    def _deadline_passed(self, context) -> Refused:
        unset = context.time_remaining() is None
        return Refused(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            QUERY_DEADLINE_CALLS,
            "deadline passed during the query"
            + (
                f" (the call set none: the server's default of "
                f"{self.limits.default_deadline_s:g} s applies); narrow the query"
                if unset
                else ""
            ),
        )

    async def _call(self, context, build):
        try:
            return await build()
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Refused as exc:
            await self._refuse(context, exc)

    async def _refuse(self, context, exc: Refused):
        self.refused[exc.reason] += 1
        await context.abort(exc.code, str(exc))

    # ---- RPCs ---------------------------------------------------------------------------------

    async def ListDevices(self, request: pb.ListDevicesRequest, context) -> pb.ListDevicesResponse:
        async def build():
            after = decode_token(request.page_token, 1, types=(str,))
            limit = page_size(request.page_size, 100, 10_000)
            check_enum("status", request.status, pb.DeviceStatus)
            since = now_ms() - self.silence_ms
            rows = await self._run(
                context,
                self.store.list_devices,
                request.id_prefix,
                int(request.status),
                since,
                after[0] if after else "",
                limit + 1,
            )
            resp = pb.ListDevicesResponse(
                devices=[
                    pb.DeviceSummary(status=self._status(r["last_stored_ms"]), **r) for r in rows[:limit]
                ]
            )
            if len(rows) > limit:
                resp.next_page_token = encode_token([rows[limit - 1]["device_id"]])
            return resp

        return await self._call(context, build)

    async def GetDevice(self, request: pb.GetDeviceRequest, context) -> pb.Device:
        async def build():
            if not request.device_id:
                raise InvalidArgument("device_id: required")
            rows = await self._run(context, self.store.device_summary, request.device_id, now_ms())
            if not rows:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND, f"device_id: no readings for {request.device_id!r}"
                )
            stored = max(r["stored_ms"] for r in rows)
            return pb.Device(
                config_version=rows[0]["config_version"],
                config_reported_version=rows[0]["config_reported_version"],
                config_reported_ms=rows[0]["config_reported_ms"],
                device_id=request.device_id,
                status=self._status(stored),
                last_stored_ms=stored,
                first_seen_ms=min(r["first_ms"] for r in rows),
                last_seen_ms=max(r["time_ms"] for r in rows),
                readings=sum(r["stored_readings"] for r in rows),
                anomalies=rows[0]["anomalies"],
                open_anomalies=rows[0]["open_anomalies"],
                latest=[
                    pb.MetricValue(metric=r["metric"], time_ms=r["time_ms"], value=r["value"]) for r in rows
                ],
            )

        return await self._call(context, build)

    async def GetHistory(self, request: pb.GetHistoryRequest, context) -> pb.GetHistoryResponse:
        async def build():
            if not request.device_id:
                raise InvalidArgument("device_id: required")
            start, end = time_range(request.start_ms, request.end_ms)
            limit = page_size(request.page_size, 10_000, HISTORY_PAGE_CAP)
            # metric, time_ms, value, rows of that key sent
            cursor = decode_token(request.page_token, 4, types=(str, int, (int, float), int))
            after, skip = (tuple(cursor[:3]), cursor[3]) if cursor else (None, 0)
            if not 0 <= skip <= HISTORY_PAGE_CAP:  # a made-up skip must not widen the scan
                raise InvalidArgument("page_token: not a value returned by this service")
            table = await self._run(
                context,
                self.store.history,
                request.device_id,
                list(request.metrics),
                start,
                end,
                after,
                limit + skip + 1,
                capped=True,
            )
            metric, times, values = (table.column(c).to_pylist() for c in ("metric", "time_ms", "value"))
            rows = list(zip(metric, times, values, strict=True))[skip:]
            resp = pb.GetHistoryResponse()
            for m, t, v in rows[:limit]:
                if not resp.series or resp.series[-1].metric != m:
                    resp.series.add(metric=m)
                resp.series[-1].time_ms.append(t)
                resp.series[-1].values.append(v)
            if len(rows) > limit:
                last = rows[limit - 1]
                # Rows equal to the cursor key come again on the next page; count how many to skip.
                same = sum(1 for r in rows[:limit] if r == last) + (skip if after == last else 0)
                resp.next_page_token = encode_token([*last, same])
            return resp

        return await self._call(context, build)

    async def Aggregate(self, request: pb.AggregateRequest, context) -> pb.AggregateResponse:
        async def build():
            start, end = time_range(request.start_ms, request.end_ms)
            if request.interval_ms < 1000:
                raise InvalidArgument(f"interval_ms: {request.interval_ms} is below the minimum of 1000")
            for f in request.funcs:
                check_enum("funcs", f, pb.AggFunc)
            funcs = [pb.AggFunc.Name(f) for f in request.funcs if f != pb.AGG_FUNC_UNSPECIFIED] or [
                "AVG",
                "MIN",
                "MAX",
                "COUNT",
            ]
            funcs = list(dict.fromkeys(funcs))
            table, sources = await self._run(
                context,
                self.store.aggregate,
                list(request.device_ids),
                list(request.metrics),
                start,
                end,
                request.interval_ms,
                funcs,
                request.merge_devices,
                capped=True,
            )
            if table.num_rows > self.limits.max_buckets:
                raise Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    AGGREGATE_TOO_LARGE_CALLS,
                    f"the answer has {table.num_rows} buckets over all series, over the limit of "
                    f"{self.limits.max_buckets}; name fewer device_ids or metrics, merge_devices, "
                    "a wider interval_ms or a shorter range",
                )
            return aggregate_response(table, funcs, sources)

        return await self._call(context, build)

    async def ListAnomalies(self, request: pb.ListAnomaliesRequest, context) -> pb.ListAnomaliesResponse:
        async def build():
            start, end = time_range(request.start_ms, request.end_ms)
            after = decode_token(request.page_token, 4, types=(int, str, str, str))
            limit = page_size(request.page_size, 100, 10_000)
            check_enum("min_severity", request.min_severity, pb.Severity)
            check_enum("state", request.state, pb.AnomalyState)
            check_enum("acknowledged", request.acknowledged, pb.AckFilter)
            now = now_ms()
            rows = await self._run(
                context,
                self.store.anomalies,
                request.device_id,
                request.metric,
                request.kind,
                request.min_severity,
                request.state,
                request.acknowledged,
                start,
                end,
                now,
                tuple(after) if after else None,
                limit + 1,
            )
            resp = pb.ListAnomaliesResponse(anomalies=[anomaly_message(r, now) for r in rows[:limit]])
            if len(rows) > limit:
                last = rows[limit - 1]
                resp.next_page_token = encode_token(
                    [last["opened_ms"], last["device_id"], last["metric"], last["kind"]]
                )
            return resp

        return await self._call(context, build)

    async def AcknowledgeAnomaly(self, request: pb.AcknowledgeAnomalyRequest, context) -> pb.Anomaly:
        async def build():
            key = decode_token(request.id, 4, "id", EPISODE_KEY)
            if key is None:
                raise InvalidArgument("id: required")
            if not request.by or len(request.by) > 200:
                raise InvalidArgument(f"by: required, at most 200 characters (got {len(request.by)})")
            now = now_ms()
            row = await self._run(context, self.store.acknowledge, *key, request.by, now)
            if row is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"id: no anomaly episode {key!r}")
            return anomaly_message(row, now)

        return await self._call(context, build)

    async def WatchAnomalies(self, request: pb.WatchAnomaliesRequest, context):
        """The events of episode_events that match the request. The cursor in each event holds both
        positions: resuming from it misses nothing and repeats nothing."""
        try:
            cursor = decode_token(request.cursor, 10, "cursor", WATCH_CURSOR)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if self.watches >= self.limits.max_watches:
            await self._refuse(
                context,
                Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    TOO_MANY_WATCHES_CALLS,
                    f"{self.watches} WatchAnomalies streams are open on this server (the limit); retry later "
                    "or "
                    "share one stream",
                ),
            )
        self.watches += 1
        revocation = self.auth.watch(context.invocation_metadata()) if self.auth is not None else None
        try:
            async for event in self._watch(request, cursor, context, revocation):
                yield event
        except Refused as exc:
            await self._refuse(context, exc)
        finally:
            self.watches -= 1
            if revocation is not None:
                revocation.close()

    async def _watch(self, request, cursor, context, revocation):
        if cursor is None:
            changes, closures = start_cursor(await self._run(context, self.store.episode_version))
        else:
            changes, closures = tuple(cursor[:5]), tuple(cursor[5:])
        yield pb.AnomalyEvent(type=pb.AnomalyEvent.WATCHING, cursor=encode_cursor(changes, closures))

        def run(fn, *args):
            return self._run(context, fn, *args)

        pause = WatchPause(self, run, revocation)
        async for kind, row, now, cursor in episode_events(
            self.store, changes, closures, run, pause, self.WATCH_BATCH
        ):
            if not row["deleted"] and watch_matches(request, row):
                yield pb.AnomalyEvent(type=kind, anomaly=anomaly_message(row, now), cursor=cursor)

    async def GetStats(self, request: pb.GetStatsRequest, context) -> pb.Stats:
        async def build():
            try:
                stored = await asyncio.wait_for(self.stored_stats.get(), self.remaining_s(context))
            except TimeoutError:
                raise self._deadline_passed(context) from None
            stats = pb.Stats(**stored)
            if self.stats_source is not None:  # this node's ingest and processor, if it runs them
                live = self.stats_source()
                stats.readings_per_s = live.get("readings_per_s", 0.0)
                stats.queue_readings = live.get("queue_readings", 0)
                stats.queue_lag_ms = live.get("queue_lag_ms", 0)
                stats.consumer_lag = live.get("consumer_lag", 0)
                stats.rejected.update(live.get("rejected", {}))
            for reason, n in self.refused.items():  # this service's own refusals
                stats.rejected[reason] = stats.rejected[reason] + n
            return stats

        return await self._call(context, build)

    def _stats_valid(self, began: float) -> bool:
        """Figures are shared while acked readings wait to be stored (they move anyway) or while this process
        has written nothing since they were computed; at rest, a write makes the next call compute anew."""
        waiting = self.stats_source is not None and self.stats_source().get("queue_readings", 0) > 0
        return waiting or began >= self.store.written_at

    def _stored_stats(self) -> dict:
        now = now_ms()
        return self.store.stats(now - self.silence_ms, now)

    def _status(self, last_stored_ms: int) -> int:
        return pb.ONLINE if last_stored_ms >= now_ms() - self.silence_ms else pb.OFFLINE


class WatchPause:
    """What a WatchAnomalies stream waits for between looks: the next write of an episode (or, without an
    EpisodeSignal, `watch_poll_s`), the next closure of an episode it saw open, or the revocation of its
    token, which ends the call."""

    def __init__(self, service: QueryService, run, revocation):
        self.service, self.run, self.revocation = service, run, revocation
        self.signal = service.episodes_written
        self.seen = self.signal.count if self.signal is not None else 0  # noted before the first look
        self.looked = time.monotonic()  # when the last look began

    async def __call__(self, changes: tuple, closures: tuple) -> None:
        waits: list[asyncio.Future] = []
        timeout: float | None = self.service.limits.watch_poll_s
        if self.signal is not None:  # a write since `seen` (noted before the look) ends the wait at once
            nxt = await self.run(self.service.store.episode_closures, changes, closures, FAR_MS, 1)
            timeout = max(0.0, (nxt[0]["closes_ms"] - now_ms()) / 1000) if nxt else None
            waits.append(self.signal.after(self.seen))
        if self.revocation is not None:
            waits.append(asyncio.ensure_future(self.revocation.revoked.wait()))
        try:
            if waits:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(timeout or 0)
        finally:
            for future in waits:
                future.cancel()
            if self.signal is not None:
                self.signal.forget(waits[0])
        if self.revocation is not None and self.revocation.revoked.is_set():
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, REVOKED_CALLS, "token revoked during the call")
        if self.signal is not None and self.signal.count != self.seen:
            # Versions younger than watch_settle_ms are not reported yet; and a burst of writes shares one
            # look, so that many streams cost no more than polling every WATCH_MIN_LOOK_S.
            await asyncio.sleep(
                max(
                    self.service.store.config.watch_settle_ms / 1000,
                    self.looked + WATCH_MIN_LOOK_S - time.monotonic(),
                    0.0,
                )
            )
            self.seen = self.signal.count
        self.looked = time.monotonic()


# ---- registration ---------------------------------------------------------------------------------

SERVICE = "iotstream.v1.Query"


class Undecodable:
    """A request whose bytes are not its message (e.g. a string field that is not UTF-8, which proto3
    forbids); the handler answers INVALID_ARGUMENT instead of gRPC's generic INTERNAL."""

    def __init__(self, error: DecodeError):
        self.error = error


def _lenient(message_class):
    def deserialize(raw: bytes):
        try:
            return message_class.FromString(raw)
        except DecodeError as exc:
            return Undecodable(exc)

    return deserialize


def _refuse(name: str, request: Undecodable) -> str:
    return f"request is not a valid iotstream.v1.{name} ({request.error})"


def add_to_server(service: QueryService, server) -> None:
    """Register `service` as the generated add_QueryServicer_to_server does, except that undecodable
    requests get INVALID_ARGUMENT with the reason."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["Query"].methods:
        request_class, reply_class = getattr(pb, method.input_type.name), getattr(pb, method.output_type.name)
        behaviour = getattr(service, method.name)
        kw = {
            "request_deserializer": _lenient(request_class),
            "response_serializer": reply_class.SerializeToString,
        }
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _guard_stream(behaviour, method.input_type.name), **kw
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _guard(behaviour, method.input_type.name, service.limits.default_deadline_s), **kw
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def _guard(behaviour, name, default_deadline_s: float):
    async def handler(request, context):
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refuse(name, request))
        remaining = context.time_remaining()
        _DEADLINE.set(time.monotonic() + (default_deadline_s if remaining is None else remaining))
        return await behaviour(request, context)

    return handler


def _guard_stream(behaviour, name):
    async def handler(request, context):
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refuse(name, request))
        async for reply in behaviour(request, context):
            yield reply

    return handler
