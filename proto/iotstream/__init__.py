"""iotstream: telemetry pipeline for device fleets."""

__version__ = "0.1.0"
