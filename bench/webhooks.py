"""Alert webhook delivery: how fast episode changes reach a receiver, through the outbox.

Starts an embedded node with one hook pointing at a local HTTP receiver, stores flagged readings that open
N episodes at once, and times until the receiver has every `opened` event; reports events/s and the
latency from the insert to each delivery. Writes bench/results/webhooks.json.

    python -m iotstream.bench.webhooks [--episodes 2000] [--data-dir DIR] [--results DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa

from iotstream.node import Config, Node

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


class Receiver:
    def __init__(self):
        self.arrived: list[float] = []
        self.done = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(204)
                self.end_headers()
                with receiver.done:
                    receiver.arrived.append(time.perf_counter())
                    receiver.done.notify_all()

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_port}/"


async def run(episodes: int, data_dir: str) -> dict:
    receiver = Receiver()
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    hooks = Path(data_dir) / "hooks.toml"
    hooks.write_text(f'[[webhook]]\nname = "bench"\nurl = "{receiver.url}"\nsecret = "bench"\n')
    node = Node(Config(port=0, data_dir=data_dir, webhooks_path=str(hooks)))
    await node.start()
    try:
        now = time.time_ns() // 1_000_000
        flagged = pa.table(
            {
                "device_id": [f"dev-{i:05d}" for i in range(episodes)],
                "metric": ["temperature"] * episodes,
                "time": pa.array([now] * episodes, pa.timestamp("ms", tz="UTC")),
                "value": [1.0] * episodes,
                "kind": ["zscore"] * episodes,
                "score": [0.6] * episodes,
                "zscore": [7.0] * episodes,
            }
        )
        started = time.perf_counter()
        await asyncio.to_thread(node.store.insert_anomalies, flagged)
        stored = time.perf_counter()

        def wait():
            with receiver.done:
                return receiver.done.wait_for(lambda: len(receiver.arrived) >= episodes, 600)

        assert await asyncio.to_thread(wait), f"{len(receiver.arrived)} of {episodes} delivered"
    finally:
        await node.stop()
        receiver.http.shutdown()
    latency = np.array(receiver.arrived[:episodes]) - started
    seconds = receiver.arrived[episodes - 1] - stored
    return {
        "episodes": episodes,
        "insert_s": round(stored - started, 3),
        "deliver_s": round(seconds, 3),
        "events_per_s": round(episodes / seconds, 1),
        "latency_ms": {
            q: round(float(np.percentile(latency, p)) * 1000, 1)
            for q, p in (("p50", 50), ("p99", 99), ("max", 100))
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=2000)
    p.add_argument("--data-dir", default=None, help="chDB data folder (default: a temporary one)")
    p.add_argument("--results", default=str(RESULTS), help="folder for webhooks.json (default bench/results)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(args.episodes, args.data_dir or tmp))
    print(json.dumps(result))
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "webhooks.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
