"""The peer users would otherwise build: a FastAPI/uvicorn `POST /ingest` JSON service in front of the same
queue, processor and store as `iotstream serve`.

    python -m iotstream.bench.fastapi_peer --port 8000 [--data-dir DIR] [--kafka BOOTSTRAP]

It does what the common FastAPI telemetry prototypes do: one pydantic model per reading (row-oriented
JSON), field validation (device id and metric name patterns, finite values, time window), enrichment
(server receive time, a batch id, the metric dictionary), then hand-over to the queue, and a JSON reply
once the queue says the batch is durable - the same guarantee our gRPC Ack gives, so the two are
measured doing the same job. The queue, processor and store are iotstream's own (`EmbeddedServer.queue`;
its gRPC port is bound on an ephemeral loopback port and left idle), so only the front door differs.
One uvicorn worker, like our one ingest process; uvloop and httptools when installed (uvicorn's
"standard" extras), access log off.
"""

from __future__ import annotations

import argparse
import math
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field, field_validator, model_validator

from iotstream.v1 import ingest_pb2 as pb

DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
METRIC_NAME = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
MAX_PAST_MS, MAX_FUTURE_MS = 30 * 86_400_000, 5 * 60_000


class Reading(BaseModel):
    time_ms: int
    metric: str = Field(pattern=METRIC_NAME)
    value: float

    @field_validator("value")
    @classmethod
    def finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("value must be finite")
        return v


class Batch(BaseModel):
    device_id: str = Field(pattern=DEVICE_ID)
    seq: int = Field(ge=0)
    readings: list[Reading] = Field(max_length=10_000)

    @model_validator(mode="after")
    def in_time_window(self) -> Batch:
        now = time.time_ns() // 1_000_000
        for i, r in enumerate(self.readings):
            if not now - MAX_PAST_MS <= r.time_ms <= now + MAX_FUTURE_MS:
                raise ValueError(f"readings[{i}].time_ms {r.time_ms} outside the accepted window")
        return self


class Accepted(BaseModel):
    seq: int
    accepted: int
    batch_id: str


def enrich(batch: Batch) -> tuple[bytes, int]:
    """The batch as the queue's ReadingBatch bytes, stamped with the receive time."""
    names: dict[str, int] = {}
    index = [names.setdefault(r.metric, len(names)) for r in batch.readings]
    base = batch.readings[0].time_ms if batch.readings else 0
    msg = pb.ReadingBatch(
        device_id=batch.device_id,
        seq=batch.seq,
        base_time_ms=base,
        time_offset_ms=[r.time_ms - base for r in batch.readings],
        metric_names=list(names),
        metric_index=index,
        values=[r.value for r in batch.readings],
        received_ms=time.time_ns() // 1_000_000,
    )
    return msg.SerializeToString(), len(batch.readings)


def create_app(data_dir: str, kafka: str | None = None, namespace: str = "iotstream") -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from iotstream.node import Config, EmbeddedServer

        config = Config(host="127.0.0.1", port=0, data_dir=data_dir)
        if kafka:
            from iotstream.bench.harness import prepare_kafka
            from iotstream.bus.kafka import KafkaConfig

            prepare_kafka(kafka, namespace)
            config.kafka = KafkaConfig(bootstrap=kafka, namespace=namespace)
        app.state.node = EmbeddedServer(config)
        await app.state.node.start()
        try:
            yield
        finally:
            await app.state.node.stop()

    app = FastAPI(title="ingest peer", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/ingest", response_model=Accepted)
    async def ingest(batch: Batch) -> Accepted:
        payload, n = enrich(batch)
        if n:
            done = await app.state.node.queue.put(payload, n, batch.device_id)
            try:
                await done
            except Exception as exc:
                raise HTTPException(503, f"batch seq={batch.seq} was not stored ({exc}); resend it") from exc
        return Accepted(seq=batch.seq, accepted=n, batch_id=uuid.uuid4().hex)

    return app


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--data-dir", default="./fastapi-peer-data")
    ap.add_argument("--kafka", metavar="BOOTSTRAP", help="hand batches to Kafka instead of the local queue")
    ap.add_argument(
        "--namespace", default="iotstream", help="Kafka topics and group prefix (default iotstream)"
    )
    args = ap.parse_args()
    uvicorn.run(
        create_app(args.data_dir, args.kafka, args.namespace),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
