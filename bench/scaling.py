"""The small-scale check of docs/scaling.md: processors as separate OS processes in one consumer group over a
12-partition topic, partitions moving under load.

    python -m iotstream.bench.scaling [--kafka BOOTSTRAP] [--processors 3] [--partitions 12] [--devices 60]
        [--readings 200000] [--rate 150000] [--phase 15] [--json] [--out FILE]

Starts (and at the end, on error and on Ctrl-C alike, ends) a local Kafka broker unless --kafka names one,
one `iotstream ingest` node, `iotstream simulate` as the load (--devices streams, --rate readings/s in all),
and `iotstream process` members of one group, each with its own chDB data folder. The schedule, one event
every --phase seconds: p1 runs from the start; p2 ... pN join; p2 is killed with SIGKILL once every member
stores (so each rebalance is the event's own) and while p2 itself is storing; p2 rejoins on the same data
folder once a survivor has been assigned a partition after the kill.

Figures, from samples every --sample-every seconds (the group's committed offsets per partition, each
member's `iotstream_stored_readings_total` on its /metrics and its CPU seconds):
- per phase (between events): readings/s stored per member and in all, each member's cores, and readings
  per CPU-second (the per-core figure docs/scaling.md's model uses); the backlog at the phase's end tells
  whether the members were saturated (> 0) or just kept up with the load;
- per event, the partitions that moved (from the members' "partition N assigned" log lines), how soon
  after the event they were assigned, and each one's rebalance pause: from its last commit before the
  assignment to its first after it;
- per phase, the longest time any partition with a backlog went without a commit, whatever the cause.

Exactness, at the end: every acked reading stored exactly once. A ClickHouse server shared by the members
would deduplicate a replayed chunk by its token; here each member has its own chDB folder (chDB fixes one
data folder per process), so a chunk the killed member stored after its last snapshot is stored again,
with the same token, by the member that replays it, in another folder. The check therefore reads every
folder and asserts: the union of all folders holds each acked reading once and nothing else (a reading is
(device, metric, time), unique in simulate's data); no folder holds a reading twice; and the only copies
across folders are in the killed member's folder (its replayed tail), which is reported as `replayed_copies`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from iotstream.bench.harness import PYTHON, free_port, machine, prepare_kafka, write_result

STORED = re.compile(rb"^iotstream_stored_readings_total (\S+)$", re.M)
INSERTS = re.compile(rb'^iotstream_insert_seconds_count\{table="readings"\} (\S+)$', re.M)


@dataclass
class Child:
    """One `iotstream` process of the check, its log in the run's folder."""

    name: str
    args: list[str]
    folder: Path
    metrics_port: int = 0
    proc: subprocess.Popen | None = None
    stdout: int | None = None

    def start(self) -> Child:
        log = open(self.folder / f"{self.name}.log", "ab")  # noqa: SIM115 (the child holds it)
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "iotstream.cli", *self.args],
            stdout=self.stdout if self.stdout is not None else log,
            stderr=log,
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def scrape(self) -> tuple[float, float] | None:
        """(readings stored, inserts into the readings table) from the member's /metrics, or None while it
        does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                text = r.read()
        except OSError:
            return None
        stored, inserts = STORED.search(text), INSERTS.search(text)
        return float(stored.group(1)) if stored else 0.0, float(inserts.group(1)) if inserts else 0.0

    def stored(self) -> float | None:
        scraped = self.scrape()
        return scraped[0] if scraped else None

    def cpu_seconds(self) -> float | None:
        """None without psutil (bench/setup installs it): the check runs, the cores go unreported."""
        try:
            import psutil
        except ImportError:
            return None
        try:
            t = psutil.Process(self.proc.pid).cpu_times()
        except (psutil.Error, AttributeError):
            return None
        return t.user + t.system

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(30)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (a member snapshots and leaves the group), SIGKILL after `timeout`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, lines: int = 15) -> str:
        text = (self.folder / f"{self.name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Sample:
    t: float
    committed: dict[int, int]  # partition -> committed offset (-1: none yet)
    high: dict[int, int]  # partition -> high watermark
    backlog: int  # messages not committed by the group
    stored: dict[
        str, tuple[float, float]
    ]  # member -> (readings stored, inserts), those whose /metrics answered
    cpu: dict[str, float]  # member -> CPU seconds


@dataclass
class Sampler:
    """Samples the group's progress on a thread of its own (its own Kafka client)."""

    cfg: object
    members: dict[str, Child]
    every: float
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from confluent_kafka import TopicPartition

        cfg = self.cfg
        consumer = cfg.consumer(group_id=cfg.group_id, enable_auto_commit=False)
        parts = [TopicPartition(cfg.topic, p) for p in range(cfg.partitions)]
        try:
            while not self.stop.is_set():
                t = time.monotonic()
                committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
                high = {p: consumer.get_watermark_offsets(parts[p], timeout=10)[1] for p in committed}
                backlog = sum(high[p] - max(committed[p], 0) for p in committed)
                live = [(n, c) for n, c in list(self.members.items()) if c.alive]
                stored = {n: s for n, c in live if (s := c.scrape()) is not None}
                cpu = {n: s for n, c in live if (s := c.cpu_seconds()) is not None}
                self.samples.append(Sample(t, committed, high, backlog, stored, cpu))
                self.stop.wait(max(0.0, self.every - (time.monotonic() - t)))
        finally:
            consumer.close()

    def backlog(self) -> int | None:
        return self.samples[-1].backlog if self.samples else None


def phase_figures(samples: list[Sample], t0: float, t1: float) -> dict:
    """Readings/s, inserts, cores and readings per CPU-second of each member over [t0, t1], from its own
    first and last answer inside it (a member that just started answers late)."""
    inside = [s for s in samples if t0 <= s.t <= t1]
    members = {}
    for name in sorted({n for s in inside for n in s.stored}):
        mine = [s for s in inside if name in s.stored and name in s.cpu]
        if len(mine) < 2:
            continue
        first, last = mine[0], mine[-1]
        dt = last.t - first.t
        readings = last.stored[name][0] - first.stored[name][0]
        inserts = last.stored[name][1] - first.stored[name][1]
        cpu = last.cpu[name] - first.cpu[name]
        members[name] = {
            "seconds": round(dt, 1),
            "readings_per_s": round(readings / dt),
            "inserts_per_s": round(inserts / dt, 1),
            "readings_per_insert": round(readings / inserts) if inserts else None,
            "cores": round(cpu / dt, 2),
            "readings_per_cpu_s": round(readings / cpu) if cpu > 0 else None,
        }
    return {
        "readings_per_s": sum(m["readings_per_s"] for m in members.values()),
        "members": members,
        "backlog_at_end": inside[-1].backlog if inside else None,
    }


ASSIGNED = re.compile(r"^(\S+ \S+) INFO iotstream\.processor\.loop: partition (\d+) assigned", re.M)


def assignments(log_text: str, wall_to_mono: float) -> list[tuple[float, int]]:
    """(monotonic time, partition) of every 'partition N assigned' line of a member's log."""
    found = []
    for stamp, partition in ASSIGNED.findall(log_text):
        wall = time.mktime(time.strptime(stamp.split(",")[0], "%Y-%m-%d %H:%M:%S")) + int(stamp[-3:]) / 1000
        found.append((wall - wall_to_mono, int(partition)))
    return found


def handovers(samples: list[Sample], events, assigned: list[tuple[float, int]]) -> list[dict]:
    """Per event: how long after it the moved partitions were assigned, and each moved partition's gap
    between its last commit before the assignment and its first after it (its rebalance pause; only
    partitions that had a backlog count)."""
    out = []
    for (t0, what), (t1, _) in zip(events[1:], events[2:], strict=False):
        gaps, delays = [], []
        for t, p in assigned:
            if not t0 <= t < t1:
                continue
            delays.append(t - t0)
            before = [s for s in samples if s.t <= t]
            after = [s for s in samples if s.t > t]
            if not before or not after or before[-1].high[p] <= max(before[-1].committed[p], 0):
                continue  # nothing waited on it: no pause to see
            value, last_advance = before[-1].committed[p], before[-1].t
            for s in reversed(before):  # back to the first sample that showed the current offset
                if s.committed[p] != value:
                    break
                last_advance = s.t
            moved = next((s.t for s in after if s.committed[p] != value), None)
            if moved is not None:
                gaps.append(moved - last_advance)
        gaps.sort()
        out.append(
            {
                "event": what,
                "partitions_moved": len(delays),
                "with_backlog": len(gaps),
                "assigned_after_s": round(max(delays), 1) if delays else None,
                "pause_median_s": round(gaps[len(gaps) // 2], 2) if gaps else None,
                "pause_max_s": round(gaps[-1], 2) if gaps else None,
            }
        )
    return out


def longest_stall(samples: list[Sample], t0: float, t1: float) -> float:
    """The longest time in [t0, t1] any partition with a backlog went without its committed offset
    advancing, whatever the cause (a rebalance, or a busy member reading other partitions first)."""
    worst = 0.0
    inside = [s for s in samples if t0 <= s.t <= t1]
    for p in inside[0].committed if inside else {}:
        since, last = inside[0].t, inside[0].committed[p]
        for s in inside[1:]:
            if s.committed[p] != last:
                worst = max(worst, s.t - since)
                since, last = s.t, s.committed[p]
        if inside[-1].high[p] > max(last, 0):
            worst = max(worst, inside[-1].t - since)
    return round(worst, 2)


def dump_store(data_dir: str, out: str) -> dict:
    """Every reading of one member's chDB folder as (device_id, metric, t) to a Parquet file; run in a
    process of its own (chDB opens one folder per process)."""
    import pyarrow.parquet as pq

    from iotstream.clickhouse.backend import open_backend

    backend = open_backend(data_dir)
    table = backend.query(
        "SELECT device_id, toString(metric) AS metric, toUnixTimestamp64Milli(time) AS t "
        "FROM iotstream.readings"
    )
    pq.write_table(table, out)
    backend.close()
    return {"rows": table.num_rows}


def read_stores(folders: dict[str, Path], work: Path) -> dict:
    """Per member: rows and distinct readings; across members: distinct readings of all and of all but
    the killed one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = {}
    for name, folder in folders.items():
        out = work / f"{name}.parquet"
        subprocess.run(
            [PYTHON, "-m", "iotstream.bench.scaling", "--dump", str(folder), str(out)],
            check=True,
            capture_output=True,
        )
        tables[name] = pq.read_table(out)

    def distinct(names) -> int:
        parts = [tables[n] for n in names]
        if not parts:
            return 0
        return pa.concat_tables(parts).group_by(["device_id", "metric", "t"]).aggregate([]).num_rows

    return {
        "rows": {n: t.num_rows for n, t in tables.items()},
        "distinct": {n: distinct([n]) for n in tables},
        "distinct_all": distinct(tables),
        "distinct_without": {n: distinct([m for m in tables if m != n]) for n in tables},
    }


def exactness(acked: int, stores: dict, killed: str) -> dict:
    rows, distinct = stores["rows"], stores["distinct"]
    others = [n for n in rows if n != killed]
    copies = sum(rows.values()) - stores["distinct_all"]
    return {
        "acked": acked,
        "stored_distinct": stores["distinct_all"],
        "rows_per_store": rows,
        "doubled_within_a_store": sum(rows[n] - distinct[n] for n in rows),
        "copies_between_survivors": sum(rows[n] for n in others) - stores["distinct_without"][killed],
        "replayed_copies": copies,
        "exact": stores["distinct_all"] == acked
        and all(rows[n] == distinct[n] for n in rows)
        and sum(rows[n] for n in others) == stores["distinct_without"][killed],
    }


def run(args, say=lambda *a: None, started: list | None = None) -> dict:
    """The whole check; every process it starts (each also appended to `started`) is ended before it
    returns or raises."""
    from iotstream.bench import kafka_local
    from iotstream.bus.kafka import KafkaConfig, ensure_topics

    work = Path(tempfile.mkdtemp(prefix="iotstream-scaling-"))
    broker = None
    children: list[Child] = []  # those still to end

    def track(child: Child) -> None:
        children.append(child)
        if started is not None:
            started.append(child)

    members: dict[str, Child] = {}
    sampler = None
    failed = False
    try:
        bootstrap = args.kafka
        if not bootstrap:
            say("starting a local Kafka broker ...")
            broker = kafka_local.start()
            bootstrap = broker.bootstrap
        namespace = "scale" + uuid.uuid4().hex[:8]
        cfg = KafkaConfig(bootstrap=bootstrap, namespace=namespace, partitions=args.partitions)
        ensure_topics(cfg)
        prepare_kafka(bootstrap, namespace)
        kafka = ["--kafka", bootstrap, "--namespace", namespace, "--partitions", str(args.partitions)]

        ingest_port = free_port()
        ingest = Child(
            "ingest",
            [
                "ingest",
                *kafka,
                "--port",
                str(ingest_port),
                "--insecure-no-auth",
                "--data-dir",
                str(work / "i"),
            ],
            work,
        ).start()
        track(ingest)
        wait_serving(ingest, ingest_port)

        def member(name: str) -> Child:
            port = free_port()
            child = Child(
                name,
                ["process", *kafka, "--data-dir", str(work / name), "--metrics-port", str(port)],
                work,
                metrics_port=port,
            )
            members[name] = child.start()
            track(child)
            return child

        sampler = Sampler(cfg, members, args.sample_every)
        sample_thread = threading.Thread(target=sampler.run, name="scaling-sampler", daemon=True)
        sample_thread.start()
        events: list[tuple[float, str]] = []
        member("p1")
        events.append((time.monotonic(), "p1 starts"))
        load = Child(
            "simulate",
            [
                "simulate",
                "--target",
                f"127.0.0.1:{ingest_port}",
                "--devices",
                str(args.devices),
                "--readings",
                str(args.readings),
                "--batch",
                str(args.batch),
                "--rate",
                str(args.rate),
                "--seed",
                "1",
                "--json",
            ],
            work,
            stdout=subprocess.PIPE,
        ).start()
        track(load)
        wait_storing(members["p1"], 0, args.event_timeout)
        say(f"load: {args.devices} devices x {args.readings} readings at {args.rate:,.0f} readings/s")
        schedule = [f"p{i} joins" for i in range(2, args.processors + 1)] + ["p2 killed", "p2 rejoins"]
        start = time.monotonic()
        for i, event in enumerate(schedule, start=1):
            name = event.split()[0]
            wait_until(start + i * args.phase, lambda: not load.alive)
            if event.endswith("killed"):
                if not load.alive:
                    raise RuntimeError("the load ended before the kill: give it more --readings")
                for other in members.values():  # every join is complete: the kill's rebalance is its own
                    wait_storing(other, 0, args.event_timeout)
                # Only while it is storing (it owns partitions and has a chunk under way): mid-stream.
                wait_storing(members[name], members[name].stored() or 0, args.event_timeout)
                members[name].kill9()
                children.remove(members[name])
            else:
                if event.endswith(" joins"):
                    wait_storing(members[f"p{int(name[1:]) - 1}"], 0, args.event_timeout)
                else:  # the survivors have taken the killed member's partitions over (a session timeout)
                    wait_assigned(work, [n for n in members if n != name], events[-1][0], args.event_timeout)
                member(name)
            events.append((time.monotonic(), event))
            say(f"{event} (backlog {sampler.backlog()} messages)")
        wait_assigned(work, ["p2"], events[-1][0], args.event_timeout)  # the rejoined member has its share
        out, _ = load.proc.communicate(timeout=args.readings * args.devices / args.rate + 600)
        if load.proc.returncode != 0:
            raise RuntimeError(f"simulate exited with {load.proc.returncode}:\n{load.log_tail()}")
        summary = json.loads(out)
        say(f"load done: {summary['acked']:,} readings acked; waiting for the group to catch up")
        deadline = time.monotonic() + args.drain_timeout
        while not (
            sampler.samples
            and sampler.samples[-1].backlog == 0
            and sampler.samples[-1].t > time.monotonic() - 2
        ):
            if time.monotonic() > deadline:
                last = sampler.samples[-1] if sampler.samples else None
                raise RuntimeError(
                    f"backlog {sampler.backlog()} messages after {args.drain_timeout} s; "
                    f"committed {last.committed if last else None}, high {last.high if last else None}"
                )
            dead = [n for n, c in members.items() if c in children and not c.alive]
            if dead:
                raise RuntimeError(f"{dead} exited:\n" + members[dead[0]].log_tail())
            time.sleep(0.2)  # polling a condition
        events.append((time.monotonic(), "caught up"))
        sampler.stop.set()
        sample_thread.join(30)
        for name, child in members.items():
            if child in children and child.stop() != 0:
                raise RuntimeError(f"{name} exited with {child.proc.returncode}:\n{child.log_tail()}")
        stores = read_stores({n: work / n for n in members}, work)
        kafka_bytes = topic_bytes(broker.data_dir, cfg.topic) if broker is not None else None
        offset = time.time() - time.monotonic()
        assigned = [a for n in members for a in assignments((work / f"{n}.log").read_text(), offset)]
        return report(args, summary, events, sampler.samples, stores, kafka_bytes, assigned)
    except BaseException:
        failed = True
        raise
    finally:
        if sampler is not None:
            sampler.stop.set()
        for child in reversed(children):
            child.stop(timeout=30)
        if broker is not None:
            broker.stop()
        keep_logs(work, failed)


def keep_logs(work: Path, failed: bool) -> None:
    """Remove the run's folder; after a failure keep its logs (the data folders go either way)."""
    if not failed:
        shutil.rmtree(work, ignore_errors=True)
        return
    for path in work.iterdir():
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    print(f"scaling: logs kept in {work}", file=sys.stderr)


def topic_bytes(data_dir: Path, topic: str) -> int:
    """Bytes of the topic's log segments on the broker's disk (lz4 batches as the producer sent them)."""
    return sum(f.stat().st_size for f in data_dir.glob(f"{topic}-*/*.log"))


def report(args, summary: dict, events, samples, stores, kafka_bytes, assigned) -> dict:
    phases = []
    for (t0, what), (t1, _) in zip(events, events[1:], strict=False):
        phases.append(
            {
                "after": what,
                **phase_figures(samples, t0 + min(args.settle, (t1 - t0) / 2), t1),
                "longest_partition_stall_s": longest_stall(samples, t0, t1),
            }
        )
    return {
        "benchmark": "scaling",
        "processors": args.processors,
        "partitions": args.partitions,
        "load": {
            k: summary[k] for k in ("devices", "sent", "acked", "rejected", "batch_size", "readings_per_s")
        }
        | {"offered_readings_per_s": args.rate},
        "phases": phases,
        "rebalances": handovers(samples, events, assigned),
        "kafka_bytes_per_reading": round(kafka_bytes / summary["acked"], 2) if kafka_bytes else None,
        "exactness": exactness(summary["acked"], stores, "p2"),
        "machine": machine(),
    }


def wait_serving(child: Child, port: int, timeout: float = 60.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if not child.alive:
                raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
            with contextlib.suppress(grpc.RpcError):
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            time.sleep(0.2)  # polling a condition
    raise RuntimeError(f"{child.name} not SERVING after {timeout} s:\n{child.log_tail()}")


def wait_storing(child: Child, above: float, timeout: float) -> None:
    """Until the member has stored more than `above` readings (it owns partitions and works)."""
    deadline = time.monotonic() + timeout
    while (child.stored() or 0) <= above:
        if not child.alive or time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} stored nothing new within {timeout} s:\n{child.log_tail()}")
        time.sleep(0.1)  # polling a condition


def wait_assigned(work: Path, names: list[str], since: float, timeout: float) -> None:
    """Until one of the members' logs says it was assigned a partition after `since` (monotonic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        offset = time.time() - time.monotonic()
        for name in names:
            if any(t > since for t, _ in assignments((work / f"{name}.log").read_text(), offset)):
                return
        time.sleep(0.2)  # polling a condition
    raise RuntimeError(f"no partition was assigned to {names} within {timeout} s")


def wait_until(when: float, done) -> None:
    """Until the clock reaches `when` (the schedule), or `done()` (the load ended early)."""
    while time.monotonic() < when and not done():
        time.sleep(0.1)


def print_figures(result: dict) -> None:
    load = result["load"]
    print(
        f"load: {load['acked']:,} readings acked at {load['readings_per_s']:,.0f} readings/s "
        f"(offered {load['offered_readings_per_s']:,.0f})"
    )
    for phase in result["phases"]:
        members = ", ".join(
            f"{n} {m['readings_per_s']:,}/s {m['cores']} cores ({m['readings_per_cpu_s'] or 0:,}/cpu-s, "
            f"{m['inserts_per_s']} inserts/s)"
            for n, m in phase.get("members", {}).items()
        )
        print(
            f"after {phase['after']:<11} {phase.get('readings_per_s', 0):>9,} readings/s stored "
            f"[{members}] backlog {phase.get('backlog_at_end')}, longest partition stall "
            f"{phase['longest_partition_stall_s']} s"
        )
    for r in result["rebalances"]:
        print(
            f"{r['event']:<11} {r['partitions_moved']} partitions moved, assigned within "
            f"{r['assigned_after_s']} s; pause per moved partition median {r['pause_median_s']} s, "
            f"max {r['pause_max_s']} s"
        )
    print(f"Kafka: {result['kafka_bytes_per_reading']} bytes per reading on the broker's disk")
    ex = result["exactness"]
    print(
        f"exactness: acked {ex['acked']:,}, stored distinct {ex['stored_distinct']:,}, doubled within a "
        f"store {ex['doubled_within_a_store']}, copies between survivors {ex['copies_between_survivors']}, "
        f"replayed copies in the killed member's folder {ex['replayed_copies']:,}: "
        f"{'EXACT' if ex['exact'] else 'NOT EXACT'}"
    )


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kafka", metavar="BOOTSTRAP", help="a running broker (default: start a local one)")
    ap.add_argument("--processors", type=int, default=3, help="members at most, >= 2 (default 3)")
    ap.add_argument("--partitions", type=int, default=12, help="readings partitions (default 12)")
    ap.add_argument("--devices", type=int, default=60, help="simulated devices (default 60)")
    ap.add_argument("--readings", type=int, default=200_000, help="readings per device (default 200000)")
    ap.add_argument("--batch", type=int, default=500, help="readings per batch (default 500)")
    ap.add_argument("--rate", type=float, default=150_000, help="offered readings/s in all (default 150000)")
    ap.add_argument("--phase", type=float, default=15.0, help="seconds between events (default 15)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds left out after an event (default 5)")
    ap.add_argument("--sample-every", type=float, default=0.25, help="sampling period, s (default 0.25)")
    ap.add_argument("--event-timeout", type=float, default=120.0, help="s to wait for a member (default 120)")
    ap.add_argument(
        "--drain-timeout", type=float, default=300.0, help="s to wait for the backlog (default 300)"
    )
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    ap.add_argument("--out", help="result file (default bench/results/scaling.json)")
    ap.add_argument("--dump", nargs=2, metavar=("DATA_DIR", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.processors < 2 and not args.dump:
        ap.error("--processors must be at least 2 (p2 is the one killed)")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.dump:
        print(json.dumps(dump_store(*args.dump)))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a SIGTERM ends the children too (finally)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    result = run(args, say)
    path = write_result("scaling", result, args.out)
    if args.json:
        print(json.dumps(result))
    else:
        print_figures(result)
        print(f"written to {path}")
    return 0 if result["exactness"]["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
