"""bench/ghz/run.py runs two scenarios tiny and summarises them (no speed assertions: benchmarks, not
tests)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("IOTSTREAM_TOOLS", Path.home() / ".cache" / "iotstream" / "bin"))
pytestmark = pytest.mark.skipif(
    not all((TOOLS / t).exists() or shutil.which(t) for t in ("ghz", "grpcurl"))
    or importlib.util.find_spec("psutil") is None,
    reason="ghz/grpcurl or benchmark extras missing: run bench/setup",
)


def test_configs_are_ghz_configs():
    for path in (ROOT / "bench" / "ghz").glob("*.json"):
        config = json.loads(path.read_text())
        assert config["call"].startswith("iotstream.v1.") and config["insecure"] is True
        assert "proto" not in config  # reflection by default; the runner adds --proto when asked
        if config["call"].endswith("/Stream"):
            assert config["stream-dynamic-messages"] and config["stream-call-count"] > 1


def test_ghz_runner_summary(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "bench/ghz/run.py",
            "--json",
            "--duration",
            "1s",
            "--only",
            "ingest-stream-100",
            "query-getdevice",
            "--out-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    summary = json.loads(done.stdout)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["descriptors"] in ("server reflection", "proto files")
    by_name = {s["scenario"]: s for s in summary["scenarios"]}
    assert set(by_name) == {"ingest-stream-100", "query-getdevice"}
    stream = by_name["ingest-stream-100"]
    assert stream["ok"] > 0 and stream["messages_per_call"] == 100 and stream["readings_per_message"] == 100
    assert stream["readings_per_s"] == pytest.approx(stream["messages_per_s"] * 100, rel=1e-3)
    assert by_name["query-getdevice"]["ok"] > 0 and by_name["query-getdevice"]["readings_per_s"] is None
    for name in by_name:
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert report["count"] == by_name[name]["calls"]
