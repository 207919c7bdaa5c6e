"""The Query service: gRPC read RPCs over the store."""
