"""The console page: fleet status, device charts and the live anomaly feed over HTTP, from the Query RPCs."""
