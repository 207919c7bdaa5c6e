"""bench/ceiling.py runs tiny and writes its JSON and PNG (no speed assertions: benchmarks, not tests)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("matplotlib", "psutil")),
    reason="benchmark extras missing: run bench/setup",
)


def test_ceiling_json_and_plot(tmp_path):
    out = tmp_path / "ceiling.json"
    done = subprocess.run(
        [
            sys.executable,
            "bench/ceiling.py",
            "--json",
            "--start",
            "2000",
            "--step",
            "2000",
            "--max",
            "4000",
            "--step-seconds",
            "1",
            "--warmup",
            "0.3",
            "--batch",
            "100",
            "--streams",
            "2",
            "--slo-ms",
            "60000",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout)
    assert json.loads(out.read_text()) == r
    assert 1 <= len(r["steps"]) <= 2
    for s in r["steps"]:
        assert {"offered_readings_per_s", "achieved_readings_per_s", "ack_p99_ms", "passed"} <= set(s)
    assert r["stopped_because"]
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
