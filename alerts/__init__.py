"""Alerts: anomaly episodes delivered to webhooks."""
