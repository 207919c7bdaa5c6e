"""The clickhouse-connect backend against a real ClickHouse server, with the same SQL as the embedded
engine: migrations, replay-safe inserts, rollups, device registry, anomaly episodes and bound parameters.
Each answer is compared with chDB's answer to the same data.

Runs when IOTSTREAM_CLICKHOUSE_URL names a server, e.g. http://default:@127.0.0.1:8123/iotstream_test
(each test run uses its own database named after the URL's, and drops it); reported skipped otherwise.
"""

import math
import os
import time
import uuid
from urllib.parse import urlparse

import pyarrow as pa
import pytest

from iotstream.clickhouse import Store, open_backend

URL = os.environ.get("IOTSTREAM_CLICKHOUSE_URL", "")
pytestmark = pytest.mark.skipif(
    not URL,
    reason="IOTSTREAM_CLICKHOUSE_URL is not set, so there is no ClickHouse "
    "server for the clickhouse-connect backend (no server can be "
    "installed on these machines)",
)
HOUR = 3_600_000
HOSTILE = [
    "it's",
    "a\\b",
    "tab\there",
    "nl\nx",
    "\\N",
    "'; DROP TABLE readings; --",
    "{x:String}",
    "é😀",
    "x" * 10_000,
]


@pytest.fixture(scope="module")
def stores(chdb_dir):
    """(remote, embedded) stores, each migrated into a fresh database."""
    parts = urlparse(URL)
    name = f"{parts.path.strip('/') or 'iotstream_test'}_{uuid.uuid4().hex[:8]}"
    remote = Store(open_backend(clickhouse_url=parts._replace(path="/" + name).geturl()))
    local = Store(open_backend(data_dir=chdb_dir, database=name))
    for s in (remote, local):
        s.migrate()
    yield remote, local
    remote.backend.command(f"DROP DATABASE IF EXISTS {name}")
    remote.backend.close()
    local.backend.close()


def plain(value):
    """Comparable across backends: floats rounded, NaN as a string (NaN != NaN)."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else round(value, 6)
    return value


def readings(rows) -> pa.Table:
    return pa.table(
        {
            "device_id": [r[0] for r in rows],
            "metric": [r[1] for r in rows],
            "time": pa.array([r[2] for r in rows], pa.timestamp("ms", tz="UTC")),
            "value": [float(r[3]) for r in rows],
        }
    )


def test_bound_parameters_round_trip(stores):
    remote, _ = stores
    for value in HOSTILE:
        assert remote.backend.query("SELECT {x:String} AS v", {"x": value}).column("v")[0].as_py() == value
    got = remote.backend.query("SELECT {x:Array(String)} AS v", {"x": HOSTILE}).column("v")[0].as_py()
    assert got == HOSTILE


def test_same_answers_as_the_embedded_engine(stores):
    t0 = (time.time_ns() // 1_000_000 // HOUR - 30) * HOUR
    rows = [
        (dev, metric, t0 + i * 61_000 + k, (i * 7 + k) % 13 + 0.25)
        for k, dev in enumerate(["d1", "d2", HOSTILE[5]])
        for metric in ("temp", "hum")
        for i in range(1_500)
    ]
    flagged = readings(rows[::97]).append_column("kind", pa.array(["zscore"] * len(rows[::97])))
    flagged = flagged.append_column("score", pa.array([0.65] * flagged.num_rows))
    flagged = flagged.append_column("zscore", pa.array([8.0] * flagged.num_rows))
    for s in stores:
        for i in range(0, len(rows), 1_000):
            s.insert_readings(readings(rows[i : i + 1_000]), token=f"r-{i}")
        s.insert_readings(readings(rows[:1_000]), token="r-0")  # a replay: stored once
        s.insert_anomalies(flagged, token="a-0")
        s.insert_anomalies(flagged, token="a-0")

    def answers(s):
        agg = []
        for interval in (60_000, HOUR, 86_400_000, 90_000):
            table, sources = s.aggregate(
                [],
                [],
                t0 - 5,
                t0 + 30 * HOUR + 7,
                interval,
                ["COUNT", "SUM", "MIN", "MAX", "AVG", "STDDEV"],
                False,
            )
            agg.append((sources, [{k: plain(v) for k, v in r.items()} for r in table.to_pylist()]))
        now = time.time_ns() // 1_000_000
        episodes = [
            {k: plain(v) for k, v in r.items() if k not in ("version_us", "created_us")}
            for r in s.anomalies("", "", "", 0, 0, 0, 0, now + 1, now, None, 1_000)
        ]
        return (
            agg,
            s.list_devices(HOSTILE[5], 0, 0, "", 1)[0]["readings"],
            s.device_summary("d2", 0),
            episodes,
            s.history("d1", ["temp"], t0, t0 + HOUR, None, 100).to_pylist(),
        )

    remote, local = stores
    got, want = answers(remote), answers(local)
    assert got == want
    assert got[1] == 3_000 and len(got[3]) > 0
