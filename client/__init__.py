"""Device side: the fleet simulator (and the device client library)."""
