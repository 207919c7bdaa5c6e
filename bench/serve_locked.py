"""`iotstream serve` with every chDB statement serialized: a benchmark-side workaround, not a product change.

    python -m bench.serve_locked serve --port 50051 --data-dir DIR     (same arguments as `iotstream`)

Found while building bench/e2e.py: clickhouse/backend.py's ChdbBackend runs reads concurrently with the
writer (only inserts take `_write_lock`), and one chDB session does not survive that. Two parameterised
queries at once can each run with the other's parameters (a wrong answer, or UNKNOWN_QUERY_PARAMETER;
6 wrong of 1,200 in a 4-thread check), and a GetHistory during an `INSERT ... FROM Python(table)` hung
both threads in `chdb Connection.query` for good, which stops every ack. The fix belongs in
ChdbBackend._run (one lock around `self._session.query`); until it lands the benchmarks start the server
through this module so they can measure at all, and say so in their JSON (`server_workaround`). Once the
backend serializes its own statements this extra lock costs nothing measurable (uncontended).
"""

from __future__ import annotations

import functools
import sys
import threading

NOTE = ("chDB statements serialized by bench/serve_locked.py (ChdbBackend runs queries concurrently with "
        "inserts: wrong parameters or a hang; fix belongs in clickhouse/backend.py)")


def patch() -> None:
    from iotstream.clickhouse import backend

    if getattr(backend.ChdbBackend._run, "_bench_locked", False):
        return
    lock = threading.RLock()
    original = backend.ChdbBackend._run

    @functools.wraps(original)
    def _run(self, *args, **kwargs):
        with lock:
            return original(self, *args, **kwargs)

    _run._bench_locked = True
    backend.ChdbBackend._run = _run


def main() -> int:
    patch()
    from iotstream.cli.main import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
