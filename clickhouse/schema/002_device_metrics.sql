-- Latest value and last-seen time per (device, metric), kept by a materialized view so that device
-- lookups never scan the readings. "Latest" is by reading time, not by arrival (argMax on time).
CREATE TABLE IF NOT EXISTS $db.device_metrics
(
    device_id String,
    metric LowCardinality(String),
    last_time SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    last_value AggregateFunction(argMax, Float64, DateTime64(3, 'UTC')),
    readings SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
ORDER BY (device_id, metric)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.device_metrics_mv TO $db.device_metrics AS
SELECT device_id, metric, max(time) AS last_time, argMaxState(value, time) AS last_value,
       count() AS readings
FROM $db.readings
GROUP BY device_id, metric;
