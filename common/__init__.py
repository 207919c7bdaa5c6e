"""Lower layer shared by every room: metrics, logging setup, TLS credentials."""
