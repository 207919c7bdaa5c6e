"""Smoke test of bench/webhooks.py: a small run completes and reports every episode delivered."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_webhook_bench_runs(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "webhooks.py"),
            "--episodes",
            "30",
            "--data-dir",
            str(tmp_path / "data"),
            "--results",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout.strip().splitlines()[-1])
    assert printed == json.loads((tmp_path / "webhooks.json").read_text())
    assert printed["episodes"] == 30 and printed["events_per_s"] > 0
    assert 0 < printed["latency_ms"]["p50"] <= printed["latency_ms"]["max"]
