-- Cascaded rollups: rollup_1h is fed from the rows each insert writes into rollup_1m, and rollup_1d from
-- those written into rollup_1h, instead of all three views re-reading every raw reading and building a
-- t-digest state per reading. Counts, sums and extremes combine exactly; sd and q are merged states
-- (-MergeState), which is what every read already does across rows. The 1m rows of one insert are far
-- fewer than its readings when devices send several readings a minute (measured in
-- bench/profile/store_insert.py, docs/benchmarks.md).
-- A replayed insert (same insert_deduplication_token) is dropped at `readings`, before any view runs, so no
-- level of the chain counts it twice (tests/integration/test_storage_rollups.py).
-- Rows stored before this migration stay as they are: the tables keep their columns and states.
-- The old views are dropped before the new ones exist; migrations run before the processor writes.
DROP VIEW IF EXISTS $db.rollup_1h_mv;
DROP VIEW IF EXISTS $db.rollup_1d_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.rollup_1h_mv TO $db.rollup_1h AS
SELECT m.device_id AS device_id, m.metric AS metric, toDateTime(toStartOfHour(m.bucket), 'UTC') AS bucket,
       sum(m.n) AS n, sum(m.total) AS total, min(m.lo) AS lo, max(m.hi) AS hi,
       stddevSampStableMergeState(m.sd) AS sd, quantilesTDigestMergeState(0.5, 0.95, 0.99)(m.q) AS q
FROM $db.rollup_1m AS m
GROUP BY device_id, metric, bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.rollup_1d_mv TO $db.rollup_1d AS
SELECT h.device_id AS device_id, h.metric AS metric, toDateTime(toStartOfDay(h.bucket), 'UTC') AS bucket,
       sum(h.n) AS n, sum(h.total) AS total, min(h.lo) AS lo, max(h.hi) AS hi,
       stddevSampStableMergeState(h.sd) AS sd, quantilesTDigestMergeState(0.5, 0.95, 0.99)(h.q) AS q
FROM $db.rollup_1h AS h
GROUP BY device_id, metric, bucket;
