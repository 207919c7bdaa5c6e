-- Readings the detectors flagged, one row per (reading, detector).
CREATE TABLE IF NOT EXISTS $db.anomalies
(
    device_id String,
    metric LowCardinality(String),
    time DateTime64(3, 'UTC'),
    value Float64,
    kind LowCardinality(String),
    score Float64,
    zscore Float64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (time, device_id, metric)
TTL toDateTime(time) + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;
