"""Batches to columns (processor.decode): small batches go through Python lists, large ones column by column;
either way the columns equal a reading-by-reading walk of the batches, in order."""

from __future__ import annotations

import numpy as np

from iotstream.processor.decode import SMALL_BATCH, decode_batches
from iotstream.v1 import ingest_pb2 as pb


def random_batch(rng, n: int) -> pb.ReadingBatch:
    names = list(rng.choice(["temp", "hum", "co2", "rpm"], size=int(rng.integers(1, 4)), replace=False))
    return pb.ReadingBatch(
        device_id=f"dev-{int(rng.integers(0, 4))}",
        seq=1,
        base_time_ms=1_800_000_000_000 + int(rng.integers(0, 10**6)),
        time_offset_ms=rng.integers(-5000, 5000, size=n).tolist(),
        metric_names=names,
        metric_index=rng.integers(0, len(names), size=n).tolist(),
        values=rng.normal(size=n).tolist(),
        received_ms=1_800_000_000_000 + int(rng.integers(0, 10**6)),
    )


def test_small_and_large_batches_in_any_order_give_every_reading_in_order():
    rng = np.random.default_rng(3)
    sizes = [1, 0, 3, SMALL_BATCH, SMALL_BATCH + 1, 2, 500, 1, 1, 40, 0, 7]
    batches = [random_batch(rng, n) for n in sizes]
    cols = decode_batches([b.SerializeToString() for b in batches])
    expected = [
        (b.device_id, b.metric_names[i], b.base_time_ms + t, v, b.received_ms)
        for b in batches
        for t, i, v in zip(b.time_offset_ms, b.metric_index, b.values, strict=True)
    ]
    got = list(
        zip(
            [cols.device_ids[d] for d in cols.device.tolist()],
            [cols.metric_names[m] for m in cols.metric.tolist()],
            cols.time_ms.tolist(),
            cols.values.tolist(),
            cols.received_ms.tolist(),
            strict=True,
        )
    )
    assert got == expected
    assert len(set(cols.device_ids)) == len(cols.device_ids) and len(set(cols.metric_names)) == len(
        cols.metric_names
    )
    assert [a.dtype for a in (cols.device, cols.metric, cols.time_ms, cols.values, cols.received_ms)] == [
        np.int32,
        np.int32,
        np.int64,
        np.float64,
        np.int64,
    ]


def test_nothing_to_decode():
    cols = decode_batches([])
    assert len(cols) == 0 and cols.time_ms.dtype == np.int64 and cols.device_ids == []
