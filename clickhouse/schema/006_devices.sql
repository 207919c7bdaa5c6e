-- Device registry. device_metrics (one row per device and metric, kept by a materialized view) gains the
-- first reading time and the server's clock at the last insert; a device is its rows merged over metrics.
-- (One table rather than a second view: every view adds a part written per insert.)
-- first_time / last_time are reading times (the device's clock). last_stored decides online/offline: a
-- device uploading a backlog of old readings is online, and one whose clock runs behind is not silent.
ALTER TABLE $db.device_metrics
    ADD COLUMN IF NOT EXISTS first_time SimpleAggregateFunction(min, DateTime64(3, 'UTC')) DEFAULT last_time;
ALTER TABLE $db.device_metrics
    ADD COLUMN IF NOT EXISTS last_stored SimpleAggregateFunction(max, DateTime64(3, 'UTC')) DEFAULT last_time;

DROP VIEW IF EXISTS $db.device_metrics_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.device_metrics_mv TO $db.device_metrics AS
SELECT device_id, metric, max(time) AS last_time, argMaxState(value, time) AS last_value, count() AS readings,
       min(time) AS first_time, now64(3, 'UTC') AS last_stored
FROM $db.readings
GROUP BY device_id, metric;

-- Rows stored before this migration default to first_time = last_time; add their true first reading time
-- (every other column of this row is neutral: readings 0, times at the epoch, an empty argMax state).
INSERT INTO $db.device_metrics (device_id, metric, first_time)
SELECT device_id, metric, min(time) FROM $db.readings GROUP BY device_id, metric;
