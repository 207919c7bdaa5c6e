"""Pure parts of the device client and of configuration push: batch layout, rejection mapping, the disk
buffer across reopenings, and when a configuration is due."""

from __future__ import annotations

import asyncio

from iotstream.auth.device_config import ConfigHub
from iotstream.client.device import Buffer, Columns, rejected_readings
from iotstream.v1 import ingest_pb2 as pb


def test_columns_seal_into_one_reading_batch():
    c = Columns()
    for metric, value, t in (("temp", 1.0, 1000), ("hum", 2.0, 1010), ("temp", 3.0, 990)):
        c.add(metric, value, t)
    b = pb.ReadingBatch.FromString(c.seal("d-1", 42))
    assert (b.device_id, b.seq, b.base_time_ms) == ("d-1", 42, 1000)
    assert list(b.time_offset_ms) == [0, 10, -10] and list(b.metric_names) == ["temp", "hum"]
    assert list(b.metric_index) == [0, 1, 0] and list(b.values) == [1.0, 2.0, 3.0]


def test_rejections_map_back_to_their_readings():
    c = Columns()
    c.add("temp", 1.0, 5000)
    c.add("hum", float("nan"), 5001)
    ack = pb.Ack(
        seq=1, accepted=1, rejected=[pb.Rejection(index=1, reason=pb.NON_FINITE_VALUE, detail="nan")]
    )
    [r] = rejected_readings(c.seal("d", 1), ack)
    assert (r.metric, r.time_ms, r.reason, r.detail) == ("hum", 5001, "NON_FINITE_VALUE", "nan")


def test_disk_buffer_keeps_unacked_batches_and_the_applied_version(tmp_path):
    path = str(tmp_path / "b.sqlite")
    b = Buffer(path)
    for seq in (5, 6, 7):
        b.add(seq, bytes([seq]), seq * 10)
    b.remove(6)
    b.set_applied(3)
    b.close()
    again = Buffer(path)
    assert list(again.batches.items()) == [(5, (b"\x05", 50)), (7, (b"\x07", 70))]
    assert again.applied == 3 and again.last_seq() == 7
    again.close()


class Configs:
    """DeviceConfigs' shape in memory: the hub's rules are under test here, not the SQL."""

    def __init__(self):
        self.rows, self.reports = {}, []

    def set(self, device, interval, metrics, settings, now_ms):
        version = self.rows.get(device, {"version": 0})["version"] + 1
        self.rows[device] = {
            "device_id": device,
            "version": version,
            "sample_interval_ms": interval,
            "metrics": metrics,
            "settings": settings,
            "set_ms": now_ms,
        }
        return self.rows[device]

    def report(self, device, version, now_ms):
        self.reports.append((device, version))


def test_hub_sends_a_config_while_due_and_again_to_a_device_that_fell_behind():
    async def scenario():
        hub = ConfigHub(Configs())
        sent = []
        stop = hub.subscribe("d", sent.append)
        assert sent == []  # nothing configured yet
        await hub.set("d", pb.DeviceConfig(sample_interval_ms=5))
        await hub.set("other", pb.DeviceConfig(sample_interval_ms=9))
        assert [c.version for c in sent] == [1]  # only its own device's
        await hub.report("d", 1)
        hub.subscribe("d", lambda c: sent.append(c))  # a second stream, after the report: not sent again
        assert len(sent) == 1
        await hub.report("d", 1)  # a repeated report is free
        assert hub.configs.reports == [("d", 1)]
        await hub.set("d", pb.DeviceConfig(sample_interval_ms=6))  # both open streams get version 2
        assert [c.version for c in sent] == [1, 2, 2]
        await hub.report("d", 2)
        stop()
        await hub.report("d", 1)  # reflashed: the newest is due again, on the stream still open
        assert [c.version for c in sent] == [1, 2, 2, 2]

    asyncio.run(scenario())
