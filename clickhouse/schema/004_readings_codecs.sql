-- Smaller readings. Measured with `python bench/query.py --rows 3000000 --devices 100 --days 0.1157
-- --load-only` (100 devices x 3 metrics at 1 Hz, after merges), bytes per reading:
-- * device_id as LowCardinality: a sorted run of one id costs a dictionary index instead of the string
--   (0.26 -> 0.001).
-- * value with plain ZSTD(9). Sensors report at a fixed resolution (--data sensor: 0.01 degC, 0.1 %RH,
--   0.1 hPa); Gorilla's XOR of such decimals leaves noisy mantissa bits that ZSTD can no longer match:
--   Gorilla+ZSTD(3) 2.76, FPC+ZSTD(3) 2.42, ZSTD(3) 1.59, ZSTD(9) 1.42 (1.44 per reading in all), for
--   ~15% lower insert throughput than ZSTD(3). Full-precision float64 noise (--data simulator) has ~50
--   random bits per value and stays near 7 bytes whatever the codec (Gorilla+ZSTD 6.7, ZSTD(9) 7.1).
ALTER TABLE $db.readings MODIFY COLUMN device_id LowCardinality(String) CODEC(ZSTD(1));
ALTER TABLE $db.readings MODIFY COLUMN value Float64 CODEC(ZSTD(9));
