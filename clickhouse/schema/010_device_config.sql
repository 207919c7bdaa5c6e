-- Desired configuration per device, pushed down the ingest stream (iotstream.device_config), and the
-- version each device last reported applied. Two tables because two writers update them independently:
-- operators set the desired row (a new row per version; the highest version wins), ingest nodes record
-- reports (the newest report wins). `settings` is a JSON object of string values.
CREATE TABLE IF NOT EXISTS $db.device_config
(
    device_id String,
    version UInt64,
    sample_interval_ms UInt32,
    metrics Array(String),
    settings String,
    set_time DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY device_id;

CREATE TABLE IF NOT EXISTS $db.device_config_reports
(
    device_id String,
    version UInt64,
    time DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(time)
ORDER BY device_id;
