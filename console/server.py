"""The console: one read-only web page over the Query service, with JSON endpoints and a live anomaly feed.

`serve` and `query-server` start it with `--http-port` (off by default: it is one more listening port, and
the gRPC API stays the contract). Every endpoint is a Query RPC called in-process on the node's own
QueryService, so arguments, paging, limits and errors are those of the RPC; only the encoding differs
(proto3 JSON). When auth is on, a request needs `Authorization: Bearer <token>` of a reader or admin,
checked exactly as the gRPC interceptor checks it. The page is static (static/, uPlot vendored).

| path | RPC | query parameters |
|---|---|---|
| `/` and `/static/...` | the page | |
| `/api/stats` | GetStats | |
| `/api/devices` | ListDevices | `prefix`, `status` (online/offline), `limit`, `page_token` |
| `/api/device/ID` | GetDevice | |
| `/api/aggregate` | Aggregate | `device`, `metric` (repeatable), `start_ms`, `end_ms`, `interval_ms`, `func`
(repeatable) |
| `/api/history` | GetHistory | `device`, `metric` (repeatable), `start_ms`, `end_ms`, `limit`, `page_token` |
| `/api/anomalies` | ListAnomalies | `device`, `metric`, `kind`, `start_ms`, `end_ms`, `limit`, `page_token` |
| `/api/events` | WatchAnomalies (server-sent events; `id:` is the cursor) | `since` (a cursor), `device`,
`metric`, `kind` |
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import select
import socket
import ssl
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, unquote, urlsplit

import grpc
from google.protobuf.json_format import MessageToDict

from iotstream import auth as authn
from iotstream.v1 import query_pb2 as pb

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 30.0  # the deadline of one endpoint's RPC
MAX_STREAMS = 16  # live feeds open at once; more get 429 (each holds a thread and a watch)
MAX_CONNECTIONS = 64  # connections served at once (a thread each); more are closed unanswered
KEEPALIVE_S = 15.0  # an idle feed sends a comment this often (proxies drop silent connections)
GONE_CHECK_S = 1.0  # how often an idle feed looks whether its client went away
STATUS = {  # gRPC status -> HTTP status
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
}


class RefusedError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details


class CallContext:
    """What QueryService's handlers use of a gRPC context, for an in-process call."""

    def __init__(self, timeout_s: float | None):
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    async def abort(self, code: grpc.StatusCode, details: str):
        raise RefusedError(code, details)


def _one(q: dict, name: str, default: str = "") -> str:
    return q.get(name, [default])[0]


def _int(q: dict, name: str, default: int = 0) -> int:
    text = _one(q, name, str(default))
    try:
        return int(text)
    except ValueError:
        raise RefusedError(
            grpc.StatusCode.INVALID_ARGUMENT, f"{name}: not an integer: {text[:40]!r}"
        ) from None


def _status(text: str) -> str | None:
    if text and text.upper() not in pb.DeviceStatus.keys():
        raise RefusedError(grpc.StatusCode.INVALID_ARGUMENT, f"status: online or offline, not {text[:40]!r}")
    return text.upper() if text else None


def _funcs(names: list[str]) -> list[str]:
    try:
        return [pb.AggFunc.Name(pb.AggFunc.Value(n.upper())) for n in names]
    except ValueError:
        raise RefusedError(
            grpc.StatusCode.INVALID_ARGUMENT, f"func: one of {list(pb.AggFunc.keys())[1:]}"
        ) from None


# endpoint -> (RPC name, request from (query parameters, path rest))
ENDPOINTS = {
    "stats": ("GetStats", lambda q, rest: pb.GetStatsRequest()),
    "devices": (
        "ListDevices",
        lambda q, rest: pb.ListDevicesRequest(
            id_prefix=_one(q, "prefix"),
            status=_status(_one(q, "status")),
            page_size=_int(q, "limit"),
            page_token=_one(q, "page_token"),
        ),
    ),
    "device": ("GetDevice", lambda q, rest: pb.GetDeviceRequest(device_id=rest)),
    "aggregate": (
        "Aggregate",
        lambda q, rest: pb.AggregateRequest(
            device_ids=q.get("device", []),
            metrics=q.get("metric", []),
            start_ms=_int(q, "start_ms"),
            end_ms=_int(q, "end_ms"),
            interval_ms=_int(q, "interval_ms", 60_000),
            funcs=_funcs(q.get("func", [])),
        ),
    ),
    "history": (
        "GetHistory",
        lambda q, rest: pb.GetHistoryRequest(
            device_id=_one(q, "device"),
            metrics=q.get("metric", []),
            start_ms=_int(q, "start_ms"),
            end_ms=_int(q, "end_ms"),
            page_size=_int(q, "limit"),
            page_token=_one(q, "page_token"),
        ),
    ),
    "anomalies": (
        "ListAnomalies",
        lambda q, rest: pb.ListAnomaliesRequest(
            device_id=_one(q, "device"),
            metric=_one(q, "metric"),
            kind=_one(q, "kind"),
            start_ms=_int(q, "start_ms"),
            end_ms=_int(q, "end_ms"),
            page_size=_int(q, "limit"),
            page_token=_one(q, "page_token"),
        ),
    ),
}


def static_files() -> dict:
    """Relative path -> file of everything under static/: the only files the console serves."""
    found, folders = {}, [("", resources.files("iotstream.console") / "static")]
    while folders:
        prefix, folder = folders.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                folders.append((f"{prefix}{entry.name}/", entry))
            elif entry.is_file():
                found[prefix + entry.name] = entry
    return found


def to_json(message) -> bytes:
    """Proto3 JSON, with 64-bit integers as numbers (the page's values fit a double)."""
    data = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return json.dumps(data, default=str).encode()


class Console:
    """The HTTP server, in its own threads; RPCs and auth run on the node's event loop."""

    def __init__(self, service, authenticator: authn.Authenticator | None, loop: asyncio.AbstractEventLoop):
        self.service = service
        self.auth = authenticator
        self.loop = loop
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)
        self.stopping = threading.Event()
        self.feeds: set[Feed] = set()
        self.port = 0
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int, tls=None) -> int:
        """Listen (HTTPS with the node's certificate when it has one); returns the port."""
        handler = type("Handler", (ConsoleHandler,), {"console": self})
        self._http = ConsoleServer((host, port), handler)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert, tls.key)
            # The handshake runs in the request's thread (ConsoleHandler.setup), so a client that connects
            # and says nothing cannot hold up the accept loop.
            self._http.socket = context.wrap_socket(
                self._http.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(target=self._http.serve_forever, name="console-http", daemon=True)
        self._thread.start()
        return self._http.server_port

    def stop(self) -> None:
        self.stopping.set()
        for feed in list(self.feeds):
            self.loop.call_soon_threadsafe(feed.wake)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def run(self, coro, timeout: float | None = CALL_TIMEOUT_S):
        """Run a coroutine on the node's loop from a handler thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def check(self, header: str | None, method: str) -> None:
        if self.auth is None:
            return
        try:
            metadata = (("authorization", header),) if header else ()
            principal = self.run(self.auth.identify_async(metadata))
            authn.authorize(principal, f"/iotstream.v1.Query/{method}")
        except authn.AuthError as exc:
            raise RefusedError(exc.code, str(exc)) from None

    def call(self, method: str, request):
        async def go():
            return await getattr(self.service, method)(request, CallContext(CALL_TIMEOUT_S))

        return self.run(go(), CALL_TIMEOUT_S + 5)


class ConsoleServer(ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS at once: past it a connection is closed at once."""

    daemon_threads = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            log.warning(
                "console: %d connections open, refusing one from %s", MAX_CONNECTIONS, client_address[0]
            )
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        log.debug("console: connection from %s failed", client_address, exc_info=True)


class ConsoleHandler(BaseHTTPRequestHandler):
    console: Console
    server_version = "iotstream-console"
    timeout = CALL_TIMEOUT_S  # on the socket: a request must arrive (and TLS complete) within it

    def setup(self):
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def log_message(self, fmt, *args):
        log.debug("console: " + fmt, *args)

    def do_GET(self):  # noqa: N802 (http.server's name)
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        try:
            if path == "/" or path.startswith("/static/"):
                self.static("index.html" if path == "/" else path.removeprefix("/static/"))
            elif path == "/api/events":
                self.events(query)
            elif path.startswith("/api/"):
                name, _, rest = path.removeprefix("/api/").partition("/")
                if name not in ENDPOINTS:
                    raise RefusedError(grpc.StatusCode.NOT_FOUND, f"no endpoint {path[:80]!r}")
                method, build = ENDPOINTS[name]
                self.console.check(self.headers.get("Authorization"), method)
                self.reply(
                    HTTPStatus.OK, to_json(self.console.call(method, build(query, rest))), "application/json"
                )
            else:
                raise RefusedError(grpc.StatusCode.NOT_FOUND, f"no page {path[:80]!r}")
        except RefusedError as exc:
            status = STATUS.get(exc.code, HTTPStatus.INTERNAL_SERVER_ERROR)
            body = json.dumps({"code": exc.code.name, "message": exc.details}).encode()
            self.reply(status, body, "application/json")
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception("console: %s failed", path)
            self.reply(HTTPStatus.INTERNAL_SERVER_ERROR, b'{"code": "INTERNAL"}', "application/json")

    def reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'")
        self.end_headers()
        self.wfile.write(body)

    def static(self, name: str) -> None:
        found = static_files().get(name)
        if found is None:
            raise RefusedError(grpc.StatusCode.NOT_FOUND, f"no file {name[:80]!r}")
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        text = kind.startswith("text/") or kind.endswith("javascript")
        self.reply(HTTPStatus.OK, found.read_bytes(), kind + ("; charset=utf-8" if text else ""))

    def events(self, query: dict) -> None:
        """WatchAnomalies as server-sent events; each event's `id:` is its cursor (pass it as `since`)."""
        console = self.console
        console.check(self.headers.get("Authorization"), "WatchAnomalies")
        if not console.streams.acquire(blocking=False):
            raise RefusedError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"{MAX_STREAMS} live feeds are open already"
            )
        try:
            request = pb.WatchAnomaliesRequest(
                cursor=_one(query, "since"),
                device_id=_one(query, "device"),
                metric=_one(query, "metric"),
                kind=_one(query, "kind"),
            )
            feed = Feed(console, request)
            console.feeds.add(feed)
            try:
                event = feed.next(
                    CALL_TIMEOUT_S
                )  # WATCHING, or the refusal of a bad cursor, before the headers
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                idle = 0.0
                while not console.stopping.is_set():
                    if event is not None:
                        self.wfile.write(
                            b"id: "
                            + event.cursor.encode()
                            + b"\nevent: anomaly\ndata: "
                            + to_json(event)
                            + b"\n\n"
                        )
                        self.wfile.flush()
                        idle = 0.0
                    elif self.client_gone():
                        break
                    elif idle >= KEEPALIVE_S:
                        self.wfile.write(b": keepalive\n\n")
                        self.wfile.flush()
                        idle = 0.0
                    event = feed.next(GONE_CHECK_S)
                    idle += GONE_CHECK_S if event is None else 0.0
            finally:
                console.feeds.discard(feed)
                console.loop.call_soon_threadsafe(feed.wake)
        finally:
            console.streams.release()

    def client_gone(self) -> bool:
        """True once the browser closed the connection (it sends nothing else on an SSE request), so its
        feed's slot frees within GONE_CHECK_S. Over TLS, the next keepalive write finds out instead."""
        if isinstance(self.connection, ssl.SSLSocket):
            return False
        readable, _, _ = select.select([self.connection], [], [], 0)
        try:
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


class Feed:
    """A WatchAnomalies stream on the node's loop, read from a handler thread with a timeout."""

    def __init__(self, console: Console, request: pb.WatchAnomaliesRequest):
        self.console = console
        self.queue: asyncio.Queue | None = None
        self.task = console.run(self._start(request))

    async def _start(self, request):
        self.queue = asyncio.Queue(maxsize=100)  # bounded: a slow reader holds the watch back, no more

        async def pump():
            try:
                async for event in self.console.service.WatchAnomalies(request, CallContext(None)):
                    await self.queue.put(event)
            except RefusedError as exc:
                await self.queue.put(exc)

        return asyncio.create_task(pump())

    def next(self, timeout: float):
        """The next event, or None after `timeout` seconds without one."""

        async def get():
            try:
                return await asyncio.wait_for(self.queue.get(), timeout)
            except TimeoutError:
                if self.task.done() and not self.task.cancelled() and self.task.exception() is not None:
                    raise self.task.exception() from None
                return None

        item = self.console.run(get(), timeout + 5)
        if isinstance(item, RefusedError):
            raise item
        return item

    def wake(self) -> None:
        """On the loop: stop watching, and let a waiting reader return at once."""
        self.task.cancel()
        assert self.queue is not None  # made by start(), before a reader can wait
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


def start_console(node) -> Console:
    """Serve the console for a node that runs the query role, on its --http-host/--http-port."""
    from iotstream.query.service import QueryService

    cfg = node.config
    service = QueryService(
        node.store, node.live_stats, cfg.silence_ms, episodes_written=node.episodes_written
    )
    console = Console(service, node.auth, asyncio.get_running_loop())
    console.port = console.start(cfg.http_host, cfg.http_port, cfg.tls)
    log.info("console on http%s://%s:%d/", "s" if cfg.tls else "", cfg.http_host, console.port)
    return console


def add_flags(parser) -> None:
    g = parser.add_argument_group("console")
    g.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="serve the console page and its JSON/SSE endpoints on this port (0 picks one; default off)",
    )
    g.add_argument("--http-host", default="127.0.0.1", help="console address (default 127.0.0.1)")
