"""Aggregates over time buckets: which table answers which part of a range, and the SQL that merges them.

A request's range is cut into pieces, each read from the coarsest rollup whose rows fit in it whole and
whose width divides the bucket interval; what is left at the edges comes from finer rollups and, at last,
from raw readings. An aligned range is read from one rollup alone. Every piece yields mergeable states per
(device, metric, bucket), so a bucket that spans pieces is combined exactly as one scan would (quantiles
are t-digest estimates either way).
"""

from __future__ import annotations

ROLLUPS = (("rollup_1m", 60_000), ("rollup_1h", 3_600_000), ("rollup_1d", 86_400_000))  # finest first
RAW = "readings"
QUANTILES = "0.5, 0.95, 0.99"
FUNCS = ("MIN", "MAX", "AVG", "SUM", "COUNT", "STDDEV", "P50", "P95", "P99")

# Final value of each function, over the merged states of the pieces.
MERGED = {
    "MIN": "min(lo)",
    "MAX": "max(hi)",
    "AVG": "sum(total) / sum(n)",
    "SUM": "sum(total)",
    "COUNT": "sum(n)",
    "STDDEV": "if(sum(n) < 2, nan, stddevSampStableMerge(sd))",
    "P50": f"quantilesTDigestMerge({QUANTILES})(q)[1]",
    "P95": f"quantilesTDigestMerge({QUANTILES})(q)[2]",
    "P99": f"quantilesTDigestMerge({QUANTILES})(q)[3]",
}
# The same over raw readings in one pass, when no rollup is involved.
DIRECT = {
    "MIN": "min(value)",
    "MAX": "max(value)",
    "AVG": "avg(value)",
    "SUM": "sum(value)",
    "COUNT": "count()",
    "STDDEV": "if(count() < 2, nan, stddevSampStable(value))",
    "P50": f"quantilesTDigest({QUANTILES})(value)[1]",
    "P95": f"quantilesTDigest({QUANTILES})(value)[2]",
    "P99": f"quantilesTDigest({QUANTILES})(value)[3]",
}
# State columns: as stored in a rollup, and as computed from raw readings.
STATES = {
    "n": "count()",
    "total": "sum(value)",
    "lo": "min(value)",
    "hi": "max(value)",
    "sd": "stddevSampStableState(value)",
    "q": f"quantilesTDigestState({QUANTILES})(value)",
}
# The same states combined over rows of a rollup (devices), still mergeable.
ROLLUP_MERGE = {
    "n": "sum(n)",
    "total": "sum(total)",
    "lo": "min(lo)",
    "hi": "max(hi)",
    "sd": "stddevSampStableMergeState(sd)",
    "q": f"quantilesTDigestMergeState({QUANTILES})(q)",
}
NEEDS = {
    "MIN": "lo",
    "MAX": "hi",
    "AVG": "total",
    "SUM": "total",
    "STDDEV": "sd",
    "P50": "q",
    "P95": "q",
    "P99": "q",
}


def plan(start_ms: int, end_ms: int, interval_ms: int) -> list[tuple[str, int, int]]:
    """[start_ms, end_ms) as consecutive (table, lo_ms, hi_ms) pieces, coarsest rollup in the middle."""
    levels = [r for r in ROLLUPS if interval_ms % r[1] == 0]
    return _split(start_ms, end_ms, levels)


def _split(lo: int, hi: int, levels: list) -> list[tuple[str, int, int]]:
    if lo >= hi:
        return []
    if not levels:
        return [(RAW, lo, hi)]
    table, width = levels[-1]
    first, last = -(-lo // width) * width, hi // width * width  # whole rollup rows inside [lo, hi)
    if first >= last:
        return _split(lo, hi, levels[:-1])
    return _split(lo, first, levels[:-1]) + [(table, first, last)] + _split(last, hi, levels[:-1])


def aggregate_sql(
    pieces: list[tuple[str, int, int]],
    funcs: list[str],
    merge_devices: bool,
    by_device: bool,
    by_metric: bool,
) -> tuple[str, dict]:
    """SQL (with `$db` left for the store) and the piece bounds as parameters. Every fragment comes from
    the tables above; user values travel as {devices}, {metrics}, {iv} parameters."""
    dev = "''" if merge_devices else "device_id"
    where = []
    if by_device:
        where.append("device_id IN {devices:Array(String)}")
    if by_metric:
        where.append("metric IN {metrics:Array(String)}")
    params: dict[str, object] = {}
    if all(table == RAW for table, _, _ in pieces):
        # One raw scan: plain aggregates, no states to build and merge.
        lo, hi = pieces[0][1], pieces[-1][2]
        params.update(lo0=lo, hi0=hi)
        cols = ", ".join(f"{DIRECT[f]} AS {f.lower()}" for f in funcs)
        filters = " AND ".join([*where, _RAW_RANGE.format(i=0)])
        return (
            f"SELECT {dev} AS dev, metric, {_RAW_BUCKET} AS bucket_ms, {cols} FROM $db.readings "
            f"WHERE {filters} GROUP BY dev, metric, bucket_ms ORDER BY dev, metric, bucket_ms",
            params,
        )

    states = ["n", *dict.fromkeys(NEEDS[f] for f in funcs if f in NEEDS)]
    branches = []
    # One branch per table (the pieces of a table, at most two, OR-ed): fewer branches, less overhead.
    by_table: dict[str, list[int]] = {}
    for i, (table, lo, hi) in enumerate(pieces):
        params[f"lo{i}"], params[f"hi{i}"] = lo, hi
        by_table.setdefault(table, []).append(i)
    for table, idx in by_table.items():
        if table == RAW:
            ranges = " OR ".join(f"({_RAW_RANGE.format(i=i)})" for i in idx)
            cols = ", ".join(f"{STATES[s]} AS {s}" for s in states)
            filters = " AND ".join([*where, f"({ranges})"])
            branches.append(
                f"SELECT {dev} AS dev, metric, {_RAW_BUCKET} AS bucket_ms, {cols} FROM $db.readings "
                f"WHERE {filters} GROUP BY dev, metric, bucket_ms"
            )
            continue
        ranges = " OR ".join(f"({_ROLLUP_RANGE.format(i=i)})" for i in idx)
        filters = " AND ".join([*where, f"({ranges})"])
        if merge_devices:
            # Grouped by (metric, bucket) with the rollup's own sums/min/max, which is what the tables'
            # `fleet` projection holds: ClickHouse then reads it instead of every device's rows.
            cols = ", ".join(f"{ROLLUP_MERGE[s]} AS {s}" for s in states)
            branches.append(
                f"SELECT '' AS dev, metric, {_ROLLUP_BUCKET} AS bucket_ms, {cols} "
                f"FROM $db.{table} WHERE {filters} GROUP BY metric, bucket"
            )
        else:
            branches.append(
                f"SELECT {dev} AS dev, metric, {_ROLLUP_BUCKET} AS bucket_ms, {', '.join(states)} "
                f"FROM $db.{table} WHERE {filters}"
            )
    cols = ", ".join(f"{MERGED[f]} AS {f.lower()}" for f in funcs)
    union = "\n    UNION ALL\n    ".join(branches)
    return (
        f"SELECT dev, metric, bucket_ms, {cols} FROM (\n    {union}\n) "
        f"GROUP BY dev, metric, bucket_ms ORDER BY dev, metric, bucket_ms",
        params,
    )


_RAW_BUCKET = "intDiv(toUnixTimestamp64Milli(time), {iv:Int64}) * {iv:Int64}"
_ROLLUP_BUCKET = "intDiv(toInt64(toUnixTimestamp(bucket)) * 1000, {iv:Int64}) * {iv:Int64}"
_RAW_RANGE = (
    "time >= fromUnixTimestamp64Milli({{lo{i}:Int64}}, 'UTC') "
    "AND time < fromUnixTimestamp64Milli({{hi{i}:Int64}}, 'UTC')"
)
_ROLLUP_RANGE = (
    "bucket >= toDateTime(intDiv({{lo{i}:Int64}}, 1000), 'UTC') "
    "AND bucket < toDateTime(intDiv({{hi{i}:Int64}}, 1000), 'UTC')"
)
