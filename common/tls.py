"""TLS for the gRPC ports, and client channels that speak it (with a bearer token when given).

Server: `--tls-cert` and `--tls-key` (PEM) turn TLS on; `--tls-client-ca` also asks every client for a
certificate signed by that CA (mutual TLS) and refuses the handshake without one. Clients trust
`--tls-ca` (default: the system roots) and present `--tls-cert`/`--tls-key` for mutual TLS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class ServerTLS:
    cert: str  # PEM file: the server's certificate (chain)
    key: str  # PEM file: its private key
    client_ca: str | None = None  # PEM file: CA that client certificates must chain to (mutual TLS)

    def credentials(self) -> grpc.ServerCredentials:
        pair = (Path(self.key).read_bytes(), Path(self.cert).read_bytes())
        if self.client_ca:
            return grpc.ssl_server_credentials(
                [pair], root_certificates=Path(self.client_ca).read_bytes(), require_client_auth=True
            )
        return grpc.ssl_server_credentials([pair])


@dataclass(frozen=True)
class ClientTLS:
    ca: str | None = None  # PEM file of the CA to trust; None: the system roots
    cert: str | None = None  # client certificate for mutual TLS
    key: str | None = None
    server_name: str | None = None  # override the name checked against the server certificate

    def credentials(self) -> grpc.ChannelCredentials:
        read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def aio_channel(target: str, tls: ClientTLS | None = None, options=()) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, tls.credentials(), options=[*options, *tls.options()])


def channel(target: str, tls: ClientTLS | None = None, options=()) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, tls.credentials(), options=[*options, *tls.options()])


def client_tls(args) -> ClientTLS | None:
    """ClientTLS from CLI args --tls-ca/--tls-cert/--tls-key/--tls-server-name; None when none is given."""
    ca, cert, key = (
        getattr(args, "tls_ca", None),
        getattr(args, "tls_cert", None),
        getattr(args, "tls_key", None),
    )
    name = getattr(args, "tls_server_name", None)
    if not (ca or cert or key or getattr(args, "tls", False)):
        return None
    return ClientTLS(ca, cert, key, name)
