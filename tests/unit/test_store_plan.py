"""Which tables answer which part of an Aggregate's range (clickhouse.rollups.plan)."""

from hypothesis import given
from hypothesis import strategies as st

from iotstream.clickhouse.rollups import FUNCS, RAW, ROLLUPS, aggregate_sql, plan

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
WIDTH = dict(ROLLUPS)
T0 = 1_700_000_000_000 // DAY * DAY  # a UTC midnight


def test_aligned_range_reads_one_rollup():
    assert plan(T0, T0 + 3 * DAY, DAY) == [("rollup_1d", T0, T0 + 3 * DAY)]
    assert plan(T0 + HOUR, T0 + 5 * HOUR, 2 * HOUR) == [("rollup_1h", T0 + HOUR, T0 + 5 * HOUR)]
    assert plan(T0 + MIN, T0 + 3 * MIN, 5 * MIN) == [("rollup_1m", T0 + MIN, T0 + 3 * MIN)]


def test_edges_come_from_finer_tables():
    start, end = T0 - HOUR - MIN - 5, T0 + DAY + 2 * MIN + 7
    assert plan(start, end, DAY) == [
        (RAW, start, T0 - HOUR - MIN),
        ("rollup_1m", T0 - HOUR - MIN, T0 - HOUR),
        ("rollup_1h", T0 - HOUR, T0),
        ("rollup_1d", T0, T0 + DAY),
        ("rollup_1m", T0 + DAY, T0 + DAY + 2 * MIN),
        (RAW, T0 + DAY + 2 * MIN, end),
    ]


def test_interval_that_no_rollup_divides_reads_raw():
    assert plan(T0, T0 + DAY, 90_000) == [(RAW, T0, T0 + DAY)]
    assert plan(T0, T0 + DAY, 1_000) == [(RAW, T0, T0 + DAY)]


@given(
    st.integers(0, 4 * 10**12),
    st.integers(1, 40 * DAY),
    st.sampled_from([1_000, 90_000, MIN, 5 * MIN, HOUR, 6 * HOUR, DAY, 7 * DAY]),
)
def test_pieces_tile_the_range_with_whole_rows(start, length, interval):
    end = start + length
    pieces = plan(start, end, interval)
    assert pieces[0][1] == start and pieces[-1][2] == end
    assert all(a[2] == b[1] for a, b in zip(pieces, pieces[1:], strict=False))  # contiguous, no overlap
    for table, lo, hi in pieces:
        assert lo < hi
        if table != RAW:
            width = WIDTH[table]
            assert interval % width == 0 and lo % width == 0 and hi % width == 0
    # Never more than one piece per table on each side of the coarsest one.
    assert len(pieces) <= 2 * len(ROLLUPS) + 1


def test_sql_names_only_known_tables_and_parameters():
    pieces = plan(T0 - 5, T0 + DAY + 5, DAY)
    sql, params = aggregate_sql(pieces, list(FUNCS), merge_devices=True, by_device=True, by_metric=False)
    assert set(params) == {f"{b}{i}" for i in range(len(pieces)) for b in ("lo", "hi")}
    assert "{devices:Array(String)}" in sql and "{metrics:" not in sql
    assert sql.count("UNION ALL") == len({t for t, _, _ in pieces}) - 1  # one branch per table
