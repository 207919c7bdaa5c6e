"""Per-thread CPU and run-queue wait of a running process: who got the cores, and who waited for one.

    python -m iotstream.bench.profile.sched --pid PID [--seconds 10] [--json]

Reads /proc/PID/task/*/schedstat (nanoseconds on a CPU, nanoseconds runnable but waiting for one, time
slices) at the start and end, and prints the difference per thread, heaviest first; the process's main
thread (the asyncio event loop of `iotstream serve`) is marked. A thread that waits on the run queue about
as long as it runs is starved of CPU: its latency is set by what else runs on the cores, not by its own work
or the GIL (which `py-spy record --gil` measures). Used for issue 13 (bench/profile/README.md §9).
"""

from __future__ import annotations

import argparse
import json
import os
import time


def sample(pid: int) -> dict[int, tuple[str, int, int, int]]:
    """tid -> (thread name, ns on CPU, ns waiting on the run queue, time slices)."""
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                run, wait, slices = (int(x) for x in f.read().split())
        except OSError:  # the thread ended meanwhile
            continue
        out[int(task)] = (name, run, wait, slices)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--top", type=int, default=12, help="threads to print (default 12)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    before = sample(args.pid)
    time.sleep(args.seconds)  # the measured interval
    after = sample(args.pid)
    rows = [
        {
            "tid": tid,
            "name": name,
            "main": tid == args.pid,
            "cpu_s": round((run - before[tid][1]) / 1e9, 3),
            "runqueue_wait_s": round((wait - before[tid][2]) / 1e9, 3),
            "slices": slices - before[tid][3],
        }
        for tid, (name, run, wait, slices) in after.items()
        if tid in before
    ]
    rows.sort(key=lambda r: -r["cpu_s"])
    if args.json:
        print(json.dumps({"pid": args.pid, "seconds": args.seconds, "threads": rows}))
        return 0
    print(f"pid {args.pid}, {args.seconds:g} s")
    for r in rows[: args.top]:
        print(
            f"{r['tid']:>8} {r['name']:<16} {'main' if r['main'] else '':<4} cpu {r['cpu_s']:6.2f} s   "
            f"run-queue wait {r['runqueue_wait_s']:6.2f} s   slices {r['slices']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
