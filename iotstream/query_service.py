"""The gRPC Query service: argument checks and paging here, every SQL statement in clickhouse.Store."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import grpc

from iotstream.v1 import query_pb2 as pb
from iotstream.v1 import query_pb2_grpc as pb_grpc

DEFAULT_SILENCE_MS = 5 * 60_000


class InvalidArgument(ValueError):
    pass


def encode_token(key: list) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def decode_token(token: str, size: int) -> list | None:
    if not token:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(token.encode()))
    except ValueError:
        key = None
    if not isinstance(key, list) or len(key) != size:
        raise InvalidArgument("page_token: not a token returned by this RPC")
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


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class QueryService(pb_grpc.QueryServicer):
    def __init__(self, store, stats_source=None, silence_ms: int = DEFAULT_SILENCE_MS):
        self.store = store
        self.stats_source = stats_source  # gives live ingest figures (rate, queue depth, rejections)
        self.silence_ms = silence_ms

    async def _run(self, context, fn, *args):
        """Run a blocking store call off the event loop, within the call's deadline."""
        remaining = context.time_remaining()
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args), remaining)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed during the query")

    async def _call(self, context, build):
        try:
            return await build()
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    # ---- RPCs ---------------------------------------------------------------------------------

    async def ListDevices(self, request: pb.ListDevicesRequest, context) -> pb.ListDevicesResponse:
        async def build():
            after = decode_token(request.page_token, 1)
            limit = page_size(request.page_size, 100, 10_000)
            since = now_ms() - self.silence_ms
            rows = await self._run(context, self.store.list_devices, request.id_prefix, int(request.status),
                                   since, after[0] if after else "", limit + 1)
            resp = pb.ListDevicesResponse(devices=[
                pb.DeviceSummary(status=self._status(r["last_stored_ms"]), **r) for r in rows[:limit]])
            if len(rows) > limit:
                resp.next_page_token = encode_token([rows[limit - 1]["device_id"]])
            return resp
        return await self._call(context, build)

    async def GetDevice(self, request: pb.GetDeviceRequest, context) -> pb.Device:
        async def build():
            if not request.device_id:
                raise InvalidArgument("device_id: required")
            reg = await self._run(context, self.store.device, request.device_id)
            if reg is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"device_id: no readings for {request.device_id!r}")
            rows = await self._run(context, self.store.device_metrics, request.device_id)
            anomalies = await self._run(context, self.store.device_anomalies, request.device_id)
            return pb.Device(
                device_id=request.device_id, status=self._status(reg["last_stored_ms"]),
                latest=[pb.MetricValue(metric=r["metric"], time_ms=r["time_ms"], value=r["value"]) for r in rows],
                anomalies=anomalies, **reg)
        return await self._call(context, build)

    async def GetHistory(self, request: pb.GetHistoryRequest, context) -> pb.GetHistoryResponse:
        async def build():
            if not request.device_id:
                raise InvalidArgument("device_id: required")
            start, end = time_range(request.start_ms, request.end_ms)
            limit = page_size(request.page_size, 10_000, 100_000)
            cursor = decode_token(request.page_token, 4)  # metric, time_ms, value, rows of that key sent
            after, skip = (tuple(cursor[:3]), cursor[3]) if cursor else (None, 0)
            table = await self._run(context, self.store.history, request.device_id, list(request.metrics),
                                    start, end, after, limit + skip + 1)
            metric, times, values = (table.column(c).to_pylist() for c in ("metric", "time_ms", "value"))
            rows = list(zip(metric, times, values))[skip:]
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
            funcs = [pb.AggFunc.Name(f) for f in request.funcs if f != pb.AGG_FUNC_UNSPECIFIED] or \
                ["AVG", "MIN", "MAX", "COUNT"]
            funcs = list(dict.fromkeys(funcs))
            table, sources = await self._run(context, self.store.aggregate, list(request.device_ids),
                                             list(request.metrics), start, end, request.interval_ms, funcs,
                                             request.merge_devices)
            cols = {name: table.column(name).to_pylist() for name in table.column_names}
            resp = pb.AggregateResponse(sources=sources)
            for i in range(table.num_rows):
                key = (cols["dev"][i], cols["metric"][i])
                if not resp.series or (resp.series[-1].device_id, resp.series[-1].metric) != key:
                    resp.series.add(device_id=key[0], metric=key[1])
                series = resp.series[-1]
                series.bucket_start_ms.append(cols["bucket_ms"][i])
                for f in funcs:
                    getattr(series, f.lower()).append(cols[f.lower()][i])
            return resp
        return await self._call(context, build)

    async def ListAnomalies(self, request: pb.ListAnomaliesRequest, context) -> pb.ListAnomaliesResponse:
        async def build():
            start, end = time_range(request.start_ms, request.end_ms)
            after = decode_token(request.page_token, 4)
            limit = page_size(request.page_size, 100, 10_000)
            rows = await self._run(context, self.store.anomalies, request.device_id, request.metric,
                                   request.kind, start, end, tuple(after) if after else None, limit + 1)
            resp = pb.ListAnomaliesResponse(anomalies=[pb.Anomaly(**r) for r in rows[:limit]])
            if len(rows) > limit:
                last = rows[limit - 1]
                resp.next_page_token = encode_token([last["time_ms"], last["device_id"], last["metric"],
                                                     last["kind"]])
            return resp
        return await self._call(context, build)

    async def GetStats(self, request: pb.GetStatsRequest, context) -> pb.Stats:
        counts = await self._run(context, self.store.counts, now_ms() - self.silence_ms)
        stats = pb.Stats(readings=counts["readings"], anomalies=counts["anomalies"], devices=counts["devices"],
                         devices_online=counts["devices_online"])
        if self.stats_source is not None:
            live = self.stats_source()
            stats.readings_per_s = live["readings_per_s"]
            stats.queue_readings = live["queue_readings"]
            stats.rejected.update(live["rejected"])
        return stats

    def _status(self, last_stored_ms: int) -> int:
        return pb.ONLINE if last_stored_ms >= now_ms() - self.silence_ms else pb.OFFLINE
