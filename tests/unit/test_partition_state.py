"""Partition state: resend detection and the snapshot round trip."""

import json

import numpy as np
import pytest

from iotstream.processor import PartitionState
from iotstream.processor.state import _LEN, MAGIC_V1, RECENT_BATCHES


def test_resend_window():
    s = PartitionState()
    assert not s.is_resend("d", 1, 111)
    assert s.is_resend("d", 1, 111)
    assert not s.is_resend("d", 1, 222)  # same seq, other content
    assert not s.is_resend("e", 1, 111)  # other device
    for seq in range(2, 2 + RECENT_BATCHES):
        s.is_resend("d", seq, seq)
    assert not s.is_resend("d", 1, 111)  # fell out of the window


def test_snapshot_round_trip_continues_identically():
    rng = np.random.default_rng(0)
    a = PartitionState()
    a.slots = {("d1", "temp"): 0, ("d2", "hum"): 1}
    a.is_resend("d1", 4, 99)
    slots, ts, vals = rng.integers(0, 2, 500), np.arange(500, dtype=np.int64), rng.normal(size=500)
    a.stats.update(slots[:250], ts[:250], vals[:250])
    b = PartitionState.from_bytes(a.to_bytes())
    assert b.slots == a.slots and b.is_resend("d1", 4, 99)
    later = (slots[250:], ts[250:], vals[250:])
    for x, y in zip(a.stats.update(*later), b.stats.update(*later), strict=True):
        np.testing.assert_array_equal(x, y)


def test_restored_keys_share_their_device_and_metric_strings():
    a = PartitionState()
    a.assign([(f"dev-{d}", f"m{j}") for d in range(3) for j in range(4)])
    b = PartitionState.from_bytes(a.to_bytes())
    assert b.slots == a.slots
    devices = {id(d) for d, _ in b.slots}
    metrics = {id(m) for _, m in b.slots}
    assert len(devices) == 3 and len(metrics) == 4  # one string each, not one per key


def test_a_version_1_snapshot_still_restores():
    a = PartitionState()
    a.assign([("d1", "temp"), ("d2", "hum"), ("d1", "hum")])
    a.is_resend("d2", 7, 42)
    header = json.dumps(
        {"slots": [[d, m, s] for (d, m), s in a.slots.items()], "recent": {"d2": [[7, 42]]}}
    ).encode()
    b = PartitionState.from_bytes(MAGIC_V1 + _LEN.pack(len(header)) + header + a.stats.to_bytes())
    assert b.slots == a.slots and b.is_resend("d2", 7, 42)
    assert b.to_bytes() == a.to_bytes()  # written again in the current form, the same


def test_rejects_foreign_bytes():
    with pytest.raises(ValueError, match="not a partition-state snapshot"):
        PartitionState.from_bytes(b"garbage!garbage!")
