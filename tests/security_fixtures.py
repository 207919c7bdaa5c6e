"""Helpers for the security, limits, fuzz and shutdown tests: a throw-away CA (cryptography), servers with
auth/TLS/limits on, and token-carrying stubs. Import what you need; fixtures are declared per test module."""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc

from iotstream.v1 import ingest_pb2 as pb


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def batch(device: str, n: int = 3, seq: int = 1, value: float = 1.0) -> pb.ReadingBatch:
    return pb.ReadingBatch(
        device_id=device,
        seq=seq,
        base_time_ms=now_ms() - 10_000,
        time_offset_ms=list(range(n)),
        metric_names=["temp"],
        metric_index=[0] * n,
        values=[value + i for i in range(n)],
    )


def bearer(token: str | None) -> tuple:
    return (("authorization", f"Bearer {token}"),) if token else ()


def code_of(fn, *args, **kwargs) -> grpc.StatusCode:
    """The status code a call ends with (OK when it returns)."""
    try:
        result = fn(*args, **kwargs)
        if hasattr(result, "__iter__") and not hasattr(result, "SerializeToString"):
            list(result)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def database() -> str:
    return "t_" + uuid.uuid4().hex[:12]


# ---- a throw-away PKI ---------------------------------------------------------------------------------


@dataclass
class Pki:
    """PEM files: ca.pem, server.pem/server.key (for 127.0.0.1 and localhost), client.pem/client.key signed
    by the CA, and rogue-ca.pem with rogue-client.pem/.key that the server must not trust."""

    folder: Path

    def path(self, name: str) -> str:
        return str(self.folder / name)

    def read(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()


def make_pki(folder: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    end = start + dt.timedelta(days=2)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem, key, cert):
        (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            (folder / f"{stem}.key").write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )

    def ca(cn):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def leaf(ca_key, ca_cert, cn, server: bool):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return key, b.sign(ca_key, hashes.SHA256())

    ca_key, ca_cert = ca("iotstream test CA")
    write("ca", None, ca_cert)
    write("server", *leaf(ca_key, ca_cert, "localhost", server=True))
    write("client", *leaf(ca_key, ca_cert, "device-client", server=False))
    rogue_key, rogue_cert = ca("rogue CA")
    write("rogue-ca", None, rogue_cert)
    write("rogue-client", *leaf(rogue_key, rogue_cert, "rogue-client", server=False))
    write("rogue-server", *leaf(rogue_key, rogue_cert, "localhost", server=True))
    return Pki(folder)
