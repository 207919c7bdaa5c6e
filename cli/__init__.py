"""The `iotstream` command line: one parser per command, each calling into node assembly or a client."""
