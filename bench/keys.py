"""Keys benchmark: memory per (device, metric) key and processor throughput at 10³, 10⁵, 10⁶ keys.

    python bench/keys.py --json                       # 10³, 10⁵, 10⁶ keys; JSON to bench/results/keys.json
    python bench/keys.py --keys 1000 100000 --readings 500000

For each key count, through the embedded path's Processor (decode, key slots, kernels, anomaly rows; the
insert is left out, as it does not depend on the key count):

* warm: every key gets readings once (devices of 10 metrics, one batch per device);
* memory: resident-set growth over the warm-up per key, and the kernel state's share (snapshot bytes per
  slot; slots grow by doubling, so `nslots` can be up to twice the keys);
* throughput: `--readings` readings in batches of one device x 10 metrics x 10 times, devices drawn at
  random over all keys, in calls of 200,000 readings as the embedded loop takes them; readings per CPU
  second of this thread (the machine is shared) and per wall second;
* snapshot: PartitionState.to_bytes size and time;
* eviction: the time to evict half the keys as idle (compaction copies every live key's state), up to
  `--compact-max` keys (it needs about three times the state's memory at its peak).

Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from iotstream.processor import Processor
from iotstream.v1 import ingest_pb2 as pb

METRICS = [f"m{j}" for j in range(10)]
T0 = 1_800_000_000_000
CALL_READINGS = 200_000  # readings per processor call, as a chunk of the processor loop


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def payload(device: int, times: int, t0: int, rng) -> bytes:
    n = times * len(METRICS)
    return pb.ReadingBatch(
        device_id=f"dev-{device:07d}",
        seq=1,
        base_time_ms=t0,
        time_offset_ms=np.repeat(np.arange(times) * 1000, len(METRICS)).tolist(),
        metric_names=METRICS,
        metric_index=list(range(len(METRICS))) * times,
        values=rng.normal(20.0, 2.0, n).tolist(),
    ).SerializeToString()


def calls(payloads: list[bytes], per_payload: int) -> list[list[bytes]]:
    step = max(1, CALL_READINGS // per_payload)
    return [payloads[i : i + step] for i in range(0, len(payloads), step)]


def run(keys: int, readings: int, compact_max: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    devices = max(1, keys // len(METRICS))
    proc = Processor(store=None)
    base = rss_bytes()
    warm_start = time.perf_counter()
    for chunk in calls([payload(d, 1, T0, rng) for d in range(devices)], len(METRICS)):
        proc.prepare(chunk)
    warm_s = time.perf_counter() - warm_start
    state = proc.state(0)
    grown = rss_bytes() - base
    snap_start = time.perf_counter()
    snapshot = state.to_bytes()
    snap_s = time.perf_counter() - snap_start
    snap_bytes = len(snapshot)
    del snapshot

    per_payload = 10 * len(METRICS)
    drawn = rng.integers(0, devices, max(1, readings // per_payload))
    work = calls(
        [payload(int(d), 10, T0 + 60_000 + i * 10_000, rng) for i, d in enumerate(drawn)], per_payload
    )
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    scored = 0
    for chunk in work:
        scored += proc.prepare(chunk).readings.num_rows
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0

    result = {
        "keys": len(state.slots),
        "nslots": state.stats.nslots,
        "readings": scored,
        "readings_per_cpu_s": scored / cpu,
        "readings_per_wall_s": scored / wall,
        "rss_bytes_per_key": grown / len(state.slots),
        "kernel_bytes_per_slot": snap_bytes / state.stats.nslots,
        "snapshot_bytes": snap_bytes,
        "snapshot_s": snap_s,
        "warm_s": warm_s,
    }
    if keys <= compact_max:
        half = np.arange(0, len(state.slots), 2)
        state.seen[half] = 0  # every other key long idle
        start = time.perf_counter()
        evicted = state.evict_idle(time.time_ns() // 1_000_000, at_cap=True)
        result.update(evicted=evicted, evict_s=time.perf_counter() - start)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    ap.add_argument("--readings", type=int, default=1_000_000, help="timed readings per key count")
    ap.add_argument("--compact-max", type=int, default=100_000, help="measure eviction up to this many keys")
    ap.add_argument("--json", action="store_true", help="write bench/results/keys.json and print it")
    args = ap.parse_args(argv)
    from iotstream.ext import IMPLEMENTATION

    runs = []
    for k in args.keys:  # each in a fresh Processor; the earlier one is freed first
        runs.append(run(k, args.readings, args.compact_max))
        r = runs[-1]
        if not args.json:
            print(
                f"{r['keys']:>9} keys: {r['readings_per_cpu_s'] / 1e6:6.2f} M readings/CPU s "
                f"({r['readings_per_wall_s'] / 1e6:.2f} M/wall s), "
                f"{r['rss_bytes_per_key']:7.0f} B/key RSS, "
                f"kernel {r['kernel_bytes_per_slot']:.0f} B/slot x {r['nslots']} slots, snapshot "
                f"{r['snapshot_bytes'] / 1e6:.1f} MB in {r['snapshot_s']:.2f} s"
                + (f", evict {r['evicted']} in {r['evict_s']:.2f} s" if "evicted" in r else ""),
                flush=True,
            )
    out = {
        "benchmark": "keys",
        "implementation": IMPLEMENTATION,
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
        "runs": runs,
    }
    if args.json:
        path = Path(__file__).resolve().parent / "results" / "keys.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(out, indent=2))
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
