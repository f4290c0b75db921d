"""The webhook ingester: the ASGI app that EnableX posts every event to.

`POST /webhooks/enablex/{token}`: check the path token (constant time), read the body up to
the size limit, decrypt, parse, store the raw event in `webhook_event` (deduplicated on its
key) and only then answer 200; the stored events are then handed to the workers, one entry
per commit group on a Redis list that a worker pops at once (an arq job per group would
wait for the worker's poll and job start-up on every IVR turn); the events a live call's
next prompt waits on go on a second list, applied ahead of the rest (`is_urgent`).
Nothing else happens here: applying is the worker's job.

Status codes: 404 wrong token (no detail), 405 not a POST, 413 body too large, 415
plaintext refused by the settings, 400 undecryptable / not JSON / not an event / not
storable (a NUL character, NaN, an id longer than its column), 503 database unreachable
(EnableX redelivers), 200 stored or already stored. Every refusal is logged without the
payload.

Group commit: concurrent requests are written together. A request's event joins the
pending group; a writer takes the whole group into one `INSERT ... ON CONFLICT DO NOTHING`
(its own transaction) and each request waits on a future that resolves only when its group
has committed. While a group is written the next one gathers, so under light load an event
is written at once and under heavy load groups grow by themselves (see `GroupWriter`).

Speed: the webhook path is a bare ASGI handler (Starlette only serves the rest), the
INSERT is one fixed statement whatever the group size (`store.events.insert_events`), and
uvicorn runs with httptools and no access log (`server_options`). `bench/ingest_profile.py`
measures the ingester process alone: acks per second and CPU time per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import uvicorn
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.exceptions import RedisError
from sqlalchemy import String, text
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from campaigns.config import Settings
from campaigns.db import make_async_engine
from campaigns.enablex.crypto import ALGORITHM_HEADERS, decrypt_payload
from campaigns.enablex.events import Event, dedupe_key, parse_event
from campaigns.errors import WebhookDecodeError
from campaigns.models import WebhookEvent, utcnow
from campaigns.store import events as store

log = logging.getLogger(__name__)

APPLY_JOB = "apply_events"
MAX_GROUP = 500
SPILL = 64  # events waiting for the busy writers before another one starts
WEBHOOK_PREFIX = "/webhooks/enablex/"


def apply_job_id(first_event_id: int) -> str:
    return f"apply-events:{first_event_id}"


def feed_key(queue_name: str, *, urgent: bool = False) -> str:
    """The Redis list the ingester pushes stored event groups to, next to the arq queue;
    `urgent`: the one for events a live call's next IVR step may wait on."""
    return f"{queue_name}:apply-feed" + (":urgent" if urgent else "")


# Events that can move a live call's poll on (the person answered, a prompt ended, an
# answer came in, the AMD result): whatever the platform should do next on that call
# waits for them to be applied. They go on their own feed, which the workers apply ahead
# of everything else (`workers.event_jobs.ApplyFeed`): under a backlog of other events
# (dialling, ringing, hang-ups, another campaign's burst) the person on the line still
# hears the next question at once. The applier is order-independent, so applying these
# before their call's earlier events changes nothing but when.
URGENT_KINDS = frozenset(
    {"connected", "play_finished", "digit_collected", "speech_recognized", "menu_timeout"}
)


def is_urgent(event: Event) -> bool:
    """Whether a live call's next IVR step may wait on this event."""
    if event.kind in URGENT_KINDS:
        return True
    return event.amd_result is not None and event.kind != "disconnected"


async def enqueue_apply(
    redis: ArqRedis,
    queue_name: str,
    event_ids: list[int],
    *,
    urgent: bool = False,
    first: bool = False,
) -> None:
    """Hand a group of stored events to the workers: one entry (the ids, as JSON) on the
    apply feed (`urgent`: the urgent one; `first`: at its head, to be popped next), which
    a worker pops at once (`workers.event_jobs.ApplyFeed`). It is only a wake-up: the
    events are in SQL already, and the sweeper applies any a lost Redis or a dead worker
    left behind: a Redis failure is logged, never raised."""
    if not event_ids:
        return
    key = feed_key(queue_name, urgent=urgent)
    push = redis.lpush if first else redis.rpush
    try:
        await cast(Awaitable[int], push(key, json.dumps(event_ids)))
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("could not put %d stored events on the apply feed: %r", len(event_ids), exc)


class StoreUnavailable(Exception):
    """The database could not store the event: answer 503 so that EnableX redelivers."""


class StoreRefused(Exception):
    """The database refused this payload itself (it can never be stored): answer 400."""


@dataclass
class _Pending:
    event: store.NewEvent
    done: asyncio.Future[None]


class GroupWriter:
    """Writes events in groups; `write` returns once the event's group has committed.

    A writer takes everything pending (up to `MAX_GROUP` events) into one INSERT, and goes
    on with what arrived meanwhile until nothing is left: under load each group is the
    events of one commit's time, and the writer keeps its connection (on PostgreSQL, in
    autocommit mode: one round trip and no pool checkout per group) until it runs dry.
    A second writer starts only when `SPILL` events are waiting for the busy ones (a
    slow commit), up to `writers`.
    """

    def __init__(
        self, engine: AsyncEngine, redis: ArqRedis, queue_name: str, *, writers: int
    ) -> None:
        self._engine = engine
        self._autocommit = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql"
            else None
        )
        self._redis = redis
        self._queue_name = queue_name
        self._writers = max(1, writers)
        self._active = 0
        self._pending: list[_Pending] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def write(self, event: store.NewEvent) -> None:
        loop = asyncio.get_running_loop()
        item = _Pending(event, loop.create_future())
        self._pending.append(item)
        if not self._scheduled and self._wants_writer():
            # Start on the next loop turn: the requests of this turn join the group.
            self._scheduled = True
            loop.call_soon(self._start)
        await item.done

    def _wants_writer(self) -> bool:
        if not self._pending:
            return False
        if self._active == 0:
            return True
        return self._active < self._writers and len(self._pending) >= SPILL

    def _start(self) -> None:
        self._scheduled = False
        if self._wants_writer():
            self._active += 1
            self._spawn(self._drain())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        """One writer: group after group until nothing is pending."""
        conn: AsyncConnection | None = None
        try:
            while self._pending:
                group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
                conn, stored = await self._insert(conn, group)
                urgent_keys = {p.event.dedupe_key for p in group if p.event.urgent}
                urgent = [i for i, key in stored if key in urgent_keys]
                rest = [i for i, key in stored if key not in urgent_keys]
                if urgent:
                    self._spawn(enqueue_apply(self._redis, self._queue_name, urgent, urgent=True))
                if rest:
                    self._spawn(enqueue_apply(self._redis, self._queue_name, rest))
        finally:
            self._active -= 1
            if conn is not None:
                await _discard(conn)  # back to the pool

    async def _insert(
        self, conn: AsyncConnection | None, group: list[_Pending]
    ) -> tuple[AsyncConnection | None, list[tuple[int, str]]]:
        """Store a group and settle its requests' futures; the connection to go on with
        (None: `conn` was released), and the (id, dedupe key) of the rows written."""
        try:
            conn, stored = await self._store(conn, [p.event for p in group])
        except (DataError, IntegrityError) as exc:  # `_store` has released `conn`
            if len(group) == 1:
                _fail(group[0], exc)
                return None, []
            # One row the database refuses must not fail its neighbours: one by one.
            conn, stored = None, []
            for item in group:
                try:
                    conn, one = await self._store(conn, [item.event])
                except (SQLAlchemyError, OSError) as error:
                    conn = None
                    _fail(item, error)
                else:
                    stored += one
                    _resolve(item)
            return conn, stored
        except (SQLAlchemyError, OSError) as exc:  # unreachable database: 503 for all
            for item in group:
                _fail(item, exc)
            return None, []
        for item in group:
            _resolve(item)
        return conn, stored

    async def _store(
        self, conn: AsyncConnection | None, events: list[store.NewEvent]
    ) -> tuple[AsyncConnection | None, list[tuple[int, str]]]:
        """One INSERT, committed before it returns. A connection found dead (the database
        restarted since it was opened) is replaced once: the INSERT skips what an earlier
        try may have stored, so repeating it is safe. On a failure the connection is
        released (the error says which connection it was: `conn` is invalid after it)."""
        if self._autocommit is None:  # SQLite: a transaction per group, no kept connection
            async with self._engine.begin() as sqlite_conn:
                return None, await store.insert_events_keyed(sqlite_conn, events)
        for attempt in (1, 2):
            if conn is None:
                conn = await self._autocommit.connect()
            try:
                return conn, await store.insert_events_keyed(conn, events)
            except DBAPIError as exc:
                await _discard(conn)
                conn = None
                if attempt == 2 or not exc.connection_invalidated:
                    raise
            except BaseException:
                await _discard(conn)
                raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        while self._tasks or self._pending:
            if self._pending and not self._scheduled:
                self._start()
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                await asyncio.sleep(0.001)


async def _discard(conn: AsyncConnection) -> None:
    with contextlib.suppress(SQLAlchemyError, OSError):
        await conn.close()


def _resolve(item: _Pending) -> None:
    if not item.done.done():
        item.done.set_result(None)


def _fail(item: _Pending, exc: BaseException) -> None:
    if item.done.done():
        return
    if isinstance(exc, DataError):
        item.done.set_exception(StoreRefused(str(exc.orig or exc)))
    else:
        item.done.set_exception(StoreUnavailable(exc.__class__.__name__))


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


_JSON_HEADERS = [(b"content-type", b"application/json")]
_OK_START: dict[str, Any] = {
    "type": "http.response.start",
    "status": 200,
    "headers": [*_JSON_HEADERS, (b"content-length", b"15")],
}
_OK_BODY: dict[str, Any] = {"type": "http.response.body", "body": b'{"status":"ok"}'}
# The columns' limits, checked before the event joins a group (one row PostgreSQL refuses
# would send its whole group down the slow one-by-one path).
_ID_LIMIT = {
    "voice_id": cast(String, WebhookEvent.__table__.c.voice_id.type).length or 64,
    "broadcast_id": cast(String, WebhookEvent.__table__.c.broadcast_id.type).length or 64,
}


async def _respond(
    send: Send, status: int, body: bytes = b"", extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    headers = [*(_JSON_HEADERS if body else ()), (b"content-length", b"%d" % len(body)), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge
        except ValueError:
            raise BodyTooLarge from None
    first = b""
    rest: bytearray | None = None
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        if rest is not None:
            rest += chunk
        elif not first:
            first = chunk
        elif chunk:
            rest = bytearray(first)
            rest += chunk
        if not message.get("more_body", False):
            return first if rest is None else bytes(rest)


async def _refuse(send: Send, scope: Scope, status: int, why: str) -> None:
    client = scope.get("client")
    log.warning("webhook refused %s from %s: %s", status, client[0] if client else "?", why)
    await _respond(send, status, json.dumps({"error": why}, separators=(",", ":")).encode())


def unstorable(data: Any) -> str | None:
    """Why a decoded event can never be stored as JSON, or None. PostgreSQL's jsonb takes
    no NUL character (`\\u0000`) and no unpaired surrogate (`\\ud800`) in a string or key,
    and no NaN or infinite number (Python's `json` reads `NaN`, `Infinity` and numbers too
    large for a float); checked here, on both backends, so that such a payload gets its 400
    at once and never sends its whole group down the one-by-one path. Iterative: a deeply
    nested payload cannot exhaust the stack."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            why = _bad_text(value)
            if why is not None:
                return why
        elif isinstance(value, dict):
            for key, item in value.items():
                why = _bad_text(key)
                if why is not None:
                    return why
                stack.append(item)
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, float) and not math.isfinite(value):
            return "payload contains a number JSON cannot hold (NaN or infinite)"
    return None


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "payload contains a NUL character"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "payload contains an unpaired surrogate"
    return None


class Ingester:
    """The request handlers, bound to one deployment's settings and connections."""

    def __init__(self, settings: Settings, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.clock = clock
        self._token = settings.webhook_token.encode()
        self.engine: AsyncEngine | None = None
        self.redis: ArqRedis | None = None
        self.writer: GroupWriter | None = None

    def attach(self, engine: AsyncEngine, redis: ArqRedis) -> None:
        self.engine = engine
        self.redis = redis
        writers = 1 if engine.dialect.name == "sqlite" else 4
        self.writer = GroupWriter(engine, redis, self.settings.queue_name, writers=writers)

    async def webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`POST /webhooks/enablex/{token}`, as a bare ASGI handler: this is the hot path,
        so no request or response objects, one pass over the headers."""
        if scope["method"] != "POST":
            await _respond(send, 405, b'{"error":"method not allowed"}', [(b"allow", b"POST")])
            return
        token = scope["path"][len(WEBHOOK_PREFIX) :].encode()
        if not self._token or not hmac.compare_digest(token, self._token):
            log.warning("webhook refused 404: wrong path token")
            await _respond(send, 404)
            return
        declared: bytes | None = None
        crypto: dict[str, str] = {}
        for name, value in scope["headers"]:
            name = name.lower()
            if name == b"content-length":
                declared = value
            elif name.startswith(b"x-"):
                crypto[name.decode("latin-1")] = value.decode("latin-1")
        try:
            body = await _read_body(receive, declared, self.settings.webhook_max_body_bytes)
        except BodyTooLarge:
            await _refuse(send, scope, 413, "body too large")
            return
        except ClientGone:
            return
        if not self.settings.webhook_accept_plaintext and not any(
            h in crypto for h in ALGORITHM_HEADERS
        ):
            why = "plaintext deliveries are refused: encrypt the payload"
            await _refuse(send, scope, 415, why)
            return
        try:
            data = decrypt_payload(crypto, body, self.settings.enablex_app_id)
            event = parse_event(data, amd_field=self.settings.amd_field)
        except WebhookDecodeError as exc:
            await _refuse(send, scope, 400, exc.reason)
            return
        except (ValueError, RecursionError):
            # json's own limits: an integer of over 4,300 digits, nesting past the stack
            await _refuse(send, scope, 400, "body is not JSON this ingester can read")
            return
        why_not = unstorable(data)
        if why_not is None:
            for field, limit in _ID_LIMIT.items():
                value = getattr(event, field)
                if value is not None and len(value) > limit:
                    why_not = f"{field} longer than {limit} characters"
        if why_not is not None:
            await _refuse(send, scope, 400, why_not)
            return
        new = store.NewEvent(
            dedupe_key=dedupe_key(data, amd_field=self.settings.amd_field),
            voice_id=event.voice_id,
            broadcast_id=event.broadcast_id,
            payload=data,
            received_at=self.clock(),
            urgent=is_urgent(event),
        )
        assert self.writer is not None
        try:
            await self.writer.write(new)
        except StoreRefused as exc:
            await _refuse(send, scope, 400, f"payload cannot be stored: {exc}")
            return
        except StoreUnavailable as exc:
            log.error("webhook not stored, database unavailable: %s", exc)
            await _respond(send, 503, b'{"error":"database unavailable"}')
            return
        await send(_OK_START)
        await send(_OK_BODY)

    async def healthz(self, request: Request) -> Response:
        report: dict[str, Any] = {}
        healthy = True
        try:
            assert self.engine is not None
            async with self.engine.connect() as conn:
                await asyncio.wait_for(conn.execute(text("SELECT 1")), timeout=5)
            report["database"] = "ok"
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            healthy = False
            report["database"] = f"error: {exc.__class__.__name__}"
        try:
            assert self.redis is not None
            await asyncio.wait_for(self.redis.ping(), timeout=5)
            report["redis"] = "ok"
        except (RedisError, OSError, TimeoutError) as exc:
            healthy = False
            report["redis"] = f"error: {exc.__class__.__name__}"
        report["status"] = "ok" if healthy else "unavailable"
        return JSONResponse(report, status_code=200 if healthy else 503)


class IngesterApp:
    """The ASGI app: requests under the webhook path go straight to `Ingester.webhook`
    (no routing, middleware or request objects on the hot path); everything else (the
    lifespan, /healthz, unknown paths) to a small Starlette app."""

    def __init__(self, ingester: Ingester, rest: Starlette) -> None:
        self.ingester = ingester
        self.rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(WEBHOOK_PREFIX):
            await self.ingester.webhook(scope, receive, send)
        else:
            await self.rest(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    engine: AsyncEngine | None = None,
    redis: ArqRedis | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> IngesterApp:
    """The ingester app. With `engine` and `redis` given, the caller owns them; without,
    the app builds them at startup (from the settings) and closes them at shutdown.
    `clock` stamps each event's `received_at` (the demo runs a sped-up clock)."""
    ingester = Ingester(settings, clock)
    if engine is not None and redis is not None:
        ingester.attach(engine, redis)  # usable without a lifespan (httpx.ASGITransport)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        own_engine: AsyncEngine | None = None
        own_redis: ArqRedis | None = None
        if ingester.writer is None:
            own_engine = make_async_engine(settings.database_url) if engine is None else None
            if redis is None:
                if not settings.redis_url:
                    raise RuntimeError("the ingester needs settings.redis_url or a redis pool")
                own_redis = await create_pool(RedisSettings.from_dsn(settings.redis_url))
            eng = engine if engine is not None else own_engine
            red = redis if redis is not None else own_redis
            assert eng is not None
            assert red is not None
            ingester.attach(eng, red)
        try:
            yield
        finally:
            if ingester.writer is not None:
                await ingester.writer.close()
            if own_redis is not None:
                await own_redis.aclose()
            if own_engine is not None:
                await own_engine.dispose()

    rest = Starlette(
        routes=[Route("/healthz", ingester.healthz, methods=["GET"])], lifespan=lifespan
    )
    return IngesterApp(ingester, rest)


def server_options(app: IngesterApp) -> dict[str, Any]:
    """uvicorn's settings for the ingester (the CLI's and `serve_ingester`'s): httptools
    (a dependency; twice h11's speed here), no access log (it nearly halves throughput)."""
    return {"app": app, "http": "httptools", "access_log": False}


def listening_socket(host: str, port: int) -> socket.socket:
    """The ingester's socket, bound and listening (0: a free port), for uvicorn to serve
    on; raises OSError (a port in use, an address not here) with nothing left open."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.asynccontextmanager
async def serve_ingester(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Callable[[], datetime] = utcnow,
) -> AsyncIterator[int]:
    """Serve the ingester on this event loop (uvicorn, no access log) until the block
    exits; yields the port (0: a free one). For the demo and tests; `campaign webhooks`
    runs it as its own process."""
    if not settings.redis_url:
        raise RuntimeError("serve_ingester needs settings.redis_url")
    engine = make_async_engine(settings.database_url)
    redis = await create_pool(RedisSettings.from_dsn(settings.redis_url))
    app = create_app(settings, engine=engine, redis=redis, clock=clock)
    server = uvicorn.Server(
        uvicorn.Config(**server_options(app), log_level="warning", lifespan="off")
    )
    sock: socket.socket | None = None
    try:
        sock = listening_socket(host, port)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="ingester-server")
        try:
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("the ingester stopped while starting")
                await asyncio.sleep(0.005)
            yield int(sock.getsockname()[1])
        finally:
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        if sock is not None:
            sock.close()
        if app.ingester.writer is not None:
            await app.ingester.writer.close()
        await redis.aclose()
        await engine.dispose()
