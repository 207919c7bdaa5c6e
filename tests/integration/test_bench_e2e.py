"""bench/e2e.py runs tiny and prints its JSON shape (no speed assertions: benchmarks, not tests)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("psutil") is None, reason="benchmark extras missing: run bench/setup"
)


def test_e2e_json_shape(tmp_path):
    out = tmp_path / "e2e.json"
    done = subprocess.run(
        [
            sys.executable,
            "bench/e2e.py",
            "--json",
            "--duration",
            "2",
            "--warmup",
            "1",
            "--batch",
            "100",
            "--streams",
            "2",
            "--window",
            "2",
            "--marker-every",
            "0.3",
            "--queries",
            "3",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    r = json.loads(done.stdout)
    assert json.loads(out.read_text()) == r
    assert r["mode"] == "embedded" and r["load_errors"] == 0, r["load_error_samples"]
    assert r["readings_per_s"] > 0 and r["acked_readings_per_s"] > 0
    assert r["ack_p99_ms"] >= r["ack_p50_ms"] > 0
    assert r["markers"] > 0 and r["markers_visible"] == r["markers"]
    assert r["queryable_p99_ms"] >= r["queryable_p50_ms"] > 0
    assert {"server", "probe", "load_generator"} <= set(r["cpu_s"])
    assert r["server_threads_cpu_s"]
    q = r["queries"]
    assert set(q) == {"GetDevice", "Aggregate_10m_1m", "GetStats", "errors"}
    assert q["GetStats"]["calls"] >= 1 and q["GetStats"]["p99_ms"] >= q["GetStats"]["p50_ms"] > 0
    # The only error allowed: GetDevice before the first readings of its device were stored.
    assert all(e.startswith("GetDevice") and "NOT_FOUND" in e for e in q["errors"]), q["errors"]
