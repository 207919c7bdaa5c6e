-- Anomaly episodes: flagged readings of one (device, metric, kind) less than a quiet period apart
-- (StoreConfig.episode_quiet_ms) form one episode, closed once the quiet period has passed after its newest
-- flagged reading. They are derived from `anomalies` (one row per flagged reading and detector, as the
-- processor writes them) by Store.insert_anomalies: after each insert it recomputes the episodes the new
-- rows can touch and writes a new version of each one that changed. Being a function of the flagged
-- readings, a replay changes nothing, and a late reading extends an episode or joins two.
-- Identity: (device_id, metric, kind, opened). At most one episode per key is open, as episodes of a key
-- are separated by more than the quiet period.
CREATE TABLE IF NOT EXISTS $db.anomaly_episodes
(
    device_id String,
    metric LowCardinality(String),
    kind LowCardinality(String),
    opened DateTime64(3, 'UTC'),
    updated DateTime64(3, 'UTC'),
    closes DateTime64(3, 'UTC'),
    readings UInt32,
    peak_time DateTime64(3, 'UTC'),
    peak_value Float64,
    peak_score Float64,
    peak_zscore Float64,
    created DateTime64(6, 'UTC'),
    version DateTime64(6, 'UTC'),
    deleted UInt8,
    INDEX version_idx version TYPE minmax GRANULARITY 1,
    INDEX closes_idx closes TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree(version, deleted)
PARTITION BY toYYYYMM(opened)
ORDER BY (device_id, metric, kind, opened)
TTL toDateTime(updated) + INTERVAL ${long_retention_days} DAY;

-- Acknowledgements, by episode identity; the first one stands (min / argMin on the time).
CREATE TABLE IF NOT EXISTS $db.anomaly_acks
(
    device_id String,
    metric LowCardinality(String),
    kind LowCardinality(String),
    opened DateTime64(3, 'UTC'),
    acked_at SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    acked_by AggregateFunction(argMin, String, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY (device_id, metric, kind, opened);
