"""The local log's appends while a big processor snapshot is saved: does ingest's ack wait for it?

    python -m iotstream.bench.log_snapshot [--mb 300] [--appends 800] [--json]

One device's worth of appends, one every 5 ms, each awaited until durable (the Ack's wait), on a LocalLog in
a throwaway folder; after the first 100 a snapshot of --mb random bytes (10^5 keys are ~300 MB) is saved from
another thread, as the processor does. Reported: the snapshot's save time and the appends' latency p50, p99
and max (JSON also to bench/results/log_snapshot.json). Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time

from iotstream.bench.harness import machine, pct, write_result
from iotstream.bus.local import LocalLog


async def appends(log: LocalLog, count: int, snapshot: bytes) -> dict:
    latency_ms: list[float] = []
    saver = threading.Thread(target=log.save_snapshot, args=(0, 1, snapshot))
    saved_s = started = 0.0
    for i in range(count):
        if i == 100:
            started = time.perf_counter()
            saver.start()
        t = time.perf_counter()
        await (await log.put(b"x" * 200, 1))
        latency_ms.append((time.perf_counter() - t) * 1000)
        if started and not saved_s and not saver.is_alive():
            saved_s = time.perf_counter() - started
        await asyncio.sleep(0.005)
    saver.join()
    return {
        "snapshot_save_s": round(saved_s or time.perf_counter() - started, 3),
        "append_p50_ms": pct(latency_ms, 50),
        "append_p99_ms": pct(latency_ms, 99),
        "append_max_ms": round(max(latency_ms), 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=300, help="snapshot size in MiB (default 300)")
    ap.add_argument("--appends", type=int, default=800, help="appends, one every 5 ms (default 800)")
    ap.add_argument("--out", help="JSON path (default bench/results/log_snapshot.json)")
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    args = ap.parse_args(argv)
    if args.appends <= 100:
        ap.error("--appends must be over 100: the snapshot starts after the first 100")
    with tempfile.TemporaryDirectory(prefix="iotstream-bench-") as folder:
        log = LocalLog(os.path.join(folder, "log.sqlite"))
        try:
            result = asyncio.run(appends(log, args.appends, os.urandom(args.mb * 1024 * 1024)))
        finally:
            log.close()
            log.close_reader()
    result = {"benchmark": "log_snapshot", "snapshot_mb": args.mb, **result, "machine": machine()}
    path = write_result("log_snapshot", result, args.out)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.mb} MB snapshot saved in {result['snapshot_save_s']} s; appends p50/p99/max "
            f"{result['append_p50_ms']}/{result['append_p99_ms']}/{result['append_max_ms']} ms ({path})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
