"""Reproducer: one chDB session used from several threads at once mixes up query parameters.

    python -m iotstream.bench.profile.chdb_concurrency [--threads 4] [--queries 300]

Each thread runs `SELECT {v:String}` with its own value and checks the answer, first with no lock (as
clickhouse/backend.py's ChdbBackend runs reads today: only inserts take its `_write_lock`), then with one
lock around every statement. Prints the wrong answers and errors of each; exit 1 if the unlocked run had any.
Seen here with chDB 4.x: a few wrong answers (another thread's parameter) and UNKNOWN_QUERY_PARAMETER
errors per thousand without the lock, none with it; under the e2e load a GetHistory concurrent with an
`INSERT ... SELECT * FROM Python(table)` also hung both threads in `Connection.query` for good.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading


def run(session, threads: int, queries: int, lock: threading.Lock | None) -> dict:
    wrong = errors = 0
    count = threading.Lock()

    def worker(tag: int) -> None:
        nonlocal wrong, errors
        for i in range(queries):
            value = f"{tag}-{i}"
            try:
                if lock:
                    with lock:
                        got = session.query("SELECT {v:String}", "CSV", params={"v": value})
                else:
                    got = session.query("SELECT {v:String}", "CSV", params={"v": value})
                bad = str(got).strip().strip('"') != value
                with count:
                    wrong += bad
            except Exception:
                with count:
                    errors += 1

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return {"queries": threads * queries, "wrong_answers": wrong, "errors": errors}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--queries", type=int, default=300, help="per thread")
    args = ap.parse_args()
    from chdb import session

    s = session.Session(tempfile.mkdtemp(prefix="chdb-race-"))
    result = {
        "unlocked": run(s, args.threads, args.queries, None),
        "locked": run(s, args.threads, args.queries, threading.Lock()),
    }
    print(json.dumps(result))
    return 1 if result["unlocked"]["wrong_answers"] or result["unlocked"]["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
