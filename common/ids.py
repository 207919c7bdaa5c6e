"""Identifier rules shared by ingest (batches), auth (token subjects) and the registry."""

import re

# Matched with fullmatch: `$` would also match before a trailing newline ("sim-00001\n").
DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
METRIC_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
