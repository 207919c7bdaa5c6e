"""bench/fleet.py runs tiny and prints its JSON shape (no speed assertions: benchmarks, not tests)."""

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


def test_fleet_json_shape(tmp_path):
    out = tmp_path / "fleet.json"
    done = subprocess.run(
        [
            sys.executable,
            "bench/fleet.py",
            "--json",
            "--streams",
            "30",
            "--per-connection",
            "10",
            "--interval",
            "0.5",
            "--duration",
            "1.5",
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
    assert r["streams_connected"] == 30 and r["connections"] == 3 and r["errors"] == 0
    assert r["connect_s"] > 0 and isinstance(r["rss_bytes_per_stream"], int)
    assert r["steady_batches"] > 0 and r["ack_p99_ms"] >= r["ack_p50_ms"] > 0
    assert r["server_cpu_s"] >= 0
    # the grpc.aio floor is measured in the same run, and the ratio is the one of the two figures reported
    assert r["floor_errors"] == 0 and isinstance(r["floor_rss_bytes_per_stream"], int)
    assert r["rss_per_stream_vs_floor"] == round(
        r["rss_bytes_per_stream"] / max(r["floor_rss_bytes_per_stream"], 1), 2
    )
    # the devices are iotstream.client.DeviceClients: their own cost is reported, and nothing is left unacked
    assert r["client_cpu_s"] > 0 and isinstance(r["client_rss_bytes_per_device"], int)
    assert r["unacked_at_end"] == 0 and r["acked_batches"] >= 30 + r["steady_batches"]
