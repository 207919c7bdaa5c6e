"""Query replies as text for a person at a terminal: aligned tables, sparklines and bars.

`iotstream query` uses this when stdout is a terminal and `--json` is not given; otherwise it prints JSON.
Every function takes the reply message and returns the text, so it is tested without a server.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from iotstream.v1 import query_pb2 as pb

SPARKS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 40  # a sparkline longer than this is the min/max of equal slices, so it fits a line
BAR_WIDTH = 10
SEVERITY = {pb.SEVERITY_LOW: "low", pb.SEVERITY_MEDIUM: "medium", pb.SEVERITY_HIGH: "high"}
EVENT = {
    pb.AnomalyEvent.OPENED: "opened",
    pb.AnomalyEvent.UPDATED: "updated",
    pb.AnomalyEvent.CLOSED: "closed",
}


def table(header: list[str], rows: list[list], right: set[int] | None = None) -> str:
    """Columns padded to their widest cell; columns in `right` (default: those holding numbers) align
    right."""
    cells = [[str(c) for c in header]] + [[fmt(c) for c in row] for row in rows]
    if right is None:
        right = {i for i in range(len(header)) if rows and all(isinstance(r[i], (int, float)) for r in rows)}
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in cells
    ]
    return "\n".join(line.rstrip() for line in lines)


def fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1e5 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def sparkline(values, width: int = SPARK_WIDTH) -> str:
    """One block character per value, scaled to the values' range; long series are cut into `width`
    slices, each drawn by its mean."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [
            sum(s) / len(s) for s in (values[int(i * step) : int((i + 1) * step)] for i in range(width)) if s
        ]
    lo, hi = min(values), max(values)
    span = hi - lo
    return "".join(
        SPARKS[0 if span == 0 else min(len(SPARKS) - 1, int((v - lo) / span * len(SPARKS)))] for v in values
    )


def bar(value: float, top: float, width: int = BAR_WIDTH) -> str:
    filled = 0 if top <= 0 else round(width * min(value, top) / top)
    return "█" * filled + "·" * (width - filled)


def when(ms: int, now_ms: int | None = None) -> str:
    """A Unix ms time as UTC, with its age: `2026-12-01 16:40:02 (3m ago)`."""
    if ms <= 0:
        return "-"
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    stamp = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp} ({age(now_ms - ms)})"


def age(ms: int) -> str:
    if ms < 0:
        return "in " + age(-ms).removesuffix(" ago")
    s = ms // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


def status(value: int) -> str:
    return pb.DeviceStatus.Name(value).lower()


# ---- one function per subcommand ------------------------------------------------------------------------


def devices(reply: pb.ListDevicesResponse, now_ms: int | None = None) -> str:
    rows = [
        [
            d.device_id,
            status(d.status),
            when(d.last_stored_ms, now_ms),
            when(d.first_seen_ms, now_ms),
            d.readings,
        ]
        for d in reply.devices
    ]
    return table(["DEVICE", "STATUS", "LAST STORED", "FIRST READING", "READINGS"], rows) + more(reply)


def device(reply: pb.Device, now_ms: int | None = None) -> str:
    head = (
        f"{reply.device_id}: {status(reply.status)}, last stored {when(reply.last_stored_ms, now_ms)}, "
        f"{reply.readings:,} readings, {reply.anomalies:,} anomaly episodes ({reply.open_anomalies:,} open)"
    )
    rows = [[m.metric, m.value, when(m.time_ms, now_ms)] for m in reply.latest]
    return head + "\n\n" + table(["METRIC", "LATEST", "AT"], rows)


def history(reply: pb.GetHistoryResponse, now_ms: int | None = None) -> str:
    out = []
    for s in reply.series:
        values = list(s.values)
        out.append(
            f"{s.metric}: {len(values):,} readings, min {fmt(min(values))}, max {fmt(max(values))}, "
            f"last {fmt(values[-1])}  {sparkline(values)}"
        )
    rows = [
        [s.metric, when(t, now_ms), v] for s in reply.series for t, v in zip(s.time_ms, s.values, strict=True)
    ]
    return "\n".join(out) + "\n\n" + table(["METRIC", "TIME", "VALUE"], rows) + more(reply)


AGG_FIELDS = ("avg", "min", "max", "sum", "count", "stddev", "p50", "p95", "p99")


def aggregate(reply: pb.AggregateResponse, now_ms: int | None = None) -> str:
    """One table per series with only the functions asked for; a sparkline of the first one."""
    out = []
    for s in reply.series:
        funcs = [f for f in AGG_FIELDS if len(getattr(s, f))]
        who = s.device_id or "all devices"
        line = f"{who} / {s.metric}"
        if funcs:
            line += f"  {funcs[0]} {sparkline(list(getattr(s, funcs[0])))}"
        rows = [
            [when(t, now_ms).split(" (")[0], *(getattr(s, f)[i] for f in funcs)]
            for i, t in enumerate(s.bucket_start_ms)
        ]
        out.append(line + "\n" + table(["BUCKET (UTC)", *(f.upper() for f in funcs)], rows))
    sources = f"\n\nread from: {', '.join(reply.sources)}" if reply.sources else ""
    return ("\n\n".join(out) or "no buckets in the range") + sources


def anomalies(reply: pb.ListAnomaliesResponse, now_ms: int | None = None) -> str:
    rows = [
        [
            when(a.opened_ms, now_ms),
            a.device_id,
            a.metric,
            a.kind,
            SEVERITY.get(a.severity, "-"),
            "open" if a.state == pb.ANOMALY_OPEN else "closed",
            a.readings,
            a.value,
            f"{bar(a.score, 1.0)} {a.score:.2f}",
            a.acknowledged_by or "-",
            a.id,
        ]
        for a in reply.anomalies
    ]
    return table(
        [
            "OPENED",
            "DEVICE",
            "METRIC",
            "KIND",
            "SEVERITY",
            "STATE",
            "READINGS",
            "PEAK",
            "SCORE",
            "ACKED BY",
            "ID",
        ],
        rows,
    ) + more(reply)


def acknowledged(reply: pb.Anomaly, now_ms: int | None = None) -> str:
    return (
        f"acknowledged {reply.kind} on {reply.device_id}/{reply.metric} (opened "
        f"{when(reply.opened_ms, now_ms)}) by {reply.acknowledged_by} at "
        f"{when(reply.acknowledged_ms, now_ms)}"
    )


def stats(reply: pb.Stats, now_ms: int | None = None) -> str:
    rows: list[list] = [
        ["readings", reply.readings],
        ["readings/s (last minute)", reply.readings_per_s],
        ["devices", reply.devices],
        ["devices online", reply.devices_online],
        ["anomaly episodes", reply.anomalies],
        ["open episodes", reply.open_anomalies],
        ["queue readings", reply.queue_readings],
        ["queue lag ms", reply.queue_lag_ms],
        ["consumer lag", reply.consumer_lag],
        ["last stored", when(reply.last_stored_ms, now_ms)],
    ]
    rows += [[f"rejected {reason}", n] for reason, n in sorted(reply.rejected.items())]
    out = table(["", ""], rows, right={1})
    if reply.table_bytes:
        top = max(reply.table_bytes.values())
        sizes = [
            [t, reply.table_rows.get(t, 0), reply.table_bytes[t], bar(reply.table_bytes[t], top)]
            for t in sorted(reply.table_bytes)
        ]
        out += "\n\n" + table(["TABLE", "ROWS", "BYTES", ""], sizes)
    return out


def event(e: pb.AnomalyEvent, now_ms: int | None = None) -> str:
    """One line per WatchAnomalies event."""
    if e.type == pb.AnomalyEvent.WATCHING:
        return "watching for anomaly episodes (Ctrl-C stops)"
    a = e.anomaly
    return (
        f"{when(a.updated_ms, now_ms)}  {EVENT.get(e.type, '?'):<7}  {a.device_id}  {a.metric}  {a.kind}  "
        f"{SEVERITY.get(a.severity, '-')}  peak {fmt(a.value)} score {a.score:.2f}  {a.readings} readings"
    )


def more(reply) -> str:
    token = getattr(reply, "next_page_token", "")
    return f"\n\nmore: --page-token {token}" if token else ""


RENDER: dict[str, Callable[[Any], str]] = {
    "devices": devices,
    "device": device,
    "history": history,
    "aggregate": aggregate,
    "anomalies": anomalies,
    "ack": acknowledged,
    "stats": stats,
}
