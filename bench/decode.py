"""Wire layout benchmark: a ReadingBatch of packed columns vs the same readings as `repeated Reading`
messages, each decoded into numpy arrays (time_ms, metric index, values). Prints one JSON object.

    python -m iotstream.bench.decode [--readings 1000] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from iotstream.client.simulate import METRICS, batches, device_signal
from iotstream.processor import decode_batches


def row_message_class():
    """`message RowBatch { repeated Reading readings = 1; }`, `Reading {int64 time_ms; string metric;
    double value}`, built at run time so the alternative layout needs no generated code."""
    f = descriptor_pb2.FileDescriptorProto(name="bench_rows.proto", package="bench", syntax="proto3")
    r = f.message_type.add(name="Reading")
    field = descriptor_pb2.FieldDescriptorProto
    r.field.add(name="time_ms", number=1, type=field.TYPE_INT64, label=field.LABEL_OPTIONAL)
    r.field.add(name="metric", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    r.field.add(name="value", number=3, type=field.TYPE_DOUBLE, label=field.LABEL_OPTIONAL)
    b = f.message_type.add(name="RowBatch")
    b.field.add(
        name="readings",
        number=1,
        type=field.TYPE_MESSAGE,
        label=field.LABEL_REPEATED,
        type_name=".bench.Reading",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.RowBatch"))


def decode_rows(cls, payload: bytes):
    msg = cls.FromString(payload)
    names = {m: i for i, m in enumerate(METRICS)}
    rows = msg.readings
    return (
        np.fromiter((r.time_ms for r in rows), np.int64, len(rows)),
        np.fromiter((names[r.metric] for r in rows), np.int32, len(rows)),
        np.fromiter((r.value for r in rows), np.float64, len(rows)),
    )


def best_rate(fn, n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=1000, help="readings per batch (default 1000)")
    ap.add_argument("--batches", type=int, default=200, help="batches decoded per timing (default 200)")
    ap.add_argument("--repeat", type=int, default=5, help="timings, best taken (default 5)")
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    ap.add_argument("--out", default="bench/results/decode.json", help="where to write the JSON")
    args = ap.parse_args()

    data = device_signal("dev-1", args.readings, 1_800_000_000_000, 1000, 0.0, np.random.default_rng(1))
    columns = batches(data, args.readings)[0].SerializeToString()
    cls = row_message_class()
    rows = cls()
    for t, m, v in zip(data.time_ms, data.metric, data.values, strict=True):
        rows.readings.add(time_ms=int(t), metric=METRICS[m], value=float(v))
    rows = rows.SerializeToString()
    n = args.readings * args.batches
    result = {
        "readings_per_batch": args.readings,
        "columns_bytes": len(columns),
        "rows_bytes": len(rows),
        "columns_readings_per_s": round(
            best_rate(lambda: decode_batches([columns] * args.batches), n, args.repeat)
        ),
        "rows_readings_per_s": round(
            best_rate(lambda: [decode_rows(cls, rows) for _ in range(args.batches)], n, args.repeat)
        ),
    }
    result["speedup"] = round(result["columns_readings_per_s"] / result["rows_readings_per_s"], 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    if not args.json:
        print(
            f"packed columns: {result['columns_bytes']} B, {result['columns_readings_per_s']:,} readings/s; "
            f"repeated Reading: {result['rows_bytes']} B, {result['rows_readings_per_s']:,} readings/s "
            f"({result['speedup']}x)"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
