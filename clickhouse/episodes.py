"""Anomaly episodes in SQL: derive them from flagged readings, list them, acknowledge them, follow changes.

An episode is a run of flagged readings of one (device, metric, kind) whose gaps are at most the quiet
period Q; it is open while the server's clock is before `closes` = updated + Q (its newest flagged reading's
time plus Q). `recompute` rebuilds, for each key that got new flagged readings, every episode
from the one the earliest new reading can join onwards, and writes a row only for episodes that changed:
a new `version` of it, or a `deleted` tombstone when a late reading merged it into an earlier one. Each row
keeps `created`, the version of the episode's first row, so a watcher can tell "opened" from "updated".
"""

from __future__ import annotations

import pyarrow as pa

from .tables import Tables

_MS = "fromUnixTimestamp64Milli({%s:Int64}, 'UTC')"
_US = "fromUnixTimestamp64Micro({%s:Int64}, 'UTC')"

# Severity from the peak score (calibrated per key, docs/detection.md "What a score means": 0.5 = evidence
# the key shows once in 10**4 readings, 0.6 once in 10**6, 0.7 once in ~2e9); values match the proto's
# Severity enum.
SEVERITY = "multiIf(peak_score >= 0.7, 3, peak_score >= 0.6, 2, 1)"

RECOMPUTE = """
INSERT INTO $db.anomaly_episodes (device_id, metric, kind, detectors, opened, updated, closes, readings,
    peak_time, peak_value, peak_score, peak_zscore, created, version, deleted)
WITH
    keys AS (
        SELECT tupleElement(k, 1) AS device_id, tupleElement(k, 2) AS metric, tupleElement(k, 3) AS kind,
               fromUnixTimestamp64Milli(tupleElement(k, 4), 'UTC') AS since
        FROM (SELECT arrayJoin(arrayZip({kd:Array(String)}, {km:Array(String)}, {kk:Array(String)},
                                        {kt:Array(Int64)})) AS k)
    ),
    current AS (
        SELECT * FROM $db.anomaly_episodes FINAL
        WHERE (device_id, metric, kind) IN (SELECT device_id, metric, kind FROM keys)
    ),
    -- Per key: the first episode the earliest new reading can join (ends within Q before it), else that
    -- reading.
    starts AS (
        SELECT k.device_id AS device_id, k.metric AS metric, k.kind AS kind,
               least(any(k.since), coalesce(minIfOrNull(c.opened, addMilliseconds(c.updated, {q:Int64}) >=
               k.since),
                                            any(k.since))) AS start
        FROM keys AS k LEFT JOIN current AS c
            ON c.device_id = k.device_id AND c.metric = k.metric AND c.kind = k.kind
        GROUP BY k.device_id, k.metric, k.kind
    ),
    events AS (
        SELECT a.device_id AS device_id, a.metric AS metric, a.kind AS kind, a.detectors AS detectors,
               a.time AS time, a.value AS value, a.score AS score, a.zscore AS zscore
        FROM $db.anomalies AS a
        INNER JOIN starts AS s ON a.device_id = s.device_id AND a.metric = s.metric AND a.kind = s.kind
        WHERE a.time >= (SELECT min(start) FROM starts) AND a.time >= s.start
    ),
    gaps AS (
        SELECT *, toUInt8(toUnixTimestamp64Milli(time) - lagInFrame(toUnixTimestamp64Milli(time), 1,
        toInt64(0))
                          OVER (PARTITION BY device_id, metric, kind ORDER BY time
                                ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) > {q:Int64}) AS gap
        FROM events
    ),
    numbered AS (
        SELECT *, sum(gap) OVER (PARTITION BY device_id, metric, kind ORDER BY time
                                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS episode
        FROM gaps
    ),
    fresh AS (
        SELECT device_id, metric, kind, arraySort(groupUniqArrayArray(detectors)) AS detectors, min(time) AS
        opened,
               max(time) AS updated, toUInt32(count()) AS readings,
               argMax(time, (score, time)) AS peak_time, argMax(value, (score, time)) AS peak_value,
               max(score) AS peak_score, argMax(zscore, (score, time)) AS peak_zscore, 1 AS hit
        FROM numbered
        GROUP BY device_id, metric, kind, episode
    ),
    old AS (
        SELECT c.device_id AS device_id, c.metric AS metric, c.kind AS kind, c.detectors AS detectors,
               c.opened AS opened,
               c.updated AS updated, c.readings AS readings, c.peak_time AS peak_time,
               c.peak_value AS peak_value, c.peak_score AS peak_score, c.peak_zscore AS peak_zscore,
               c.created AS created, 1 AS hit
        FROM current AS c INNER JOIN starts AS s
            ON c.device_id = s.device_id AND c.metric = s.metric AND c.kind = s.kind
        WHERE c.opened >= s.start
    )
SELECT
    if(f.hit = 1, f.device_id, o.device_id), if(f.hit = 1, f.metric, o.metric), if(f.hit = 1, f.kind, o.kind),
    if(f.hit = 1, f.detectors, o.detectors), if(f.hit = 1, f.opened, o.opened),
    if(f.hit = 1, f.updated, o.updated) AS e_updated, addMilliseconds(e_updated, {q:Int64}),
    if(f.hit = 1, f.readings, o.readings), if(f.hit = 1, f.peak_time, o.peak_time),
    if(f.hit = 1, f.peak_value, o.peak_value), if(f.hit = 1, f.peak_score, o.peak_score),
    if(f.hit = 1, f.peak_zscore, o.peak_zscore),
    if(o.hit = 1, o.created, now64(6, 'UTC')), now64(6, 'UTC'), toUInt8(f.hit = 0)
FROM fresh AS f
FULL OUTER JOIN old AS o
    ON f.device_id = o.device_id AND f.metric = o.metric AND f.kind = o.kind AND f.opened = o.opened
WHERE NOT (f.hit = 1 AND o.hit = 1 AND f.updated = o.updated AND f.readings = o.readings
           AND f.peak_time = o.peak_time AND f.peak_score = o.peak_score)
SETTINGS join_use_nulls = 0
"""

# Columns of an episode as the Query service reports it; `e` is the episode row, `a` its acknowledgement.
COLUMNS = f"""e.device_id AS device_id, e.metric AS metric, e.kind AS kind, e.detectors AS detectors,
    toUnixTimestamp64Milli(e.opened) AS opened_ms, toUnixTimestamp64Milli(e.updated) AS updated_ms,
    toUnixTimestamp64Milli(e.closes) AS closes_ms, e.readings AS readings,
    toUnixTimestamp64Milli(e.peak_time) AS time_ms, e.peak_value AS value, e.peak_score AS score,
    e.peak_zscore AS zscore, {SEVERITY.replace("peak_score", "e.peak_score")} AS severity,
    toUnixTimestamp64Micro(e.version) AS version_us, toUnixTimestamp64Micro(e.created) AS created_us,
    e.deleted AS deleted,
    if(a.opened >= e.opened, toUnixTimestamp64Milli(a.at), 0) AS acked_ms,
    if(a.opened >= e.opened, a.by, '') AS acked_by"""

# An acknowledgement belongs to the episode it named, and to the episode that absorbed it if a late reading
# merged them: the newest ack whose episode start lies in [opened, updated] (ASOF on the start).
_ACKS = """(SELECT device_id, metric, kind, opened, min(acked_at) AS at, argMinMerge(acked_by) AS by
      FROM $db.anomaly_acks GROUP BY device_id, metric, kind, opened)"""
_JOIN_ACKS = f"""ASOF LEFT JOIN {_ACKS} AS a
    ON e.device_id = a.device_id AND e.metric = a.metric AND e.kind = a.kind AND e.updated >= a.opened"""


def list_sql(after: bool, acked: int) -> str:
    """Episodes newest first by (opened, device_id, metric, kind), after a keyset cursor; `acked`: 0 any,
    1 acknowledged only, 2 unacknowledged only. Without an acknowledgement filter the page is cut before
    the join, so only its rows meet the acknowledgements."""
    cursor = (
        (f"(opened, device_id, metric, kind) < ({_MS % 'at'}, {{ad:String}}, {{am:String}}, {{ak:String}})")
        if after
        else "1"
    )
    ack = {0: "1", 1: "a.opened >= e.opened", 2: "NOT (a.opened >= e.opened)"}[acked]
    order = "ORDER BY opened DESC, device_id DESC, metric DESC, kind DESC LIMIT {limit:UInt32}"
    return f"""
    SELECT {COLUMNS}
    FROM (
        SELECT * FROM $db.anomaly_episodes FINAL
        WHERE ({{d:String}} = '' OR device_id = {{d:String}})
          AND ({{m:String}} = '' OR metric = {{m:String}})
          AND ({{k:String}} = '' OR kind = {{k:String}})
          AND opened < {_MS % "end"} AND updated >= {_MS % "start"}
          AND {SEVERITY} >= {{sev:UInt8}}
          AND ({{state:UInt8}} = 0 OR ({{state:UInt8}} = 1) = (closes > {_MS % "now"}))
          AND {cursor}
        {order if acked == 0 else ""}
    ) AS e
    {_JOIN_ACKS}
    WHERE {ack}
    ORDER BY e.opened DESC, e.device_id DESC, e.metric DESC, e.kind DESC
    LIMIT {{limit:UInt32}}
    """


GET = f"""
SELECT {COLUMNS}
FROM (SELECT * FROM $db.anomaly_episodes FINAL
      WHERE device_id = {{d:String}} AND metric = {{m:String}} AND kind = {{k:String}}
        AND opened = {_MS % "o"}) AS e
{_JOIN_ACKS}
"""

ACKNOWLEDGE = f"""
INSERT INTO $db.anomaly_acks (device_id, metric, kind, opened, acked_at, acked_by)
SELECT {{d:String}}, {{m:String}}, {{k:String}}, {_MS % "o"}, min(at), argMinState({{by:String}}, at)
FROM (SELECT {_MS % "at"} AS at)
"""

# Newest version of each episode written after the cursor (version_us, key), oldest first.
CHANGES = f"""
SELECT {COLUMNS}
FROM (
    SELECT * FROM $db.anomaly_episodes
    WHERE version >= {_US % "v"} AND version <= {_US % "upto"}
    ORDER BY device_id, metric, kind, opened, version DESC
    LIMIT 1 BY device_id, metric, kind, opened
) AS e
{_JOIN_ACKS}
WHERE (e.version, e.device_id, e.metric, e.kind, e.opened) > ({_US % "v"}, {{vd:String}}, {{vm:String}},
{{vk:String}}, {_MS % "vo"})
ORDER BY e.version, e.device_id, e.metric, e.kind, e.opened
LIMIT {{limit:UInt32}}
"""

# Episodes whose current version a watcher at cursor (v, key) has seen (so it saw them open), whose quiet
# period ended by `now`, after the closing cursor (closes_ms, key), oldest first.
CLOSURES = f"""
SELECT {COLUMNS}
FROM (
    SELECT * FROM $db.anomaly_episodes FINAL
    WHERE closes >= {_MS % "c"} AND closes <= {_MS % "now"}
) AS e
{_JOIN_ACKS}
WHERE (e.version, e.device_id, e.metric, e.kind, e.opened) <= ({_US % "v"}, {{vd:String}}, {{vm:String}},
{{vk:String}}, {_MS % "vo"})
  AND (e.closes, e.device_id, e.metric, e.kind, e.opened) > ({_MS % "c"}, {{cd:String}}, {{cm:String}},
  {{ck:String}}, {_MS % "co"})
ORDER BY e.closes, e.device_id, e.metric, e.kind, e.opened
LIMIT {{limit:UInt32}}
"""


EPISODE_KEYS_PER_STATEMENT = 2_000


class Episodes(Tables):
    """Episodes derived from flagged readings, listed, acknowledged and followed (the SQL above)."""

    def update_episodes(self, keys: list[tuple[str, str, str, int]]) -> None:
        """Recompute the episodes of these (device_id, metric, kind, earliest new flagged reading ms)."""
        with self._episode_lock:
            for i in range(0, len(keys), EPISODE_KEYS_PER_STATEMENT):
                chunk = keys[i : i + EPISODE_KEYS_PER_STATEMENT]
                self._command(
                    RECOMPUTE,
                    {
                        "kd": [k[0] for k in chunk],
                        "km": [k[1] for k in chunk],
                        "kk": [k[2] for k in chunk],
                        "kt": [int(k[3]) for k in chunk],
                        "q": int(self.config.episode_quiet_ms),
                    },
                )
        if self.on_episodes is not None:
            self.on_episodes()

    def rebuild_episodes(self) -> None:
        """Episodes of every flagged reading stored (after the migration that adds them)."""
        rows = self._query(
            "SELECT device_id, metric, kind, toUnixTimestamp64Milli(min(time)) AS t "
            "FROM $db.anomalies GROUP BY device_id, metric, kind"
        ).to_pylist()
        self.update_episodes([(r["device_id"], r["metric"], r["kind"], r["t"]) for r in rows])

    def anomalies(
        self,
        device_id: str,
        metric: str,
        kind: str,
        min_severity: int,
        state: int,
        acked: int,
        start_ms: int,
        end_ms: int,
        now_ms: int,
        after: tuple | None,
        limit: int,
    ) -> list:
        """Episodes newest first by (opened, device_id, metric, kind) descending; `after` is the previous
        page's last (opened_ms, device_id, metric, kind), exclusive. state: 0 any, 1 open, 2 closed;
        acked: 0 any, 1 acknowledged, 2 not."""
        at, ad, am, ak = after or (0, "", "", "")
        return self._query(
            list_sql(after is not None, acked),
            {
                "d": device_id,
                "m": metric,
                "k": kind,
                "sev": min_severity,
                "state": state,
                "start": start_ms,
                "end": end_ms,
                "now": now_ms,
                "at": at,
                "ad": ad,
                "am": am,
                "ak": ak,
                "limit": limit,
            },
        ).to_pylist()

    def anomaly(self, device_id: str, metric: str, kind: str, opened_ms: int) -> dict | None:
        rows = self._query(GET, {"d": device_id, "m": metric, "k": kind, "o": opened_ms}).to_pylist()
        return rows[0] if rows else None

    def acknowledge(
        self, device_id: str, metric: str, kind: str, opened_ms: int, by: str, at_ms: int
    ) -> dict | None:
        """Acknowledge an episode (the first acknowledgement stands); None if there is no such episode."""
        if self.anomaly(device_id, metric, kind, opened_ms) is None:
            return None
        self._command(
            ACKNOWLEDGE, {"d": device_id, "m": metric, "k": kind, "o": opened_ms, "by": by, "at": at_ms}
        )
        return self.anomaly(device_id, metric, kind, opened_ms)

    def episode_version(self) -> int:
        """Newest episode version (Unix microseconds), 0 if none: where a new watcher starts."""
        return (
            self._query("SELECT toUnixTimestamp64Micro(max(version)) AS v FROM $db.anomaly_episodes")
            .column("v")[0]
            .as_py()
            or 0
        )

    def episode_changes(self, after: tuple, now_ms: int, limit: int) -> list:
        """Newest version of each episode written after `after` = (version_us, device_id, metric, kind,
        opened_ms), oldest first, at most `limit`; versions younger than watch_settle_ms wait."""
        v, vd, vm, vk, vo = after
        upto = (now_ms - int(self.config.watch_settle_ms)) * 1000 + 999
        return self._query(
            CHANGES, {"v": v, "vd": vd, "vm": vm, "vk": vk, "vo": vo, "upto": upto, "limit": limit}
        ).to_pylist()

    def episode_closures(self, seen: tuple, after: tuple, now_ms: int, limit: int) -> list:
        """Episodes whose current version is at or before `seen` = (version_us, device_id, metric, kind,
        opened_ms) and whose closes time is after `after` = (closes_ms, device_id, metric, kind, opened_ms)
        and not after now_ms, by closes time."""
        v, vd, vm, vk, vo = seen
        c, cd, cm, ck, co = after
        return self._query(
            CLOSURES,
            {
                "v": v,
                "vd": vd,
                "vm": vm,
                "vk": vk,
                "vo": vo,
                "c": c,
                "cd": cd,
                "cm": cm,
                "ck": ck,
                "co": co,
                "now": now_ms,
                "limit": limit,
            },
        ).to_pylist()


def episode_keys(data: pa.Table) -> list[tuple[str, str, str, int]]:
    """Distinct (device_id, metric, kind) of flagged readings, each with its earliest reading time in ms."""
    cols = {}
    for name in ("device_id", "metric", "kind"):
        col = data.column(name)
        cols[name] = col.cast(pa.string()) if pa.types.is_dictionary(col.type) else col
    cols["t"] = data.column("time").cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())
    grouped = pa.table(cols).group_by(["device_id", "metric", "kind"]).aggregate([("t", "min")])
    return list(
        zip(*(grouped.column(n).to_pylist() for n in ("device_id", "metric", "kind", "t_min")), strict=True)
    )
