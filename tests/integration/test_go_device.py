"""The Go device example (examples/go-device), built from the proto and run against a real server: it
streams batches, handles acks in order, reconnects, and applies the configuration pushed to it."""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tcp_proxy import TcpProxy
from waiting import poll

from iotstream.v1 import admin_pb2, admin_pb2_grpc
from iotstream.v1 import ingest_pb2 as pb
from iotstream.v1 import query_pb2 as qpb

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "go-device"
pytestmark = pytest.mark.skipif(shutil.which("go") is None, reason="the Go toolchain (`go`) is not installed")


def run(cmd, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "GOTOOLCHAIN": "local"}
    done = subprocess.run(cmd, cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def go_device(tmp_path_factory) -> str:
    """The example built: stubs generated, vetted, its unit tests passed."""
    run(["./generate.sh"])
    run(["go", "vet", "./..."])
    run(["go", "test", "./..."])
    binary = str(tmp_path_factory.mktemp("go") / "go-device")
    run(["go", "build", "-o", binary, "."])
    return binary


def stored_values(srv, device: str) -> collections.Counter:
    page = srv.query.GetHistory(qpb.GetHistoryRequest(device_id=device, page_size=100_000), timeout=30)
    assert not page.next_page_token
    return collections.Counter(v for s in page.series for v in s.values)


def test_go_device_streams_and_applies_its_configuration(server, go_device):
    admin = admin_pb2_grpc.AdminStub(server.channel)
    admin.ConfigureDevice(
        admin_pb2.ConfigureDeviceRequest(
            device_id="go-1", config=pb.DeviceConfig(sample_interval_ms=2000, settings={"fw": "go"})
        ),
        timeout=10,
    )
    done = run(
        [
            go_device,
            "-target",
            server.target,
            "-device",
            "go-1",
            "-readings",
            "1000",
            "-batch",
            "100",
            "-wait-config",
        ]
    )
    summary = json.loads(done.stdout)
    assert summary["acked"] == 1000 and summary["rejected"] == 0
    assert summary["config_version"] == 1 and summary["settings"] == {"fw": "go"}
    assert stored_values(server, "go-1") == collections.Counter(float(i) for i in range(1000))
    poll(
        lambda: (
            server.query.GetDevice(qpb.GetDeviceRequest(device_id="go-1"), timeout=10).config_reported_version
            == 1
        ),
        what="the Go device's report",
    )


def test_go_device_reconnects_and_sends_everything_once(server, go_device):
    proxy = TcpProxy(server.port)
    proxy.refusing = True
    try:
        device = subprocess.Popen(
            [go_device, "-target", proxy.target, "-device", "go-2", "-readings", "500"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        poll(lambda: proxy.refused >= 2, what="two refused connection attempts")
        proxy.refusing = False
        out, err = device.communicate(timeout=120)
        assert device.returncode == 0, err[-3000:]
    finally:
        proxy.close()
    summary = json.loads(out)
    assert summary["acked"] == 500 and summary["reconnects"] >= 1
    assert stored_values(server, "go-2") == collections.Counter(float(i) for i in range(500))
