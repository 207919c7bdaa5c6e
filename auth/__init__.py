"""Bearer tokens for devices, readers and admins, and the server interceptor that checks them.

A token is 32 random bytes (URL-safe base64, prefixed `iot_`), shown once when it is made; only its SHA-256
is stored. Each stored hash names a principal: a device (which may only send its own readings), a reader
(every read-only Query RPC) or an admin (everything a reader may, plus acknowledging anomalies and
managing tokens). Calls carry the token as `authorization: Bearer <token>` metadata.

The registry lives where every role can reach it:

* `ClickHouseTokens`: a table `$db.auth_tokens` in the node's database (embedded or server), created
  with CREATE TABLE IF NOT EXISTS (clickhouse.tokens), so ingest nodes, query nodes and the CLI share one
  registry;
* `FileTokens`: a JSON-lines file of hashes (for ingest nodes that have no ClickHouse at hand); the
  server re-reads it when it changes.

`Authenticator` keeps the registry in memory and refreshes it every `refresh_s` (so a revoked token stops
working within that time, open calls included: see `Authenticator.watch`). An unknown token triggers at most
one early refresh per second, so a stream of
made-up tokens cannot hammer the store.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from iotstream.clickhouse.tokens import TokenTable
from iotstream.common.ids import DEVICE_ID

log = logging.getLogger(__name__)

DEVICE, READER, ADMIN = "device", "reader", "admin"
ROLES = (DEVICE, READER, ADMIN)
TOKEN_PREFIX = "iot_"
REFRESH_S = 4.0  # a revoked token stops working within this and a refresh's own time: under the promised 5 s
MISS_REFRESH_S = 1.0


class AuthError(Exception):
    """A call without valid credentials (UNAUTHENTICATED) or without the right (PERMISSION_DENIED)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Principal:
    role: str  # DEVICE, READER or ADMIN
    subject: str  # the device id, or the reader's / admin's name

    def __str__(self) -> str:
        return f"{self.role}:{self.subject}"


def new_token() -> str:
    return TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")


# ---- registries -------------------------------------------------------------------------------------


class ClickHouseTokens:
    """The registry as a ClickHouse table next to the data (clickhouse.tokens holds its SQL)."""

    def __init__(self, backend):
        self.table = TokenTable(backend)

    def add(self, role: str, subject: str) -> str:
        check_role(role)
        token = new_token()
        self.table.write(token_hash(token), role, subject)
        return token

    def revoke(self, role: str, subject: str) -> int:
        """Revoke every token of (role, subject); returns how many were live."""
        live = [r for r in self.list() if r["role"] == role and r["subject"] == subject]
        for r in live:
            self.table.write(r["token_sha256"], role, subject, revoked=True)
        return len(live)

    def list(self) -> list[dict]:
        return self.table.live()

    def load(self) -> dict[str, Principal]:
        return {r["token_sha256"]: Principal(r["role"], r["subject"]) for r in self.list()}


class FileTokens:
    """The registry as a JSON-lines file: {"token_sha256", "role", "subject", "revoked"}; later lines win."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()

    def _append(self, row: dict) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write(json.dumps(row) + "\n")

    def add(self, role: str, subject: str) -> str:
        check_role(role)
        token = new_token()
        self._append(
            {
                "token_sha256": token_hash(token),
                "role": role,
                "subject": subject,
                "revoked": 0,
                "created_ms": time.time_ns() // 1_000_000,
            }
        )
        return token

    def revoke(self, role: str, subject: str) -> int:
        live = [r for r in self.list() if r["role"] == role and r["subject"] == subject]
        for r in live:
            self._append({**r, "revoked": 1})
        return len(live)

    def list(self) -> list[dict]:
        rows: dict[str, dict] = {}
        if not self.path.exists():
            return []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows[row["token_sha256"]] = row
            except (ValueError, KeyError, TypeError):
                log.warning("%s line %d: not a token record; skipped", self.path, n)
        return sorted(
            (r for r in rows.values() if not r.get("revoked")), key=lambda r: (r["role"], r["subject"])
        )

    def load(self) -> dict[str, Principal]:
        return {r["token_sha256"]: Principal(r["role"], r["subject"]) for r in self.list()}


# ---- checking calls ---------------------------------------------------------------------------------


class Authenticator:
    """Maps a call's bearer token to its Principal, from an in-memory copy of the registry.

    `identify` never does I/O (it runs on the event loop): the copy is refreshed by `refresh`, which the
    node calls every `refresh_s` from a worker thread, and by `identify_async` when a token is unknown
    (at most once a second, so made-up tokens cannot hammer the store)."""

    def __init__(
        self, registry, refresh_s: float = REFRESH_S, on_reject: Callable[[str], None] | None = None
    ):
        self.registry = registry
        self.refresh_s = refresh_s
        self.on_reject = on_reject or (lambda reason: None)
        self._known: dict[str, tuple[str, Principal]] = {}  # hash -> (stored hash, principal)
        self._miss_at = float("-inf")
        self._miss_lock: asyncio.Lock | None = None
        self._watches: dict[str, set[Revocation]] = {}  # token hash -> open calls made with it
        self._watch_lock = threading.Lock()  # refresh runs in worker threads
        self.refresh()

    def refresh(self) -> None:
        try:
            known = self.registry.load()
        except Exception as exc:  # the store is away: keep serving the tokens known so far
            log.warning("token registry not readable, keeping %d known tokens: %s", len(self._known), exc)
            return
        self._known = {h: (h, p) for h, p in known.items()}
        with self._watch_lock:
            gone = [w for h, ws in self._watches.items() if h not in self._known for w in ws]
        for w in gone:
            w.fire()

    def watch(self, metadata) -> Revocation:
        """A Revocation for an open call (a stream) made with this metadata: it fires when a refresh no
        longer finds the token. Call `Revocation.close` when the call ends."""
        digest = _bearer_digest(metadata)
        w = Revocation(self, digest, asyncio.get_running_loop())
        with self._watch_lock:
            self._watches.setdefault(digest, set()).add(w)
        if digest not in self._known:  # revoked between the interceptor's check and now
            w.fire()
        return w

    def _unwatch(self, w: Revocation) -> None:
        with self._watch_lock:
            ws = self._watches.get(w.digest)
            if ws is not None:
                ws.discard(w)
                if not ws:
                    del self._watches[w.digest]

    def identify(self, metadata) -> Principal:
        """The caller of a call with this invocation metadata; AuthError(UNAUTHENTICATED) if none."""
        digest = _bearer_digest(metadata)
        found = self._known.get(digest)
        # The dict finds the entry by the hash of a SHA-256 (nothing a caller can steer); the stored hash is
        # then compared in constant time all the same.
        if found is None or not hmac.compare_digest(digest.encode(), found[0].encode()):
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked token")
        return found[1]

    async def identify_async(self, metadata) -> Principal:
        """`identify`, re-reading the registry first when the token is unknown (a device added a moment
        ago)."""
        try:
            return self.identify(metadata)
        except AuthError:
            _bearer_digest(metadata)  # a malformed header needs no refresh
            if self._miss_lock is None:
                self._miss_lock = asyncio.Lock()
            async with self._miss_lock:
                if time.monotonic() - self._miss_at >= MISS_REFRESH_S:
                    self._miss_at = time.monotonic()
                    await asyncio.to_thread(self.refresh)
            return self.identify(metadata)


class Revocation:
    """Set (`revoked`, an asyncio.Event on the call's loop) once the call's token is revoked."""

    def __init__(self, auth: Authenticator, digest: str, loop: asyncio.AbstractEventLoop):
        self.auth, self.digest, self.loop = auth, digest, loop
        self.revoked = asyncio.Event()

    def fire(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.revoked.set)

    def error(self) -> AuthError:
        return AuthError(grpc.StatusCode.UNAUTHENTICATED, "token revoked during the call")

    def close(self) -> None:
        self.auth._unwatch(self)


def _bearer_digest(metadata) -> str:
    header = None
    for key, value in metadata or ():
        if key == "authorization":
            header = value
            break
    if header is None:
        raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <token>' metadata")
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "authorization metadata must be 'Bearer <token>'")
    return token_hash(token.strip())


# Which roles may call which method; a method not listed here needs no token (health, reflection).
INGEST_METHODS = ("/iotstream.v1.Ingest/",)
ADMIN_METHODS = ("/iotstream.v1.Query/AcknowledgeAnomaly", "/iotstream.v1.Admin/")
READ_METHODS = ("/iotstream.v1.Query/",)


def required_roles(method: str) -> tuple[str, ...] | None:
    """Roles allowed to call `method` (a full method name), or None when the method is open."""
    if method.startswith(INGEST_METHODS):
        return (DEVICE,)
    if method.startswith(ADMIN_METHODS):
        return (ADMIN,)
    if method.startswith(READ_METHODS):
        return (READER, ADMIN)
    return None


def authorize(principal: Principal, method: str) -> None:
    roles = required_roles(method)
    if roles is not None and principal.role not in roles:
        raise AuthError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{principal.role} token {principal.subject!r} may not call {method} "
            f"(needs {' or '.join(roles)})",
        )


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks every call to a protected method before its handler runs: UNAUTHENTICATED without a valid
    token, PERMISSION_DENIED with a token of the wrong role. Which device a batch belongs to is checked by
    the ingest handler (it knows the batch); this only makes sure the caller is a device."""

    def __init__(self, auth: Authenticator):
        self.auth = auth

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or required_roles(details.method) is None:
            return handler
        try:
            authorize(await self.auth.identify_async(details.invocation_metadata), details.method)
        except AuthError as exc:
            self.auth.on_reject(exc.code.name)
            log.info("auth: %s %s: %s", details.method, exc.code.name, exc)
            return _refusal(handler, exc)
        return handler


def _refusal(handler: grpc.RpcMethodHandler, exc: AuthError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends the call with `exc`'s status."""

    async def unary(_request, context):
        await context.abort(exc.code, str(exc))

    async def streaming(_request, context):
        await context.abort(exc.code, str(exc))
        yield  # an async generator, as a streaming handler must be

    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    return grpc.stream_stream_rpc_method_handler(streaming, **kw)


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `token` (none without a token)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def open_registry(tokens_file: str | None = None, backend=None):
    """The tokens file when given, else the ClickHouse table on `backend`."""
    if tokens_file:
        return FileTokens(tokens_file)
    if backend is None:
        raise ValueError("the token registry needs a tokens file or a ClickHouse backend")
    return ClickHouseTokens(backend)


class AdminService:
    """`iotstream.v1.Admin`: token management and device configuration over gRPC, for admin tokens (checked
    by AuthInterceptor). With auth off (`auth` None) only the configuration RPCs work."""

    def __init__(self, auth: Authenticator | None, configs=None):
        self.auth = auth
        self.configs = configs  # iotstream.auth.device_config.ConfigHub, or None

    async def ConfigureDevice(self, request, context):
        from iotstream.auth import device_config

        await self._need(self.configs, "device configuration needs the ClickHouse store", context)
        return await device_config.configure(self.configs, request, context)

    async def GetDeviceConfig(self, request, context):
        from iotstream.auth import device_config

        await self._need(self.configs, "device configuration needs the ClickHouse store", context)
        return await device_config.get_state(self.configs, request, context)

    @staticmethod
    async def _need(part, why: str, context) -> None:
        if part is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, why)

    async def AddToken(self, request, context):
        from iotstream.v1 import admin_pb2 as pb

        await self._need(self.auth, "auth is off: start the server with --auth to manage tokens", context)
        await self._check(request.role, request.subject, context)
        token = await asyncio.to_thread(self.auth.registry.add, request.role, request.subject)
        await asyncio.to_thread(self.auth.refresh)  # usable at once on this node
        log.info("token added for %s %s", request.role, request.subject, extra={"role": request.role})
        return pb.AddTokenResponse(token=token)

    async def RevokeTokens(self, request, context):
        from iotstream.v1 import admin_pb2 as pb

        await self._need(self.auth, "auth is off: start the server with --auth to manage tokens", context)
        await self._check(request.role, request.subject, context)
        n = await asyncio.to_thread(self.auth.registry.revoke, request.role, request.subject)
        await asyncio.to_thread(self.auth.refresh)
        log.info("%d token(s) revoked for %s %s", n, request.role, request.subject)
        return pb.RevokeTokensResponse(revoked=n)

    async def ListTokens(self, request, context):
        from iotstream.v1 import admin_pb2 as pb

        await self._need(self.auth, "auth is off: start the server with --auth to manage tokens", context)
        if request.role and request.role not in ROLES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"role: one of {', '.join(ROLES)}")
        rows = await asyncio.to_thread(self.auth.registry.list)
        return pb.ListTokensResponse(
            tokens=[
                pb.TokenInfo(
                    role=r["role"],
                    subject=r["subject"],
                    sha256_prefix=r["token_sha256"][:12],
                    created_ms=int(r.get("created_ms") or 0),
                )
                for r in rows
                if not request.role or r["role"] == request.role
            ]
        )

    @staticmethod
    async def _check(role: str, subject: str, context) -> None:
        if role not in ROLES:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"role: one of {', '.join(ROLES)}, not {role[:40]!r}"
            )
        if not DEVICE_ID.fullmatch(subject):  # device ids and names follow the same rule
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"subject: must match {DEVICE_ID.pattern}")


def add_admin_to_server(auth: Authenticator | None, server, configs=None) -> str:
    """Register the Admin service; returns its full name (for health and reflection)."""
    from iotstream.v1 import admin_pb2, admin_pb2_grpc

    admin_pb2_grpc.add_AdminServicer_to_server(AdminService(auth, configs), server)
    return admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
