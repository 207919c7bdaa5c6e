"""bench.compare runs tiny and prints its JSON shape (no speed assertions: benchmarks, not tests)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn", "aiohttp", "psutil")),
    reason="benchmark extras missing: run bench/setup",
)


def test_compare_json_shape(tmp_path):
    out = tmp_path / "compare.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "iotstream.bench.compare",
            "--json",
            "--duration",
            "0.7",
            "--warmup",
            "0.2",
            "--sizes",
            "1",
            "10",
            "--streams",
            "2",
            "--window",
            "2",
            "--server-cpus",
            "",
            "--loadgen-cpus",
            "",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert json.loads(out.read_text()) == result
    assert set(result["ratio_vs_raw_grpc"]) == set(result["ratio_vs_fastapi"]) == {"1", "10"}
    assert all(isinstance(v, float) for v in result["ratio_vs_raw_grpc"].values())
    assert set(result["results"]) == {"raw_grpc", "ingest", "ingest_front", "fastapi"}
    for server in result["results"].values():
        for size, r in server.items():
            assert r["readings_per_message"] == int(size)
            assert r["messages"] > 0 and r["errors"] == 0, r["error_samples"]
            assert r["readings"] == r["messages"] * int(size)
            assert r["ack_p99_ms"] >= r["ack_p50_ms"] > 0
            assert r["server_cpu_s"] >= 0
