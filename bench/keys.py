"""Keys benchmark: memory per (device, metric) key and processor throughput at 10³, 10⁵, 10⁶ keys.

    python bench/keys.py --json                       # 10³, 10⁵, 10⁶ keys; JSON to bench/results/keys.json
    python bench/keys.py --keys 1000 100000 --readings 500000
    python bench/keys.py --kafka --json                # the same through a local Kafka broker

For each key count, through the embedded path's Processor (decode, key slots, kernels, anomaly rows; the
insert is left out, as it does not depend on the key count):

* warm: every key gets readings once (devices of 10 metrics, one batch per device);
* memory: resident-set growth over the warm-up per key, and the kernel state's share (snapshot bytes per
  slot; slots grow by doubling, so `nslots` can be up to twice the keys);
* throughput: `--readings` readings in batches of one device x 10 metrics x 10 times, devices drawn at
  random over all keys, in calls of 200,000 readings as the embedded loop takes them; readings per CPU
  second of this thread (the machine is shared) and per wall second;
* snapshot: PartitionState.to_bytes size and time;
* resend window: each device's last RECENT_BATCHES (seq, fingerprint) pairs, filled after the timed part:
  resident-set growth per device, CPU microseconds per batch checked, and the snapshot's size and time then;
* eviction: the time to evict half the keys as idle (compaction copies every live key's state), up to
  `--compact-max` keys (it needs about three times the state's memory at its peak).

With `--kafka` (a local broker from bench/kafka_local.py, or `--kafka HOST:PORT`) the readings come from a
one-partition topic through a consumer instead (produced beforehand, not timed), and the snapshot goes to the
state topic as the Kafka processor writes it (processor.kafka_loop.StateLog: chunks, then a manifest):
its time to the broker's acknowledgement, its largest message against the topic's `max.message.bytes`,
and, up to `--restore-max` keys, a read-back restore checked byte for byte.

Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path

import numpy as np
from confluent_kafka import TopicPartition
from confluent_kafka.admin import ConfigResource

from iotstream.bus.kafka import STATE_CHUNK_BYTES, KafkaConfig, ensure_topics
from iotstream.processor import Processor
from iotstream.processor.kafka_loop import StateLog
from iotstream.processor.state import RECENT_BATCHES
from iotstream.v1 import ingest_pb2 as pb

METRICS = [f"m{j}" for j in range(10)]
T0 = 1_800_000_000_000
CALL_READINGS = 200_000  # readings per processor call, as a chunk of the processor loop


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def payload(device: int, times: int, t0: int, rng) -> bytes:
    n = times * len(METRICS)
    return pb.ReadingBatch(
        device_id=f"dev-{device:07d}",
        seq=1,
        base_time_ms=t0,
        time_offset_ms=np.repeat(np.arange(times) * 1000, len(METRICS)).tolist(),
        metric_names=METRICS,
        metric_index=list(range(len(METRICS))) * times,
        values=rng.normal(20.0, 2.0, n).tolist(),
    ).SerializeToString()


def calls(payloads: list[bytes], per_payload: int) -> list[list[bytes]]:
    step = max(1, CALL_READINGS // per_payload)
    return [payloads[i : i + step] for i in range(0, len(payloads), step)]


def workload(keys: int, readings: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """(warm-up payloads: every key once, timed payloads: devices drawn at random)."""
    rng = np.random.default_rng(seed)
    devices = max(1, keys // len(METRICS))
    warm = [payload(d, 1, T0, rng) for d in range(devices)]
    drawn = rng.integers(0, devices, max(1, readings // (10 * len(METRICS))))
    work = [payload(int(d), 10, T0 + 60_000 + i * 10_000, rng) for i, d in enumerate(drawn)]
    return warm, work


class Direct:
    """Payloads handed to the processor as they are (the embedded path, without the log)."""

    def __init__(self, warm: list[bytes], work: list[bytes]):
        self.parts = {"warm": warm, "work": work}

    def calls(self, part: str, per_payload: int):
        return calls(self.parts[part], per_payload)


class FromKafka:
    """The payloads produced to a one-partition readings topic first (not timed), then consumed back in
    calls of CALL_READINGS readings, as the Kafka loop polls them."""

    def __init__(self, cfg: KafkaConfig, warm: list[bytes], work: list[bytes]):
        ensure_topics(cfg)
        producer = cfg.producer(linger_ms=20, compression_type="lz4")
        for value in (*warm, *work):
            while True:
                try:
                    producer.produce(cfg.topic, value)
                    break
                except BufferError:
                    producer.poll(0.1)
        if producer.flush(120):
            raise RuntimeError(f"{cfg.topic}: payloads not delivered within 120 s")
        self.consumer = cfg.consumer(group_id=cfg.group_id, enable_auto_commit=False)
        self.consumer.assign([TopicPartition(cfg.topic, 0, 0)])
        self.counts = {"warm": len(warm), "work": len(work)}
        self.offset = 0

    def calls(self, part: str, per_payload: int):
        left, step = self.counts[part], max(1, CALL_READINGS // per_payload)
        while left:
            chunk: list[bytes] = []
            while len(chunk) < min(step, left):
                for msg in self.consumer.consume(min(step, left) - len(chunk), timeout=5.0):
                    if msg.error():
                        raise RuntimeError(f"consume: {msg.error()}")
                    chunk.append(msg.value())
            left -= len(chunk)
            self.offset += len(chunk)
            yield chunk


def run(keys: int, readings: int, compact_max: int, kafka: KafkaConfig | None, restore_max: int) -> dict:
    warm, work = workload(keys, readings, seed=0)
    feed = FromKafka(kafka, warm, work) if kafka is not None else Direct(warm, work)
    del warm, work
    proc = Processor(store=None)
    base = rss_bytes()
    warm_start = time.perf_counter()
    for chunk in feed.calls("warm", len(METRICS)):
        proc.prepare(chunk)
    warm_s = time.perf_counter() - warm_start
    state = proc.state(0)
    grown = rss_bytes() - base
    snap_start = time.perf_counter()
    snapshot = state.to_bytes()
    snap_s = time.perf_counter() - snap_start
    snap_bytes = len(snapshot)
    del snapshot

    cpu0, wall0 = time.thread_time(), time.perf_counter()
    scored = 0
    for chunk in feed.calls("work", 10 * len(METRICS)):
        scored += proc.prepare(chunk).readings.num_rows
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0

    result = {
        "keys": len(state.slots),
        "nslots": state.stats.nslots,
        "readings": scored,
        "readings_per_cpu_s": scored / cpu,
        "readings_per_wall_s": scored / wall,
        "rss_bytes_per_key": grown / len(state.slots),
        "kernel_bytes_per_slot": snap_bytes / state.stats.nslots,
        "snapshot_bytes": snap_bytes,
        "snapshot_s": snap_s,
        "warm_s": warm_s,
    }
    result.update(resend_window(state))
    if kafka is not None:
        result.update(kafka_snapshot(kafka, state, feed.offset, keys <= restore_max))
    if keys <= compact_max:
        half = np.arange(0, len(state.slots), 2)
        state.seen[half] = 0  # every other key long idle
        start = time.perf_counter()
        evicted = state.evict_idle(time.time_ns() // 1_000_000, at_cap=True)
        result.update(evicted=evicted, evict_s=time.perf_counter() - start)
    return result


def resend_window(state) -> dict:
    """Every device's resend window filled (RECENT_BATCHES batches each, as a long-lived device's is)."""
    devices = sorted({d for d, _ in state.slots})
    base, cpu0 = rss_bytes(), time.thread_time()
    for seq in range(2, 2 + RECENT_BATCHES):
        for i, device in enumerate(devices):
            state.is_resend(device, seq, (i * 0x9E3779B97F4A7C15 + seq) % 2**64)
    cpu = time.thread_time() - cpu0
    grown = rss_bytes() - base
    started = time.perf_counter()
    snapshot = state.to_bytes()
    return {
        "resend_window_bytes_per_device": grown / len(devices),
        "resend_check_us": 1e6 * cpu / (len(devices) * RECENT_BATCHES),
        "snapshot_full_windows_bytes": len(snapshot),
        "snapshot_full_windows_s": time.perf_counter() - started,
    }


def kafka_snapshot(cfg: KafkaConfig, state, offset: int, restore: bool) -> dict:
    """The state written to the state topic as the Kafka processor does, and optionally read back."""
    data = state.to_bytes()
    log = StateLog(cfg)
    start = time.perf_counter()
    log.save_snapshot(0, offset, data)
    log.flush()
    out = {
        "kafka_snapshot_s": time.perf_counter() - start,
        "kafka_snapshot_messages": -(-len(data) // STATE_CHUNK_BYTES) + 2,  # chunks, manifest, intents
        "kafka_largest_message_bytes": min(len(data), STATE_CHUNK_BYTES),
        "broker_max_message_bytes": topic_max_message_bytes(cfg),
    }
    if restore:
        start = time.perf_counter()
        latest = log.load()
        restored, covered, _ = StateLog(cfg).restore(latest, 0)
        out.update(kafka_restore_s=time.perf_counter() - start, restore_exact=restored == data)
        out["kafka_largest_message_bytes"] = max(map(len, latest.values()))  # as read back
        assert covered == offset
    return out


def topic_max_message_bytes(cfg: KafkaConfig) -> int:
    resource = ConfigResource(ConfigResource.Type.TOPIC, cfg.state_topic)
    admin = cfg.admin()  # kept until the answer is in: a dropped client cancels its requests
    entries = admin.describe_configs([resource])[resource].result(30)
    return int(entries["max.message.bytes"].value)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    ap.add_argument("--readings", type=int, default=1_000_000, help="timed readings per key count")
    ap.add_argument("--compact-max", type=int, default=100_000, help="measure eviction up to this many keys")
    ap.add_argument("--json", action="store_true", help="write bench/results/keys.json and print it")
    ap.add_argument(
        "--kafka", nargs="?", const="local", help="through Kafka: a local broker, or this bootstrap address"
    )
    ap.add_argument(
        "--restore-max", type=int, default=100_000, help="--kafka: read back up to this many keys"
    )
    args = ap.parse_args(argv)
    from iotstream.ext import IMPLEMENTATION

    broker = None
    if args.kafka == "local":
        from iotstream.bench import kafka_local

        broker = kafka_local.start()
    runs = []
    try:
        for k in args.keys:  # each in a fresh Processor; the earlier one is freed first
            kafka = None
            if args.kafka:
                bootstrap = broker.bootstrap if broker is not None else args.kafka
                kafka = KafkaConfig(bootstrap, namespace=f"bench-keys-{uuid.uuid4().hex[:8]}", partitions=1)
            runs.append(run(k, args.readings, args.compact_max, kafka, args.restore_max))
            report(runs[-1], args.json)
    finally:
        if broker is not None:
            broker.stop()
    out = {
        "benchmark": "keys",
        "mode": "kafka" if args.kafka else "embedded",
        "implementation": IMPLEMENTATION,
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
        "runs": runs,
    }
    if args.json:
        path = (
            Path(__file__).resolve().parent / "results" / ("keys-kafka.json" if args.kafka else "keys.json")
        )
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(out, indent=2))
        print(json.dumps(out, indent=2))
    return 0


def report(r: dict, quiet: bool) -> None:
    if quiet:
        return
    print(
        f"{r['keys']:>9} keys: {r['readings_per_cpu_s'] / 1e6:6.2f} M readings/CPU s "
        f"({r['readings_per_wall_s'] / 1e6:.2f} M/wall s), "
        f"{r['rss_bytes_per_key']:7.0f} B/key RSS, "
        f"kernel {r['kernel_bytes_per_slot']:.0f} B/slot x {r['nslots']} slots, snapshot "
        f"{r['snapshot_bytes'] / 1e6:.1f} MB in {r['snapshot_s']:.2f} s, resend window "
        f"{r['resend_window_bytes_per_device']:.0f} B/device ({r['resend_check_us']:.2f} us a batch; "
        f"snapshot then {r['snapshot_full_windows_bytes'] / 1e6:.1f} MB "
        f"in {r['snapshot_full_windows_s']:.2f} s)"
        + (f", evict {r['evicted']} in {r['evict_s']:.2f} s" if "evicted" in r else "")
        + (
            f"; Kafka snapshot {r['kafka_snapshot_messages']} messages of at most "
            f"{r['kafka_largest_message_bytes']} B (topic limit {r['broker_max_message_bytes']} B) "
            f"in {r['kafka_snapshot_s']:.2f} s"
            if "kafka_snapshot_s" in r
            else ""
        )
        + (
            f", restored in {r['kafka_restore_s']:.2f} s, exact: {r['restore_exact']}"
            if "kafka_restore_s" in r
            else ""
        ),
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
