"""Device registry over real gRPC: latest value by reading time whatever the arrival order, first/last seen,
online/offline from a short silence timeout, prefix filter and paging."""

import time
import uuid

import grpc
import numpy as np
import pyarrow as pa
import pytest
from conftest import ServerThread
from waiting import poll

from iotstream.node import Config
from iotstream.v1 import query_pb2 as qpb

SILENCE_MS = 2_000


def now_ms():
    return time.time_ns() // 1_000_000


def readings(device, rows) -> pa.Table:
    """rows: (metric, time_ms, value)"""
    return pa.table(
        {
            "device_id": [device] * len(rows),
            "metric": [r[0] for r in rows],
            "time": pa.array([r[1] for r in rows], pa.timestamp("ms", tz="UTC")),
            "value": [float(r[2]) for r in rows],
        }
    )


@pytest.fixture
def quick(chdb_dir):
    """A server whose devices go offline after 2 s of silence."""
    srv = ServerThread(
        Config(port=0, data_dir=chdb_dir, database="t_" + uuid.uuid4().hex[:12], silence_ms=SILENCE_MS)
    )
    yield srv
    srv.stop()


def test_latest_is_by_reading_time_not_arrival(server):
    t0 = now_ms() - 2 * 3_600_000  # readings two hours old: the device is still online, it just uploaded
    store = server.server.store
    store.insert_readings(readings("dev-a", [("temp", t0 + 10_000, 5.0), ("hum", t0, 1.0)]), token="a1")
    store.insert_readings(
        readings("dev-a", [("temp", t0 + 5_000, 9.0), ("hum", t0 + 20_000, 2.0)]), token="a2"
    )
    store.insert_readings(
        readings("dev-a", [("temp", t0 + 5_000, 9.0), ("hum", t0 + 20_000, 2.0)]), token="a2"
    )
    d = server.query.GetDevice(qpb.GetDeviceRequest(device_id="dev-a"), timeout=10)
    assert [(m.metric, m.time_ms, m.value) for m in d.latest] == [
        ("hum", t0 + 20_000, 2.0),
        ("temp", t0 + 10_000, 5.0),
    ]
    assert (d.first_seen_ms, d.last_seen_ms, d.readings) == (t0, t0 + 20_000, 4)  # the replay counted once
    assert d.status == qpb.ONLINE and abs(d.last_stored_ms - now_ms()) < 60_000


def test_silence_turns_a_device_offline(quick):
    store = quick.server.store
    store.insert_readings(readings("quiet-1", [("temp", now_ms(), 1.0)]))
    poll(
        lambda: (
            quick.query.GetDevice(qpb.GetDeviceRequest(device_id="quiet-1"), timeout=10).status == qpb.OFFLINE
        ),
        10,
        "quiet-1 to go offline",
    )
    store.insert_readings(
        readings("loud-1", [("temp", now_ms() - 3_600_000, 1.0)])
    )  # an old reading, stored now

    def listed(status):
        reply = quick.query.ListDevices(qpb.ListDevicesRequest(status=status), timeout=10)
        return {d.device_id: d.status for d in reply.devices}

    assert listed(qpb.ONLINE) == {"loud-1": qpb.ONLINE}
    assert listed(qpb.OFFLINE) == {"quiet-1": qpb.OFFLINE}
    assert listed(qpb.DEVICE_STATUS_UNSPECIFIED) == {"loud-1": qpb.ONLINE, "quiet-1": qpb.OFFLINE}
    stats = quick.query.GetStats(qpb.GetStatsRequest(), timeout=10)
    assert (stats.devices, stats.devices_online) == (2, 1)


def test_list_devices_prefix_and_pages(server):
    rng = np.random.default_rng(5)
    names = [f"site{s}-{i:03d}" for s in (1, 2) for i in range(25)] + ["site10-000", "site'1-x", "site1"]
    t = now_ms() - 60_000
    shuffled = [str(n) for n in rng.permutation(names)]
    server.server.store.insert_readings(
        pa.table(
            {
                "device_id": shuffled,
                "metric": ["temp"] * len(names),
                "time": pa.array([t] * len(names), pa.timestamp("ms", tz="UTC")),
                "value": [1.0] * len(names),
            }
        )
    )
    got, token, pages = [], "", 0
    while True:
        page = server.query.ListDevices(
            qpb.ListDevicesRequest(id_prefix="site1", page_size=7, page_token=token), timeout=10
        )
        got += [d.device_id for d in page.devices]
        assert all(d.readings == 1 and d.first_seen_ms == d.last_seen_ms == t for d in page.devices)
        token, pages = page.next_page_token, pages + 1
        if not token:
            break
    assert got == sorted(n for n in names if n.startswith("site1"))  # each once, in order
    assert pages == -(-len(got) // 7)


def test_unknown_device_is_not_found(server):
    with pytest.raises(grpc.RpcError) as err:
        server.query.GetDevice(qpb.GetDeviceRequest(device_id="never-seen"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "never-seen" in err.value.details()
