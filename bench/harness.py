"""What every benchmark shares: the server under test in its own process, CPU and memory accounting,
percentiles, and the results folder.

The server always runs as a separate `iotstream serve` process (optionally pinned with taskset), so its CPU
seconds and RSS are its own and never mixed with the load generator's.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Benchmarks run from any directory: results go under the current one (a checkout keeps them in
# bench/results).
ROOT = Path.cwd()
RESULTS = Path(os.environ.get("IOTSTREAM_BENCH_RESULTS", ROOT / "bench" / "results"))
TOOLS = Path(os.environ.get("IOTSTREAM_TOOLS", Path.home() / ".cache" / "iotstream" / "bin"))
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name: str) -> str:
    """Path of a Go tool that bench/setup installed (or one on PATH)."""
    path = TOOLS / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found in {TOOLS} or on PATH: run bench/setup first")
    return found


def taskset(cpus: str | None) -> list[str]:
    """`taskset -c CPUS` prefix, or nothing when CPUS is empty or taskset is missing."""
    if not cpus or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", cpus]


def loadgen_cmd(target: str, cpus: str | None = None, **options) -> list[str]:
    """The command that runs bench/loadgen.py against the server at `target` (HOST:PORT), pinned to `cpus`;
    each keyword is one of its options (`drain_timeout=20` is `--drain-timeout 20`; None leaves it out)."""
    cmd = [*taskset(cpus), PYTHON, "-m", "iotstream.bench.loadgen", "--target", f"grpc://{target}"]
    for name, value in options.items():
        if value is not None:
            cmd += [f"--{name.replace('_', '-')}", str(value)]
    return cmd


def load_shape(args) -> dict:
    """loadgen_cmd's options from a benchmark's own --batch, --streams, --window and --warmup."""
    return {"readings": args.batch, "streams": args.streams, "window": args.window, "warmup": args.warmup}


def serve_supports_kafka() -> bool:
    out = subprocess.run(
        [PYTHON, "-m", "iotstream.cli", "serve", "--help"], capture_output=True, text=True, cwd=ROOT
    ).stdout
    return "--kafka" in out


def prepare_kafka(bootstrap: str, namespace: str, timeout: float = 60.0) -> None:
    """Create the namespace's topics and wait until every partition has a leader.

    A server started on topics it creates itself can lose its processor thread: the processor reads the
    state topic's watermarks on assignment, and a partition without a leader yet raises
    NOT_LEADER_FOR_PARTITION, which ends the thread while ingest goes on acking (see bench/profile/README.md).
    Deployments create topics ahead anyway; the benchmarks do the same so that they measure the pipeline.
    """
    from confluent_kafka.admin import AdminClient

    from iotstream.bus.kafka import KafkaConfig, ensure_topics

    cfg = KafkaConfig(bootstrap=bootstrap, namespace=namespace)
    ensure_topics(cfg)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [cfg.topic, cfg.state_topic, cfg.deadletter_topic, cfg.anomalies_topic]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=10).topics
        if all(
            n in topics
            and topics[n].partitions
            and not topics[n].error
            and all(p.leader >= 0 and not p.error for p in topics[n].partitions.values())
            for n in names
        ):
            return
        time.sleep(0.2)
    raise RuntimeError(f"Kafka topics of namespace {namespace} have no leaders after {timeout} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, all threads included."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def children_cpu_seconds() -> float:
    """CPU seconds of this process's children that have been waited for (e.g. ghz runs)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class ServerProcess:
    """`iotstream serve` in a child process on a free loopback port, in a throwaway data folder.

    kafka: bootstrap servers for `serve --kafka` (only once the CLI has that flag).
    cpus: taskset CPU list for the server, e.g. "0".
    module: run `python -m MODULE --port P --data-dir D` instead (the peers in bench/), which must answer
    gRPC health checks, or GET /healthz when `http` is set.
    """

    kafka: str | None = None
    cpus: str | None = None
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    module: str | None = None
    http: bool = False
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.data_dir = tempfile.mkdtemp(prefix="iotstream-bench-")
        self.port = free_port()
        data = os.path.join(self.data_dir, "data")
        if self.module:
            cmd = [
                *taskset(self.cpus),
                PYTHON,
                "-m",
                self.module,
                "--port",
                str(self.port),
                "--data-dir",
                data,
                *self.extra_args,
            ]
        else:
            cmd = [
                *taskset(self.cpus),
                PYTHON,
                "-m",
                "iotstream.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data-dir",
                data,
                *self.extra_args,
            ]
        if self.kafka:
            if not serve_supports_kafka():
                raise SystemExit("`iotstream serve` has no --kafka option yet; run without --kafka")
            # A fresh namespace (topics and consumer group) per run: a reused broker must not hand this
            # server the backlog of an earlier run.
            self.namespace = f"bench{self.port}x{os.getpid()}"
            prepare_kafka(self.kafka, self.namespace)
            cmd += ["--kafka", self.kafka, "--namespace", self.namespace]
        self.log_path = os.path.join(self.data_dir, "serve.log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
        )
        self._wait_serving(timeout)
        return self

    def _wait_serving(self, timeout: float) -> None:
        if self.http:
            return self._wait_http(timeout)
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"iotstream serve exited with {self.proc.returncode}:\n{self.log_tail()}"
                    )
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"iotstream serve not SERVING after {timeout} s:\n{self.log_tail()}")

    def _wait_http(self, timeout: float) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.target}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.module} not ready after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def rss_bytes(self) -> int:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(getattr(self, "data_dir", ""), ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def pct(values, q: float) -> float | None:
    """q-th percentile in the values' unit, rounded to 0.01; None for no values."""
    if len(values) == 0:
        return None
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 2)


def kernels() -> str:
    """Which rolling-statistics implementation `iotstream serve` will load ("cython" or "python")."""
    out = subprocess.run(
        [
            PYTHON,
            "-c",
            "import logging; logging.disable(50); import iotstream.ext as e; print(e.IMPLEMENTATION)",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return out.stdout.strip() or "unknown"


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "kernels": kernels(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def write_result(name: str, result: dict, out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
