"""Writes the ghz scenario configs in this folder (bench/ghz/*.json); rerun after changing a scenario.

    python -m iotstream.bench.ghz.make_configs

Each config works as it stands against `iotstream serve` on 127.0.0.1:50051 through server reflection:

    ghz --config bench/ghz/ingest-stream-1000.json
    ghz --config bench/ghz/ingest-stream-1000.json --proto proto/iotstream/v1/ingest.proto -i proto

`bench/ghz/run.py` starts a server, runs them all and summarises. Readings carry the time of the call
(`{{.TimestampUnixMilli}}`, evaluated per message: every stream scenario sets `stream-dynamic-messages`),
since
the server rejects readings older than 30 days or more than 5 minutes ahead. A message's readings cycle over
three metrics, one time point per second, the newest at offset 0. `tags.readings_per_message` tells the
runner how many readings a message carries.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
METRICS = ["temperature", "humidity", "pressure"]
LEVELS = np.array([21.0, 45.0, 1013.0])
DURATION = "10s"


def batch(n: int, seq: str = "{{.TimestampUnixNano}}") -> dict:
    """A ReadingBatch in proto3 JSON with n readings; device, seq and time come from ghz templates.

    Streams use `stream-dynamic-messages` with the message time in nanoseconds as seq: ghz has no per-message
    counter, and the processor stores a batch with the same (device, seq, readings) once, so a stream of
    identical messages would measure deduplication instead of storage."""
    i = np.arange(n)
    point = i // 3
    offsets = (point - point[-1]) * 1000
    rng = np.random.default_rng(n)
    values = np.round(LEVELS[i % 3] + rng.normal(0, 0.5, n), 2)
    return {
        "device_id": "ghz-{{.WorkerID}}",
        "seq": seq,
        "base_time_ms": "{{.TimestampUnixMilli}}",
        "time_offset_ms": [int(o) for o in offsets],
        "metric_names": METRICS[: min(n, 3)],
        "metric_index": [int(m) for m in i % 3],
        "values": [float(v) for v in values],
    }


def scenario(name: str, call: str, data, readings: int = 0, **options) -> dict:
    return {
        "name": name,
        "call": call,
        "host": "127.0.0.1:50051",
        "insecure": True,
        "data": data,
        "duration": DURATION,
        "duration-stop": "wait",
        "timeout": "20s",
        "connections": 2,
        "tags": {"readings_per_message": str(readings)},
        **options,
    }


SCENARIOS = [
    # A device that sends every reading as it takes it: 1 reading per message, fresh time per message.
    scenario(
        "ingest-stream-1",
        "iotstream.v1.Ingest/Stream",
        batch(1),
        1,
        concurrency=8,
        **{"stream-call-count": 500, "stream-dynamic-messages": True},
    ),
    # A device that batches a few seconds (or minutes) of readings per message.
    scenario(
        "ingest-stream-100",
        "iotstream.v1.Ingest/Stream",
        batch(100),
        100,
        concurrency=8,
        **{"stream-call-count": 100, "stream-dynamic-messages": True},
    ),
    scenario(
        "ingest-stream-1000",
        "iotstream.v1.Ingest/Stream",
        batch(1000),
        1000,
        concurrency=8,
        **{"stream-call-count": 20, "stream-dynamic-messages": True},
    ),
    # A client that cannot stream: one unary call per batch, acked when durable.
    scenario(
        "ingest-send-100", "iotstream.v1.Ingest/Send", batch(100, "{{.RequestNumber}}"), 100, concurrency=16
    ),
    # Dashboards: latest values of one of the devices seeded before the run (bench-00000..bench-00009).
    scenario(
        "query-getdevice",
        "iotstream.v1.Query/GetDevice",
        {"device_id": "bench-0000{{mod .RequestNumber 10}}"},
        concurrency=8,
    ),
    # Charts: one device, one metric, the last hour in 1-minute buckets.
    scenario(
        "query-aggregate",
        "iotstream.v1.Query/Aggregate",
        {
            "device_ids": ["bench-0000{{mod .RequestNumber 10}}"],
            "metrics": ["temperature"],
            "start_ms": "{{sub .TimestampUnixMilli 3600000}}",
            "interval_ms": "60000",
            "funcs": ["AVG", "MAX", "P99"],
        },
        concurrency=4,
    ),
]


def main() -> None:
    for s in SCENARIOS:
        path = HERE / f"{s['name']}.json"
        path.write_text(
            json.dumps(s, indent=1 if s["tags"]["readings_per_message"] in ("", "0", "1") else None) + "\n"
        )
        print(f"wrote {path.relative_to(HERE.parent.parent)}")


if __name__ == "__main__":
    main()
