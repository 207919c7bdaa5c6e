-- One anomaly row per flagged reading. From here on the processor writes one row per flagged reading:
-- `kind` is its dominant detector (the largest evidence), `detectors` every detector that fired on it, and
-- an episode's `detectors` is the union over its readings. Rows written before were one per (reading,
-- detector); they read as detectors = [kind].
ALTER TABLE $db.anomalies ADD COLUMN IF NOT EXISTS detectors Array(LowCardinality(String)) DEFAULT [kind] AFTER kind;
ALTER TABLE $db.anomaly_episodes ADD COLUMN IF NOT EXISTS detectors Array(LowCardinality(String)) DEFAULT [kind]
    AFTER kind;
