"""Partition state: resend detection and the snapshot round trip."""

import collections
import json

import numpy as np
import pytest

from iotstream.processor import PartitionState
from iotstream.processor.state import _LEN, MAGIC_V1, MAGIC_V2, RECENT_BATCHES


def test_resend_window():
    s = PartitionState()
    assert not s.is_resend("d", 1, 111)
    assert s.is_resend("d", 1, 111)
    assert not s.is_resend("d", 1, 222)  # same seq, other content
    assert not s.is_resend("e", 1, 111)  # other device
    for seq in range(2, 2 + RECENT_BATCHES):
        s.is_resend("d", seq, seq)
    assert not s.is_resend("d", 1, 111)  # fell out of the window


def test_resend_window_answers_as_a_deque_of_the_last_pairs_does():
    """Oracle: the window as a deque of (seq, fingerprint) tuples, over random streams with many repeats
    and 64-bit values, and queries built to match the packed window across a record boundary."""
    rng = np.random.default_rng(7)
    s, oracle = PartitionState(), {}
    for _ in range(20_000):
        device = f"d{rng.integers(3)}"
        window = oracle.setdefault(device, collections.deque(maxlen=RECENT_BATCHES))
        if window and rng.random() < 0.3:  # straddles two records: one's fingerprint, the next one's seq
            i = int(rng.integers(len(window) - 1)) if len(window) > 1 else 0
            key = (window[i][1], window[min(i + 1, len(window) - 1)][0])
        else:
            small = rng.random() < 0.5  # few fingerprints: many repeats; or any 64-bit one
            fp = int(rng.integers(4)) if small else int(rng.integers(2**64, dtype=np.uint64))
            key = (int(rng.integers(200)), fp)
        expected = key in window
        if not expected:
            window.append(key)
        assert s.is_resend(device, *key) == expected, key


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


def test_reads_v2_snapshots_with_resend_windows_as_json_pairs():
    a = PartitionState()
    a.assign([("d1", "temp"), ("d2", "hum")])
    for seq in range(1, RECENT_BATCHES + 3):  # a full window: its oldest pairs are gone
        a.is_resend("d2", seq, 2**64 - seq)
    a.is_resend("d3", 9, 1)  # a device with a window and no key (its keys found no room)
    pairs = {"d2": [[seq, 2**64 - seq] for seq in range(3, RECENT_BATCHES + 3)], "d3": [[9, 1]]}
    header = json.dumps(
        {
            "device": [0, 1],
            "metric": [0, 1],
            "devices": ["d1", "d2"],
            "metrics": ["temp", "hum"],
            "recent": pairs,
        }
    ).encode()
    b = PartitionState.from_bytes(MAGIC_V2 + _LEN.pack(len(header)) + header + a.stats.to_bytes())
    assert b.slots == a.slots and b.recent == a.recent
    assert b.to_bytes() == a.to_bytes()  # written again in the current form, the same
    assert PartitionState.from_bytes(b.to_bytes()).recent == a.recent  # v3: the windows as packed records
    assert b.is_resend("d2", 3, 2**64 - 3) and not b.is_resend("d2", 2, 2**64 - 2)


def test_rejects_foreign_bytes():
    with pytest.raises(ValueError, match="not a partition-state snapshot"):
        PartitionState.from_bytes(b"garbage!garbage!")
