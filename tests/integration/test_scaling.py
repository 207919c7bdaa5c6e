"""The scaling check (bench/scaling.py) in small: processors as separate OS processes in one group over 12
partitions, under load; the second joins, is killed with SIGKILL mid-stream and rejoins. Every acked
reading is stored exactly once, across the members' own chDB folders (the oracle is simulate's ack count
and its unique (device, metric, time) readings)."""

from __future__ import annotations

from iotstream.bench import scaling

DEVICES, READINGS = 24, 8000


def test_kill_9_of_a_member_mid_stream_stores_every_acked_reading_once(kafka_broker):
    args = scaling.parse(
        [
            "--kafka",
            kafka_broker.bootstrap,
            "--processors",
            "2",
            "--devices",
            str(DEVICES),
            "--readings",
            str(READINGS),
            "--batch",
            "200",
            "--rate",
            "16000",
            "--phase",
            "3",
            "--settle",
            "0",
            "--event-timeout",
            "60",
            "--drain-timeout",
            "90",
        ]
    )
    result = scaling.run(args)
    ex = result["exactness"]
    assert result["load"]["acked"] == result["load"]["sent"] == DEVICES * READINGS
    assert ex["stored_distinct"] == DEVICES * READINGS  # none lost, nothing else
    assert ex["doubled_within_a_store"] == 0  # a replay into the same folder is deduplicated by its token
    assert ex["copies_between_survivors"] == 0  # clean partition moves hand over without overlap
    assert ex["exact"]
    assert set(ex["rows_per_store"]) == {"p1", "p2"} and all(ex["rows_per_store"].values())
    assert [p["event"] for p in result["rebalance_pauses"]] == ["p2 joins", "p2 killed", "p2 rejoins"]
