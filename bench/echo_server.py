"""The transport ceiling: a plain grpc.aio Ingest server that acks every ReadingBatch at once.

    python -m iotstream.bench.echo_server --port 50052

Same proto, same messages, same server options as `iotstream serve`, written the way the gRPC examples
write a servicer (generated stubs, deserialized requests), and nothing else: no validation, no queue, no
storage. What our ingest reaches relative to this is the cost of everything it does beyond the transport.
`--data-dir` is accepted and ignored, so the benchmarks start every server the same way.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from iotstream.node import SERVER_OPTIONS
from iotstream.v1 import ingest_pb2 as pb
from iotstream.v1 import ingest_pb2_grpc as pb_grpc


class EchoIngest(pb_grpc.IngestServicer):
    async def Stream(
        self,
        request_iterator: AsyncIterator[pb.ReadingBatch],  # noqa: N802 (proto name)
        unused_context,
    ) -> AsyncIterator[pb.StreamResponse]:
        async for batch in request_iterator:
            yield pb.StreamResponse(ack=pb.Ack(seq=batch.seq, accepted=len(batch.values)))

    async def Send(self, request: pb.ReadingBatch, unused_context) -> pb.Ack:  # noqa: N802 (proto name)
        return pb.Ack(seq=request.seq, accepted=len(request.values))


async def serve(host: str, port: int, extra: list[tuple[str, int]] = ()) -> None:
    server = grpc.aio.server(options=[*SERVER_OPTIONS, *extra])
    pb_grpc.add_IngestServicer_to_server(EchoIngest(), server)
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    print(f"echo ingest on {host}:{bound}", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=50052)
    ap.add_argument("--data-dir", help="ignored")
    ap.add_argument(
        "--grpc-option",
        action="append",
        default=[],
        metavar="KEY=INT",
        help="extra server channel argument, e.g. grpc.server.max_pending_requests=20000",
    )
    args = ap.parse_args()
    extra = [(k, int(v)) for k, v in (o.split("=", 1) for o in args.grpc_option)]
    asyncio.run(serve(args.host, args.port, extra))


if __name__ == "__main__":
    main()
