"""Our ingest front alone: iotstream's IngestService (decode, validate, ack) over a queue that takes every
batch and reports it durable at once - no processor, no store.

    python -m iotstream.bench.ingest_front --port 50053

bench/compare.py runs it beside the plain echo server and the full `iotstream serve`, which splits our
distance from the transport limit into what the ingest handler costs and what waiting for durable storage
costs. `--data-dir` is accepted and ignored.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from iotstream.ingest import IngestService, add_to_server
from iotstream.node import SERVER_OPTIONS


class InstantQueue:
    """Takes any batch and resolves its durability future immediately."""

    depth = 0

    async def put(self, payload: bytes, readings: int, key: str = "") -> asyncio.Future:
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    add_to_server(IngestService(InstantQueue()), server)
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    print(f"ingest front (no store) on {host}:{bound}", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=50053)
    ap.add_argument("--data-dir", help="ignored")
    args = ap.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
