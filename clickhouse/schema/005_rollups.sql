-- Rollups at 1 minute, 1 hour and 1 day, kept by materialized views from every insert into readings.
-- Buckets come from the reading's own time, so a late reading lands in its bucket; rows of one bucket from
-- different inserts are combined by the AggregatingMergeTree merges and, until then, by the -Merge in reads.
-- avg = total / n; sd and q are mergeable states (stddev, and the 0.5/0.95/0.99 quantiles).
-- ZSTD(3) on the states: halves them against the default LZ4 on sensor-resolution data.
-- The dedup window matters here too: a replayed insert (same token) must not count twice in a rollup.
CREATE TABLE IF NOT EXISTS $db.rollup_1m
(
    device_id LowCardinality(String),
    metric LowCardinality(String),
    bucket DateTime('UTC') CODEC(DoubleDelta, ZSTD(1)),
    n SimpleAggregateFunction(sum, UInt64) CODEC(T64, ZSTD(1)),
    total SimpleAggregateFunction(sum, Float64) CODEC(ZSTD(3)),
    lo SimpleAggregateFunction(min, Float64) CODEC(ZSTD(3)),
    hi SimpleAggregateFunction(max, Float64) CODEC(ZSTD(3)),
    sd AggregateFunction(stddevSampStable, Float64) CODEC(ZSTD(3)),
    q AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float64) CODEC(ZSTD(3))
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(bucket)
ORDER BY (device_id, metric, bucket)
TTL bucket + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS $db.rollup_1h AS $db.rollup_1m
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (device_id, metric, bucket)
TTL bucket + INTERVAL ${long_retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS $db.rollup_1d AS $db.rollup_1m
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (device_id, metric, bucket)
TTL bucket + INTERVAL ${long_retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.rollup_1m_mv TO $db.rollup_1m AS
SELECT device_id, metric, toDateTime(toStartOfMinute(time), 'UTC') AS bucket,
       count() AS n, sum(value) AS total, min(value) AS lo, max(value) AS hi,
       stddevSampStableState(value) AS sd, quantilesTDigestState(0.5, 0.95, 0.99)(value) AS q
FROM $db.readings
GROUP BY device_id, metric, bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.rollup_1h_mv TO $db.rollup_1h AS
SELECT device_id, metric, toDateTime(toStartOfHour(time), 'UTC') AS bucket,
       count() AS n, sum(value) AS total, min(value) AS lo, max(value) AS hi,
       stddevSampStableState(value) AS sd, quantilesTDigestState(0.5, 0.95, 0.99)(value) AS q
FROM $db.readings
GROUP BY device_id, metric, bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.rollup_1d_mv TO $db.rollup_1d AS
SELECT device_id, metric, toDateTime(toStartOfDay(time), 'UTC') AS bucket,
       count() AS n, sum(value) AS total, min(value) AS lo, max(value) AS hi,
       stddevSampStableState(value) AS sd, quantilesTDigestState(0.5, 0.95, 0.99)(value) AS q
FROM $db.readings
GROUP BY device_id, metric, bucket;

-- Readings stored before this migration, so that rollups and raw agree from the start.
INSERT INTO $db.rollup_1m
SELECT device_id, metric, toDateTime(toStartOfMinute(time), 'UTC') AS bucket, count(), sum(value), min(value),
       max(value), stddevSampStableState(value), quantilesTDigestState(0.5, 0.95, 0.99)(value)
FROM $db.readings GROUP BY device_id, metric, bucket;

INSERT INTO $db.rollup_1h
SELECT device_id, metric, toDateTime(toStartOfHour(time), 'UTC') AS bucket, count(), sum(value), min(value),
       max(value), stddevSampStableState(value), quantilesTDigestState(0.5, 0.95, 0.99)(value)
FROM $db.readings GROUP BY device_id, metric, bucket;

INSERT INTO $db.rollup_1d
SELECT device_id, metric, toDateTime(toStartOfDay(time), 'UTC') AS bucket, count(), sum(value), min(value),
       max(value), stddevSampStableState(value), quantilesTDigestState(0.5, 0.95, 0.99)(value)
FROM $db.readings GROUP BY device_id, metric, bucket;
