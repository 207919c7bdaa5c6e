#!/usr/bin/env python3
"""Fuzz a real iotstream server: hostile bytes and absurd messages on every RPC, good neighbours in between.

    python -m iotstream.bench.fuzz --minutes 10            # starts `iotstream serve` on a temp folder, fuzzes
    it
    python -m iotstream.bench.fuzz --target 127.0.0.1:50051 --minutes 5 [--token T --reader-token R]

Inputs, in rounds until the time is up:

* `send_bytes` / `stream_bytes`: random bytes, and valid batches mutated (bit flips, truncation, splices),
  as `Ingest/Send` requests and as `Ingest/Stream` messages;
* `send_absurd` / `stream_absurd`: ReadingBatch messages from hypothesis, valid protobuf with absurd content
  (huge and empty ids and names, extreme timestamps and offsets, NaN/inf, column lengths that disagree,
  indexes past the dictionary, duplicate seqs on one stream);
* `query`: every Query RPC with every field of its request drawn at random (strings, extremes, enums
  out of range, garbage page tokens).

A crash is an UNKNOWN or INTERNAL status (an exception escaped a handler), the server process dying, or
the health check failing; a hang is a call past its deadline. Between rounds a neighbour device sends a
good batch; at the end every neighbour reading acked must be stored. The report (stdout and
bench/results/fuzz.json) gives the inputs tried per kind, the statuses seen, crashes and hangs.
The CI test (tests/integration/test_fuzz_server.py) runs the same rounds, bounded.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor as F
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from iotstream.v1 import ingest_pb2 as pb
from iotstream.v1 import query_pb2 as qpb

CRASH_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
CALL_TIMEOUT_S = 15.0
NOW_MS = time.time_ns() // 1_000_000
INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)
NASTY = [
    "",
    " ",
    "\x00",
    "'; DROP TABLE readings; --",
    "{d:String}",
    "$db",
    "\\",
    "../../etc/passwd",
    "%s%n",
    "\u202e\u0000\uffff",
    "a" * 129,
    "a" * 10_000,
    "null",
    "-1",
    "9" * 40,
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]


@dataclass
class Report:
    inputs: collections.Counter = field(default_factory=collections.Counter)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    crashes: list = field(default_factory=list)
    hangs: list = field(default_factory=list)
    neighbour_acked: int = 0
    neighbour_stored: int = -1

    def record(self, kind: str, code: grpc.StatusCode, detail: str, sample: bytes | str) -> None:
        self.inputs[kind] += 1
        self.statuses[f"{kind}:{code.name}"] += 1
        if code in CRASH_CODES:
            self.crashes.append(
                {"kind": kind, "status": code.name, "detail": detail[:300], "input": repr(sample)[:300]}
            )
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            self.hangs.append({"kind": kind, "detail": detail[:300], "input": repr(sample)[:300]})

    def summary(self) -> dict:
        return {
            "inputs_tried": sum(self.inputs.values()),
            "inputs": dict(self.inputs),
            "crashes": len(self.crashes),
            "hangs": len(self.hangs),
            "crashes_by_kind": dict(collections.Counter(c["kind"] for c in self.crashes)),
            "statuses": dict(sorted(self.statuses.items())),
            "crash_samples": self.crashes[:10],
            "hang_samples": self.hangs[:10],
            "neighbour_acked": self.neighbour_acked,
            "neighbour_stored": self.neighbour_stored,
        }


# ---- inputs -------------------------------------------------------------------------------------------


def good_batch(device: str, seq: int, n: int = 5, value: float = 1.0) -> pb.ReadingBatch:
    return pb.ReadingBatch(
        device_id=device,
        seq=seq,
        base_time_ms=time.time_ns() // 1_000_000 - 60_000,
        time_offset_ms=list(range(n)),
        metric_names=["temp", "hum"],
        metric_index=[i % 2 for i in range(n)],
        values=[value + i for i in range(n)],
    )


def hostile_bytes(rng: random.Random) -> bytes:
    """Random bytes, or a valid batch damaged in one of a few ways."""
    how = rng.randrange(5)
    if how == 0:
        return rng.randbytes(rng.choice([0, 1, 2, 7, 64, 500, 4096]))
    raw = bytearray(good_batch("fuzz-raw", rng.randrange(1, 1000), rng.randrange(0, 40)).SerializeToString())
    if how == 1 and raw:  # bit flips
        for _ in range(rng.randrange(1, 8)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    elif how == 2:  # truncated
        raw = raw[: rng.randrange(len(raw) + 1)]
    elif how == 3:  # random bytes spliced in
        at = rng.randrange(len(raw) + 1)
        raw[at:at] = rng.randbytes(rng.randrange(1, 32))
    else:  # a field header claiming a huge length
        raw += bytes([0x2A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F])
    return bytes(raw)


def text():
    return st.one_of(
        st.text(max_size=40),
        st.sampled_from(NASTY),
        st.text(min_size=200, max_size=5000),
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}", fullmatch=True),
    )


def ints(lo: int, hi: int):
    edges = [
        v for v in (lo, hi, 0, 1, -1, NOW_MS, -NOW_MS, 2**31, 2**32 - 1, 4_102_444_800_000) if lo <= v <= hi
    ]
    return st.one_of(st.integers(lo, hi), st.sampled_from(edges))


FLOATS = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def absurd_batch(draw) -> pb.ReadingBatch:
    same_length = draw(st.booleans())
    n = draw(st.integers(0, 60))

    def column(elements):
        return draw(
            st.lists(elements, min_size=n, max_size=n) if same_length else st.lists(elements, max_size=60)
        )

    return pb.ReadingBatch(
        device_id=draw(text()),
        seq=draw(ints(*UINT64)),
        base_time_ms=draw(ints(*INT64)),
        time_offset_ms=column(ints(*INT64)),
        metric_names=draw(st.lists(text(), max_size=8)),
        metric_index=column(st.one_of(st.integers(0, 8), ints(0, 2**32 - 1))),
        values=column(FLOATS),
        received_ms=draw(ints(*INT64)),
        fingerprint=draw(ints(*UINT64)),
    )


def field_value(f, draw):
    if f.type == F.TYPE_STRING:
        return draw(text())
    if f.type == F.TYPE_BYTES:
        return draw(st.binary(max_size=64))
    if f.type == F.TYPE_BOOL:
        return draw(st.booleans())
    if f.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return draw(FLOATS if f.type == F.TYPE_DOUBLE else st.floats(width=32))
    if f.type == F.TYPE_ENUM:
        return draw(
            st.one_of(st.sampled_from([v.number for v in f.enum_type.values]), ints(-(2**31), 2**31 - 1))
        )
    if f.type in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
        return draw(ints(*INT64))
    if f.type in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return draw(ints(*UINT64))
    if f.type in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
        return draw(ints(-(2**31), 2**31 - 1))
    if f.type in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return draw(ints(0, 2**32 - 1))
    return None


@st.composite
def query_request(draw, method):
    """A request for `method` (a MethodDescriptor) with every field drawn at random."""
    cls = message_factory.GetMessageClass(method.input_type)
    msg = cls()
    for f in method.input_type.fields:
        if f.type == F.TYPE_MESSAGE or not draw(st.integers(0, 3)):
            continue  # leave some fields unset
        if f.is_repeated:
            getattr(msg, f.name).extend(field_value(f, draw) for _ in range(draw(st.integers(1, 5))))
        else:
            setattr(msg, f.name, field_value(f, draw))
    return msg


# ---- the fuzzer ---------------------------------------------------------------------------------------


def status_of(fn) -> tuple[grpc.StatusCode, str]:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


class Fuzzer:
    """Rounds of fuzz against `target`; `metadata_ingest`/`metadata_query` carry tokens when auth is on
    (ingest token of device `device`, whose batches then carry that device id)."""

    def __init__(
        self,
        target: str,
        seed: int = 0,
        ingest_md=(),
        query_md=(),
        device: str | None = None,
        alive=lambda: True,
    ):
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
            ],
        )
        self.rng = random.Random(seed)
        self.seed, self.runs = seed, 0  # hypothesis runs are seeded too: a seed reproduces a whole session
        self.report = Report()
        self.ingest_md, self.query_md, self.device, self.alive = (
            tuple(ingest_md),
            tuple(query_md),
            device,
            alive,
        )
        raw = dict(request_serializer=None, response_deserializer=None)
        self.send = self.channel.unary_unary("/iotstream.v1.Ingest/Send", **raw)
        self.stream = self.channel.stream_stream("/iotstream.v1.Ingest/Stream", **raw)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.neighbour_seq = 0
        self.methods = list(qpb.DESCRIPTOR.services_by_name["Query"].methods)

    def close(self) -> None:
        self.channel.close()

    def _own(self, b: pb.ReadingBatch) -> pb.ReadingBatch:
        if self.device is not None and self.rng.random() < 0.8:
            b.device_id = self.device  # mostly our own device, so the content gets past auth
        return b

    def send_bytes(self, n: int) -> None:
        for _ in range(n):
            raw = hostile_bytes(self.rng)
            code, detail = status_of(
                lambda raw=raw: self.send(raw, timeout=CALL_TIMEOUT_S, metadata=self.ingest_md)
            )
            self.report.record("send_bytes", code, detail, raw)

    def stream_bytes(self, n: int) -> None:
        for _ in range(n):
            msgs = [
                hostile_bytes(self.rng)
                if self.rng.random() < 0.7
                else self._own(good_batch("fuzz-mixed", self.rng.randrange(100))).SerializeToString()
                for _ in range(self.rng.randrange(1, 6))
            ]
            code, detail = status_of(
                lambda m=msgs: list(self.stream(iter(m), timeout=CALL_TIMEOUT_S, metadata=self.ingest_md))
            )
            self.report.record("stream_bytes", code, detail, msgs)

    def _next_seed(self) -> int:
        self.runs += 1
        return self.seed * 100_003 + self.runs

    def absurd(self, n: int) -> None:
        @seed(self._next_seed())
        @settings(
            max_examples=n,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(st.lists(absurd_batch(), min_size=1, max_size=4), st.booleans())
        def run(batches, as_stream):
            batches = [self._own(b) for b in batches]
            if as_stream:
                if len(batches) > 1 and self.rng.random() < 0.5:
                    batches[-1].seq = batches[0].seq  # duplicate seqs on one stream
                raws = [b.SerializeToString() for b in batches]
                code, detail = status_of(
                    lambda: list(self.stream(iter(raws), timeout=CALL_TIMEOUT_S, metadata=self.ingest_md))
                )
                self.report.record("stream_absurd", code, detail, batches[0])
            else:
                raw = batches[0].SerializeToString()
                code, detail = status_of(
                    lambda: self.send(raw, timeout=CALL_TIMEOUT_S, metadata=self.ingest_md)
                )
                self.report.record("send_absurd", code, detail, batches[0])

        run()

    def query(self, n: int) -> None:
        @seed(self._next_seed())
        @settings(
            max_examples=n,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(st.data())
        def run(data):
            method = data.draw(st.sampled_from(self.methods))
            request = data.draw(query_request(method))
            path = f"/{method.containing_service.full_name}/{method.name}"
            raw = dict(request_serializer=None, response_deserializer=None)
            if method.server_streaming:  # a watch: the deadline is how it ends when nothing comes
                call = self.channel.unary_stream(path, **raw)

                def watch():
                    for i, _ in enumerate(
                        call(request.SerializeToString(), timeout=1.0, metadata=self.query_md)
                    ):
                        if i >= 3:
                            break

                code, detail = status_of(watch)
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    code = grpc.StatusCode.OK
            else:
                call = self.channel.unary_unary(path, **raw)
                code, detail = status_of(
                    lambda: call(request.SerializeToString(), timeout=CALL_TIMEOUT_S, metadata=self.query_md)
                )
            self.report.record("query", code, detail, f"{method.name}({request})")

        run()

    def neighbour(self) -> None:
        """A good device between the hostile ones: its batch must be acked in full."""
        self.neighbour_seq += 1
        b = good_batch(
            self.device or "fuzz-neighbour", self.neighbour_seq, 5, value=self.neighbour_seq * 100.0
        )
        ack = pb.Ack.FromString(
            self.send(b.SerializeToString(), timeout=CALL_TIMEOUT_S, metadata=self.ingest_md)
        )
        assert ack.accepted == 5, f"neighbour batch not accepted: {ack}"
        self.report.neighbour_acked += 5

    def check_alive(self) -> None:
        ok = self.alive()
        if ok:
            try:
                status = self.health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S).status
                ok = status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                ok = False
        if not ok:
            self.report.crashes.append(
                {"kind": "server", "status": "DOWN", "detail": "process died or health failed"}
            )
            raise RuntimeError("server down")

    def round(self, scale: int = 1) -> None:
        self.send_bytes(40 * scale)
        self.neighbour()
        self.stream_bytes(15 * scale)
        self.neighbour()
        self.absurd(40 * scale)
        self.neighbour()
        self.query(40 * scale)
        self.neighbour()
        self.check_alive()


def neighbour_stored(target: str, device: str, query_md=()) -> int:
    from iotstream.v1 import query_pb2_grpc

    with grpc.insecure_channel(target) as ch:
        page = query_pb2_grpc.QueryStub(ch).GetHistory(
            qpb.GetHistoryRequest(device_id=device, start_ms=1, page_size=100_000),
            timeout=60,
            metadata=query_md,
        )
    return sum(len(s.values) for s in page.series)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=1.0, help="how long to fuzz (default 1)")
    ap.add_argument(
        "--target", help="a running server HOST:PORT (default: start `iotstream serve` for the run)"
    )
    ap.add_argument("--token", help="device token for Ingest calls (server with auth)")
    ap.add_argument("--device", help="the device the --token belongs to")
    ap.add_argument("--reader-token", help="reader token for Query calls (server with auth)")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fuzz.json"))
    args = ap.parse_args(argv)

    proc, target = None, args.target
    if target is None:
        data = tempfile.mkdtemp(prefix="iotstream-fuzz-")
        proc = subprocess.Popen(
            [sys.executable, "-m", "iotstream.cli", "serve", "--port", "0", "--data-dir", data],
            stderr=subprocess.PIPE,
            text=True,
        )
        for line in proc.stderr:
            if found := re.search(r"serving on ([\d.]+:\d+)", line):
                target = found.group(1)
                break
        if target is None:
            raise SystemExit(f"serve exited with {proc.wait()}")
        threading.Thread(
            target=lambda: [None for _ in proc.stderr], daemon=True
        ).start()  # keep the pipe drained
    md = lambda t: (("authorization", f"Bearer {t}"),) if t else ()  # noqa: E731
    fuzz = Fuzzer(
        target,
        args.seed,
        md(args.token),
        md(args.reader_token),
        args.device,
        alive=(lambda: proc.poll() is None) if proc else (lambda: True),
    )
    started, rounds, error = time.monotonic(), 0, None
    try:
        while time.monotonic() - started < args.minutes * 60:
            fuzz.round()
            rounds += 1
            s = fuzz.report.summary()
            print(
                f"round {rounds}: {s['inputs_tried']:,} inputs, {s['crashes']} crashes, {s['hangs']} hangs "
                f"({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        fuzz.report.neighbour_stored = neighbour_stored(
            target, args.device or "fuzz-neighbour", md(args.reader_token)
        )
    except (RuntimeError, AssertionError, grpc.RpcError) as exc:
        error = repr(exc)
    finally:
        fuzz.close()
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    result = {
        "benchmark": "fuzz",
        "seed": args.seed,
        "minutes": args.minutes,
        "rounds": rounds,
        "seconds": round(time.monotonic() - started, 1),
        "error": error,
        "server_exit": proc.returncode if proc else None,
        **fuzz.report.summary(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("statuses",)}, indent=2))
    ok = (
        not result["crashes"]
        and not result["hangs"]
        and error is None
        and result["neighbour_stored"] == result["neighbour_acked"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
