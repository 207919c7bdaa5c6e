"""Alert webhooks: anomaly episodes opened, escalated and closed, POSTed as signed JSON to configured URLs.

The dispatcher follows the episode changes WatchAnomalies reports (query_service.episode_events) and turns
them into events: `opened` (an episode first seen open), `escalated` (its severity rose), `closed` (its
quiet period passed, or a late reading merged it into an earlier episode: state `merged`). Each event that
passes a hook's filters is written to an outbox, a SQLite file in WAL
mode, in the same transaction as the watch cursor, then POSTed by that hook's own worker, in order, until
the receiver answers 2xx. So delivery is at least once: a crash between a POST and its bookkeeping sends
it again, with the same `Idempotency-Key` header (derived from the episode and the event, never random),
for the receiver to drop the repeat. A failed try is retried with doubling delays; after the last try,
or at once for a 4xx other than 408/429 (a retry cannot help), the event goes to the dead-letter table.

Limits (docs/operator.md, "Alert webhooks"): at most MAX_PENDING events wait per hook; past it a new event is
dead-lettered as `outbox full` (counter `iotstream_webhook_deliveries_total{result="dead"}`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import hmac
import json
import logging
import os
import sqlite3
import threading
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass

from iotstream.query.service import anomaly_id, decode_token, episode_events, start_cursor
from iotstream.v1 import query_pb2 as pb

log = logging.getLogger(__name__)

EVENTS = ("opened", "escalated", "closed")
SEVERITIES = {"low": pb.SEVERITY_LOW, "medium": pb.SEVERITY_MEDIUM, "high": pb.SEVERITY_HIGH}
SEVERITY_NAMES = {v: k for k, v in SEVERITIES.items()}
MAX_PENDING = 10_000  # events waiting per hook; a receiver down for long must not grow the file without bound
POLL_S = 0.5  # how often the dispatcher looks for episode changes
BATCH = 500
SIGNATURE_HEADER = "X-Iotstream-Signature"
TIMESTAMP_HEADER = "X-Iotstream-Timestamp"


class WebhookConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Hook:
    name: str
    url: str
    secret: bytes
    min_severity: int = pb.SEVERITY_LOW
    metrics: tuple[str, ...] = ("*",)
    devices: tuple[str, ...] = ("*",)
    events: tuple[str, ...] = EVENTS
    max_attempts: int = 8
    backoff_s: float = 1.0  # delay before the second try, doubled for each next one
    max_backoff_s: float = 300.0
    timeout_s: float = 10.0

    def wants(self, event: str, row: dict) -> bool:
        return (
            event in self.events
            and row["severity"] >= self.min_severity
            and any(fnmatch.fnmatchcase(row["metric"], g) for g in self.metrics)
            and any(fnmatch.fnmatchcase(row["device_id"], g) for g in self.devices)
        )

    def delay(self, attempts: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempts - 1))


def load_hooks(path: str) -> list[Hook]:
    """`[[webhook]]` tables of a TOML file; errors name the file, the hook and the key."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise WebhookConfigError(f"webhooks file {path!r}: {exc}") from exc
    unknown = set(doc) - {"webhook"}
    if unknown:
        raise WebhookConfigError(
            f"webhooks file {path!r}: unknown table(s) {sorted(unknown)}; use [[webhook]]"
        )
    hooks = [_hook(path, i, t) for i, t in enumerate(doc.get("webhook", []))]
    names = [h.name for h in hooks]
    if len(set(names)) != len(names):
        raise WebhookConfigError(f"webhooks file {path!r}: hook names must be unique, got {names}")
    return hooks


def _hook(path: str, index: int, t: dict) -> Hook:
    where = f"webhooks file {path!r}, webhook {t.get('name', index)!r}"
    known = {
        "name",
        "url",
        "secret",
        "secret_env",
        "min_severity",
        "metrics",
        "devices",
        "events",
        "max_attempts",
        "backoff_s",
        "max_backoff_s",
        "timeout_s",
    }
    if set(t) - known:
        raise WebhookConfigError(f"{where}: unknown key(s) {sorted(set(t) - known)}")
    if not str(t.get("url", "")).startswith(("http://", "https://")):
        raise WebhookConfigError(f"{where}: url must be http:// or https://, got {t.get('url')!r}")
    secret = t.get("secret") or os.environ.get(t.get("secret_env", ""), "")
    if not secret:
        raise WebhookConfigError(
            f"{where}: needs a secret (secret = ... or secret_env = NAME of a set variable)"
        )
    if t.get("min_severity", "low") not in SEVERITIES:
        raise WebhookConfigError(f"{where}: min_severity must be one of {list(SEVERITIES)}")
    events = tuple(t.get("events", EVENTS))
    if not events or set(events) - set(EVENTS):
        raise WebhookConfigError(f"{where}: events must be a non-empty subset of {list(EVENTS)}")
    numbers = {k: t[k] for k in ("max_attempts", "backoff_s", "max_backoff_s", "timeout_s") if k in t}
    if any(not isinstance(v, (int, float)) or v <= 0 for v in numbers.values()):
        raise WebhookConfigError(f"{where}: {sorted(numbers)} must be positive numbers")
    return Hook(
        name=str(t.get("name", f"hook{index}")),
        url=t["url"],
        secret=secret.encode(),
        min_severity=SEVERITIES[t.get("min_severity", "low")],
        metrics=tuple(t.get("metrics", ["*"])),
        devices=tuple(t.get("devices", ["*"])),
        events=events,
        **numbers,
    )


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value: HMAC-SHA256 over `timestamp.body`, so a captured request cannot be
    replayed later with a fresh timestamp."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def payload(event: str, row: dict, now_ms: int) -> tuple[str, bytes]:
    """(idempotency key, JSON body) of one event. The key names the episode, the event and, for an
    escalation, the severity reached: the same change always gets the same key."""
    episode = anomaly_id(row)
    key = hashlib.sha256(
        f"{episode}|{event}|{row['severity'] if event == 'escalated' else ''}".encode()
    ).hexdigest()[:32]
    body = {
        "event": event,
        "idempotency_key": key,
        "episode": {
            "id": episode,
            "device_id": row["device_id"],
            "metric": row["metric"],
            "kind": row["kind"],
            "severity": SEVERITY_NAMES.get(row["severity"], "low"),
            "state": "merged" if row["deleted"] else "open" if row["closes_ms"] > now_ms else "closed",
            "opened_ms": row["opened_ms"],
            "updated_ms": row["updated_ms"],
            "closes_ms": row["closes_ms"],
            "readings": row["readings"],
            "peak": {
                "time_ms": row["time_ms"],
                "value": row["value"],
                "score": row["score"],
                "zscore": row["zscore"],
            },
            "acknowledged_by": row["acked_by"],
        },
    }
    return key, json.dumps(body, separators=(",", ":")).encode()


# ---- outbox -----------------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS open_episodes (id TEXT PRIMARY KEY, severity INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY AUTOINCREMENT, hook TEXT NOT NULL, key TEXT NOT
NULL,
    event TEXT NOT NULL, body BLOB NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, due REAL NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '', UNIQUE (hook, key));
CREATE TABLE IF NOT EXISTS dead_letters (seq INTEGER PRIMARY KEY AUTOINCREMENT, hook TEXT NOT NULL,
    key TEXT NOT NULL, event TEXT NOT NULL, body BLOB NOT NULL, attempts INTEGER NOT NULL, error TEXT NOT
    NULL,
    at REAL NOT NULL);
"""


class Outbox:
    """The dispatcher's durable state in one SQLite file: the watch cursor, the severity of each open
    episode (to tell an escalation), events waiting per hook, and dead letters."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a power cut may lose the newest transactions, but each holds the cursor with
            # its events, so the watch resumes before them and writes them again (at least once still holds);
            # FULL (an fsync per episode change) measured 88 against 301 events/s (bench/webhooks.py).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

    def cursor(self) -> tuple | None:
        row = self._db.execute("SELECT value FROM state WHERE name = 'cursor'").fetchone()
        return tuple(json.loads(row[0])) if row else None

    def severity(self, episode: str) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT severity FROM open_episodes WHERE id = ?", (episode,)).fetchone()
        return row[0] if row else None

    def record(
        self,
        cursor: list,
        opened: dict[str, int],
        closed: list[str],
        events: list[tuple[str, str, str, bytes]],
    ) -> list[tuple[str, str, str, bytes]]:
        """One transaction: new cursor, open-episode severities, and (hook, key, event, body) to send.
        Returns the events refused because their hook's outbox is full (the caller dead-letters them)."""
        refused = []
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT OR REPLACE INTO state VALUES ('cursor', ?)", (json.dumps(cursor),))
                db.executemany("INSERT OR REPLACE INTO open_episodes VALUES (?, ?)", opened.items())
                db.executemany("DELETE FROM open_episodes WHERE id = ?", [(e,) for e in closed])
                for hook, key, event, body in events:
                    waiting = db.execute("SELECT count() FROM pending WHERE hook = ?", (hook,)).fetchone()[0]
                    if waiting >= MAX_PENDING:
                        refused.append((hook, key, event, body))
                        db.execute(
                            "INSERT INTO dead_letters (hook, key, event, body, attempts, error, at) "
                            "VALUES (?, ?, ?, ?, 0, 'outbox full', ?)",
                            (hook, key, event, body, time.time()),
                        )
                        continue
                    db.execute(
                        "INSERT OR IGNORE INTO pending (hook, key, event, body) VALUES (?, ?, ?, ?)",
                        (hook, key, event, body),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return refused

    def next(self, hook: str) -> dict | None:
        with self._lock:
            cur = self._db.execute(
                "SELECT seq, key, event, body, attempts, due FROM pending WHERE hook = ? "
                "ORDER BY seq LIMIT 1",
                (hook,),
            )
            row = cur.fetchone()
        return (
            dict(zip(("seq", "key", "event", "body", "attempts", "due"), row, strict=True)) if row else None
        )

    def delivered(self, seq: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pending WHERE seq = ?", (seq,))

    def retry(self, seq: int, attempts: int, due: float, error: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE pending SET attempts = ?, due = ?, error = ? WHERE seq = ?",
                (attempts, due, error, seq),
            )

    def dead(self, seq: int, attempts: int, error: str) -> None:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO dead_letters (hook, key, event, body, attempts, error, at) "
                "SELECT hook, key, event, body, ?, ?, ? FROM pending WHERE seq = ?",
                (attempts, error, time.time(), seq),
            )
            db.execute("DELETE FROM pending WHERE seq = ?", (seq,))
            db.execute("COMMIT")

    def pending(self, hook: str) -> int:
        with self._lock:
            return self._db.execute("SELECT count() FROM pending WHERE hook = ?", (hook,)).fetchone()[0]

    def dead_letters(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT hook, key, event, body, attempts, error FROM dead_letters ORDER BY seq"
            )
            return [
                dict(zip(("hook", "key", "event", "body", "attempts", "error"), r, strict=True)) for r in rows
            ]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ---- delivery ---------------------------------------------------------------------------------------------


def post(hook: Hook, key: str, event: str, body: bytes) -> tuple[bool, bool, str]:
    """One try: (delivered, worth retrying, error)."""
    timestamp = str(int(time.time()))
    request = urllib.request.Request(
        hook.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "iotstream-webhooks",
            "Idempotency-Key": key,
            "X-Iotstream-Event": event,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(hook.secret, timestamp, body),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=hook.timeout_s) as reply:
            reply.read(65536)
            return True, False, ""
    except urllib.error.HTTPError as exc:
        return False, exc.code in (408, 429) or exc.code >= 500, f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:  # refused, reset, timed out, DNS: the receiver may come back
        return False, True, f"{type(exc).__name__}: {exc}"


class Dispatcher:
    """Follows episode changes into the outbox, and runs one delivery worker per hook."""

    def __init__(self, hooks: list[Hook], store, outbox: Outbox, metrics=None):
        self.hooks = hooks
        self.store = store
        self.outbox = outbox
        self.metrics = metrics
        self._wake = {h.name: asyncio.Event() for h in hooks}
        self._start: tuple = ()

    async def begin(self) -> None:
        """Take the saved cursor, or on a first start "from now on", saved at once: episodes that change
        after this returns are reported even if the node stops before the first look."""
        saved = await asyncio.to_thread(self.outbox.cursor)
        if saved is None:
            changes, closures = start_cursor(await asyncio.to_thread(self.store.episode_version))
            saved = (*changes, *closures)
            await asyncio.to_thread(self.outbox.record, list(saved), {}, [], [])
        self._start = saved

    async def run(self) -> None:
        """Until cancelled; raises if following or a worker fails (the node then reports NOT_SERVING)."""
        tasks = [asyncio.create_task(self.follow(), name="webhooks-follow")]
        tasks += [asyncio.create_task(self.deliver(h), name=f"webhook-{h.name}") for h in self.hooks]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.outbox.close()

    async def follow(self) -> None:
        def run(fn, *args):
            return asyncio.to_thread(fn, *args)

        async for kind, row, now, cursor in episode_events(
            self.store,
            tuple(self._start[:5]),
            tuple(self._start[5:]),
            run,
            lambda *_: asyncio.sleep(POLL_S),
            BATCH,
        ):
            await self.on_change(kind, row, now, cursor)

    async def on_change(self, kind: int, row: dict, now: int, cursor: str) -> None:
        episode = anomaly_id(row)
        opened, closed = {}, []
        if row["deleted"]:  # merged into an earlier episode by a late reading: gone, so closed if announced
            known = await asyncio.to_thread(self.outbox.severity, episode)
            event, closed = ("closed" if known is not None else None), [episode]
        elif kind == pb.AnomalyEvent.CLOSED:
            event, closed = "closed", [episode]
        else:
            before = await asyncio.to_thread(self.outbox.severity, episode)
            event = "opened" if before is None else "escalated" if row["severity"] > before else None
            opened = {episode: max(row["severity"], before or 0)}
        events = []
        if event is not None:
            key, body = payload(event, row, now)
            events = [(h.name, key, event, body) for h in self.hooks if h.wants(event, row)]
        refused = await asyncio.to_thread(
            self.outbox.record, decode_token(cursor, 10) or [], opened, closed, events
        )
        for hook, _, _, _ in refused:
            log.warning("webhook %s: outbox full (%d waiting): event dead-lettered", hook, MAX_PENDING)
            self._count(hook, "dead")
        for hook, _, _, _ in events:
            self._wake[hook].set()

    async def deliver(self, hook: Hook) -> None:
        wake = self._wake[hook.name]
        while True:
            item = await asyncio.to_thread(self.outbox.next, hook.name)
            self._gauge(hook.name)
            if item is None:
                await wake.wait()
                wake.clear()
                continue
            wait = item["due"] - time.time()
            if wait > 0:
                await asyncio.sleep(wait)  # backoff before the next try
            ok, retry, error = await asyncio.to_thread(post, hook, item["key"], item["event"], item["body"])
            attempts = item["attempts"] + 1
            if ok:
                await asyncio.to_thread(self.outbox.delivered, item["seq"])
                self._count(hook.name, "delivered")
            elif retry and attempts < hook.max_attempts:
                await asyncio.to_thread(
                    self.outbox.retry, item["seq"], attempts, time.time() + hook.delay(attempts), error
                )
                self._count(hook.name, "failed")
                log.info(
                    "webhook %s: try %d of %s failed (%s); retrying", hook.name, attempts, item["key"], error
                )
            else:
                await asyncio.to_thread(self.outbox.dead, item["seq"], attempts, error)
                self._count(hook.name, "failed")
                self._count(hook.name, "dead")
                log.warning(
                    "webhook %s: %s %s dead-lettered after %d tries (%s)",
                    hook.name,
                    item["event"],
                    item["key"],
                    attempts,
                    error,
                )

    def _count(self, hook: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.webhook_deliveries.labels(hook, result).inc()

    def _gauge(self, hook: str) -> None:
        if self.metrics is not None:
            self.metrics.webhook_pending.labels(hook).set(self.outbox.pending(hook))


async def start_webhooks(path: str, state_path: str, store, metrics) -> Dispatcher:
    """What the node starts with --webhooks FILE: the hooks of FILE, their outbox at `state_path`, the
    cursor taken; then the node runs `dispatcher.run()`, which closes the outbox when it ends."""
    hooks = load_hooks(path)
    outbox = await asyncio.to_thread(Outbox, state_path)
    dispatcher = Dispatcher(hooks, store, outbox, metrics)
    await dispatcher.begin()
    log.info("webhooks: %d hook(s) from %s, outbox %s", len(hooks), path, state_path)
    return dispatcher


def add_flags(parser) -> None:
    """The operator-side flags of `serve` and `query-server`."""
    g = parser.add_argument_group("alert webhooks")
    g.add_argument(
        "--webhooks",
        metavar="FILE",
        help='TOML [[webhook]] tables (docs/operator.md, "Alert webhooks"; default: none)',
    )
    g.add_argument(
        "--webhooks-state",
        metavar="FILE",
        help="the webhooks' outbox, SQLite (default DATA_DIR/webhooks-DATABASE.sqlite)",
    )
