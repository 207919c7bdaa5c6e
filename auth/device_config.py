"""Desired configuration per device, pushed down the device's own ingest stream.

An operator sets a device's configuration (Admin/ConfigureDevice or `iotstream devices configure`); it
gets the next version and is stored with the registry (clickhouse.device_config). `ConfigHub` keeps every
configured device's newest desired configuration and last reported version in memory, and the open
streams of each device. A configuration is *due* while its version is above the one the device reported
applied (ReadingBatch.config_applied); a due configuration is sent when the device's stream opens and the
moment it changes, and is not sent again once reported.

A configuration set through this node's Admin service reaches its streams at once; one set elsewhere (the
CLI on the store, another node) within `refresh_s`. Memory: one small entry per configured device.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable

import grpc

from iotstream.clickhouse.device_config import DeviceConfigs
from iotstream.common.ids import DEVICE_ID, METRIC_NAME
from iotstream.v1 import admin_pb2
from iotstream.v1 import ingest_pb2 as pb

log = logging.getLogger(__name__)

REFRESH_S = 2.0  # a configuration set on another node or by the CLI reaches open streams within this
OVERLAP_MS = 5_000  # re-read rows this far behind the last refresh (clock skew between writers)
MAX_SETTINGS = 64  # keys per configuration
MAX_TEXT = 256  # characters per metric name, settings key or value


class BadConfig(ValueError):
    """A configuration the Admin service refuses (INVALID_ARGUMENT)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def to_message(row: dict) -> pb.DeviceConfig:
    return pb.DeviceConfig(
        version=row["version"],
        sample_interval_ms=row["sample_interval_ms"],
        metrics=row["metrics"],
        settings=row["settings"],
        set_ms=row["set_ms"],
    )


def check(device_id: str, config: pb.DeviceConfig) -> None:
    if not DEVICE_ID.fullmatch(device_id):
        raise BadConfig(f"device_id: must match {DEVICE_ID.pattern}")
    bad = [m[:80] for m in config.metrics if not METRIC_NAME.fullmatch(m)]
    if bad:
        raise BadConfig(f"metrics: {bad[0]!r} must match {METRIC_NAME.pattern}")
    if len(config.settings) > MAX_SETTINGS:
        raise BadConfig(f"settings: {len(config.settings)} keys, at most {MAX_SETTINGS}")
    if any(len(k) > MAX_TEXT or len(v) > MAX_TEXT or not k for k, v in config.settings.items()):
        raise BadConfig(f"settings: keys must be non-empty, keys and values at most {MAX_TEXT} characters")


class ConfigHub:
    def __init__(self, configs: DeviceConfigs, refresh_s: float = REFRESH_S):
        self.configs = configs
        self.refresh_s = refresh_s
        self.desired: dict[str, pb.DeviceConfig] = {}
        self.reported: dict[str, int] = {}
        self.streams: dict[str, set[Callable[[pb.DeviceConfig], None]]] = defaultdict(set)
        self._since = 0

    def due(self, device: str) -> pb.DeviceConfig | None:
        config = self.desired.get(device)
        return config if config is not None and config.version > self.reported.get(device, 0) else None

    def subscribe(self, device: str, send: Callable[[pb.DeviceConfig], None]) -> Callable[[], None]:
        """Call `send` with the device's configuration now if it is due, and whenever a new one is set;
        returns the function that ends this."""
        self.streams[device].add(send)
        if (config := self.due(device)) is not None:
            send(config)

        def unsubscribe() -> None:
            sends = self.streams.get(device)
            if sends is not None:
                sends.discard(send)
                if not sends:
                    del self.streams[device]

        return unsubscribe

    def _offer(self, device: str, config: pb.DeviceConfig) -> None:
        current = self.desired.get(device)
        if current is not None and current.version >= config.version:
            return
        self.desired[device] = config
        if self.due(device) is not None:
            for send in list(self.streams.get(device, ())):
                send(config)

    async def set(self, device: str, config: pb.DeviceConfig) -> pb.DeviceConfig:
        """Store `config` as the device's new desired configuration and push it; returns it with its
        version."""
        check(device, config)
        row = await asyncio.to_thread(
            self.configs.set,
            device,
            config.sample_interval_ms,
            list(config.metrics),
            dict(config.settings),
            now_ms(),
        )
        stored = to_message(row)
        self._offer(device, stored)
        return stored

    async def report(self, device: str, version: int) -> None:
        """The device says it applied `version`: no more deliveries up to it (and the newest again if it is
        behind); recorded for GetDevice."""
        if self.reported.get(device) == version:
            return  # a device repeating its report costs nothing
        self.reported[device] = version
        if (config := self.due(device)) is not None:  # it fell behind (reset, reflashed): send it again
            for send in list(self.streams.get(device, ())):
                send(config)
        try:
            await asyncio.to_thread(self.configs.report, device, version, now_ms())
        except Exception as exc:  # the report is known here; the store learns it at the next report
            log.warning("config report of %s (version %d) not stored: %s", device, version, exc)

    def load(self) -> tuple[list[dict], list[dict], int]:
        """Rows changed since the last refresh (runs in a worker thread)."""
        started = now_ms()
        since = max(0, self._since - OVERLAP_MS) if self._since else 0
        return self.configs.desired_since(since), self.configs.reported_since(since), started

    async def refresh(self) -> None:
        desired, reports, started = await asyncio.to_thread(self.load)
        for r in reports:
            if r["version"] > self.reported.get(r["device_id"], 0):
                self.reported[r["device_id"]] = r["version"]
        for r in desired:
            self._offer(r["device_id"], to_message(r))
        self._since = started

    async def run(self) -> None:
        """Refresh every `refresh_s`, forever; a store that is away is retried at the next turn."""
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("device configurations not refreshed: %s", exc)
            await asyncio.sleep(self.refresh_s)

    async def state(self, device: str) -> admin_pb2.DeviceConfigState:
        desired, reported = await asyncio.gather(
            asyncio.to_thread(self.configs.desired, device), asyncio.to_thread(self.configs.reported, device)
        )
        return state_message(desired, reported)


def state_message(desired: dict | None, reported: dict | None) -> admin_pb2.DeviceConfigState:
    out = admin_pb2.DeviceConfigState()
    if desired is not None:
        out.desired.CopyFrom(to_message(desired))
    if reported is not None:
        out.reported_version, out.reported_ms = reported["version"], reported["time_ms"]
    return out


async def configure(
    hub: ConfigHub, request: admin_pb2.ConfigureDeviceRequest, context
) -> admin_pb2.DeviceConfigState:
    """Admin/ConfigureDevice."""
    try:
        await hub.set(request.device_id, request.config)
    except BadConfig as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    return await hub.state(request.device_id)


async def get_state(
    hub: ConfigHub, request: admin_pb2.GetDeviceConfigRequest, context
) -> admin_pb2.DeviceConfigState:
    """Admin/GetDeviceConfig."""
    if not request.device_id:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "device_id: required")
    return await hub.state(request.device_id)
