-- Raw readings. Sorted by (device, metric, time) so one series is one contiguous run:
-- DoubleDelta turns regular timestamps into ~0 bits, Gorilla XORs neighbouring values.
-- The dedup window makes a replayed insert (same insert_deduplication_token) a no-op.
CREATE TABLE IF NOT EXISTS $db.readings
(
    device_id String CODEC(ZSTD(1)),
    metric LowCardinality(String),
    time DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    value Float64 CODEC(Gorilla, ZSTD(1))
)
ENGINE = MergeTree
PARTITION BY toDate(time)
ORDER BY (device_id, metric, time)
TTL toDateTime(time) + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;
