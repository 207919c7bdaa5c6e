"""`iotstream query` as a person and as a script see it: tables on a terminal (a real pty), JSON when piped
or with --json, and `query watch` following anomalies with resume (--since), against a real server."""

import asyncio
import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pyarrow as pa
import pytest
from waiting import poll

from iotstream.client.simulate import run_fleet
from iotstream.v1 import query_pb2 as qpb

DEVICES, READINGS = 3, 180


def now_ms():
    return time.time_ns() // 1_000_000


def flagged(device, metric, t_ms, score):
    return pa.table(
        {
            "device_id": [device],
            "metric": [metric],
            "time": pa.array([t_ms], pa.timestamp("ms", tz="UTC")),
            "value": [99.5],
            "kind": ["zscore"],
            "score": [score],
            "zscore": [9.0],
        }
    )


class Tty:
    """A CLI process whose stdout is a pseudo-terminal (isatty() is true), read as it prints."""

    def __init__(self, *args):
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iotstream.cli", *args],
            stdout=slave,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        os.close(slave)
        self.master, self.text = master, ""

    def read_until(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text):
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} on the terminal in {timeout} s; got {self.text!r}"
            if select.select([self.master], [], [], left)[0]:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the process closed the terminal
                    chunk = b""
                assert chunk, f"the terminal closed before {pattern!r}; got {self.text!r}"
                self.text += chunk.decode().replace("\r\n", "\n")
        return self.text

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        code = self.proc.wait(timeout)
        while select.select([self.master], [], [], 0)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.text += chunk.decode().replace("\r\n", "\n")
        os.close(self.master)
        return code, self.text, self.proc.stderr.read()


def tty(*args) -> str:
    code, out, err = Tty(*args).finish()
    assert code == 0, err
    return out


def piped(*args) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "iotstream.cli", *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def fed(server):
    summary, data = asyncio.run(run_fleet(server.target, DEVICES, READINGS, batch=60, anomalies=0.0, seed=2))
    poll(
        lambda: server.query.GetStats(qpb.GetStatsRequest(), timeout=10).readings >= DEVICES * READINGS,
        60,
        "readings in the store",
    )
    return server, data


def test_devices_table_on_a_terminal_json_when_piped(fed):
    server, data = fed
    out = tty("query", "--target", server.target, "devices")
    lines = out.strip().splitlines()
    assert lines[0].split() == ["DEVICE", "STATUS", "LAST", "STORED", "FIRST", "READING", "READINGS"]
    assert [ln.split()[0] for ln in lines[1:]] == sorted(d.device_id for d in data)
    status_col = lines[0].index("STATUS")
    assert all(ln[status_col:].startswith("online") for ln in lines[1:])  # aligned under its header
    assert all(ln.endswith(f"{READINGS:,}") for ln in lines[1:])
    reply = json.loads(piped("query", "--target", server.target, "devices"))
    assert [d["device_id"] for d in reply["devices"]] == sorted(d.device_id for d in data)
    assert json.loads(piped("query", "--target", server.target, "--json", "devices")) == reply


def test_aggregate_shows_only_the_functions_asked_for(fed):
    server, data = fed
    d = data[0]
    out = tty(
        "query",
        "--target",
        server.target,
        "aggregate",
        "--device",
        d.device_id,
        "--metric",
        "temperature",
        "--func",
        "max",
        "--func",
        "count",
        "--interval-s",
        "60",
    )
    header = next(ln for ln in out.splitlines() if ln.startswith("BUCKET"))
    assert header.split() == ["BUCKET", "(UTC)", "MAX", "COUNT"]
    title = next(ln for ln in out.splitlines() if ln.startswith(f"{d.device_id} / temperature"))
    assert re.search("max [▁▂▃▄▅▆▇█]+$", title)
    counts = [int(ln.split()[-1].replace(",", "")) for ln in out.splitlines() if re.match(r"\d{4}-", ln)]
    assert sum(counts) == READINGS // 3  # every temperature reading in one bucket
    assert "read from:" in out
    as_json = json.loads(
        piped(
            "query",
            "--target",
            server.target,
            "aggregate",
            "--device",
            d.device_id,
            "--metric",
            "temperature",
            "--func",
            "count",
        )
    )
    assert sum(int(c) for c in as_json["series"][0]["count"]) == READINGS // 3


def test_stats_and_device_on_a_terminal(fed):
    server, data = fed
    out = tty("query", "--target", server.target, "stats")
    assert re.search(rf"^readings\s+{DEVICES * READINGS:,}$", out, re.M)
    assert re.search(rf"^devices online\s+{DEVICES}$", out, re.M)
    out = tty("query", "--target", server.target, "device", data[0].device_id)
    assert out.startswith(f"{data[0].device_id}: online")
    assert {ln.split()[0] for ln in out.splitlines()[3:]} == {"temperature", "humidity", "pressure"}


def test_errors_go_to_stderr_with_the_status(fed):
    server, _ = fed
    proc = Tty("query", "--target", server.target, "device", "no-such-device")
    code, out, err = proc.finish()
    assert code == 1 and out == "" and "NOT_FOUND" in err


def test_watch_follows_on_a_terminal_and_resumes_with_since(server):
    store = server.server.store
    watch = Tty("query", "--target", server.target, "watch", "--device", "w-dev", "--count", "1")
    watch.read_until("watching for anomaly episodes")
    store.insert_anomalies(flagged("w-dev", "temp", now_ms() - 100, 0.75))
    code, out, err = watch.finish()
    assert code == 0
    [line] = [ln for ln in out.splitlines() if "w-dev" in ln]
    assert re.search(r"opened\s+w-dev\s+temp\s+zscore\s+high\s+peak 99\.5 score 0\.75\s+1 readings", line)
    cursor = re.search(r"resume with: iotstream query watch --since (\S+)", err).group(1)
    # While nobody watches: the episode gets a second reading. Resuming reports that change once, as an
    # update.
    store.insert_anomalies(flagged("w-dev", "temp", now_ms(), 0.5))
    lines = piped("query", "--target", server.target, "watch", "--since", cursor, "--count", "1").splitlines()
    events = [json.loads(ln) for ln in lines]
    assert [e["type"] for e in events] == ["WATCHING", "UPDATED"]
    assert events[1]["anomaly"]["readings"] == 2


def test_history_shows_a_sparkline_per_metric(fed):
    server, data = fed
    d = data[1]
    out = tty("query", "--target", server.target, "history", d.device_id, "--metric", "humidity")
    summary = out.splitlines()[0]
    values = d.values[d.metric == 1]
    assert summary.startswith(
        f"humidity: {len(values):,} readings, min {values.min():.4g}, max {values.max():.4g}"
    )
    assert re.search("[▁▂▃▄▅▆▇█]{40}$", summary)  # 60 readings drawn in 40 slices
    rows = [ln for ln in out.splitlines() if ln.startswith("humidity ")]
    assert [float(ln.split()[-1]) for ln in rows] == pytest.approx(list(values), rel=1e-3)
