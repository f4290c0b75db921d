"""The webhook ingester: an ASGI app (plain Starlette) that EnableX posts every event to.

`POST /webhooks/enablex/{token}`: check the path token (constant time), read the body up to
the size limit, decrypt, parse, store the raw event in `webhook_event` (deduplicated on its
key) and only then answer 200; the stored events are then handed to the workers, one entry
per commit group on a Redis list that a worker pops at once (an arq job per group would
wait for the worker's poll and job start-up on every IVR turn). Nothing else happens
here: applying is the worker's job.

Status codes: 404 wrong token (no detail), 413 body too large, 415 plaintext refused by
the settings, 400 undecryptable / not JSON / not an event, 503 database unreachable (EnableX
redelivers), 200 stored or already stored. Every refusal is logged without the payload.

Group commit: concurrent requests are written together. A request's event joins the
pending group; a writer takes the whole group into one multi-row `INSERT ... ON CONFLICT DO
NOTHING` and one commit, and each request waits on a future that resolves only when its
group has committed. Up to `writers` groups are written at once (one on SQLite), so under
light load an event is written at once and under heavy load groups grow by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import uvicorn
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import DataError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from campaigns.config import Settings
from campaigns.db import make_async_engine
from campaigns.enablex.crypto import ALGORITHM_HEADERS, decrypt_payload
from campaigns.enablex.events import dedupe_key, parse_event
from campaigns.errors import WebhookDecodeError
from campaigns.models import utcnow
from campaigns.store import events as store

log = logging.getLogger(__name__)

APPLY_JOB = "apply_events"
MAX_GROUP = 500
OK = Response(b'{"status":"ok"}', media_type="application/json")


def apply_job_id(first_event_id: int) -> str:
    return f"apply-events:{first_event_id}"


def feed_key(queue_name: str) -> str:
    """The Redis list the ingester pushes stored event groups to, next to the arq queue."""
    return f"{queue_name}:apply-feed"


async def enqueue_apply(redis: ArqRedis, queue_name: str, event_ids: list[int]) -> None:
    """Hand a group of stored events to the workers: one entry (the ids, as JSON) on the
    apply feed, which a worker pops at once (`workers.event_jobs.ApplyFeed`). It is only a
    wake-up: the events are in SQL already, and the sweeper applies any a lost Redis or a
    dead worker left behind."""
    if event_ids:
        await cast(Awaitable[int], redis.rpush(feed_key(queue_name), json.dumps(event_ids)))


class StoreUnavailable(Exception):
    """The database could not store the event: answer 503 so that EnableX redelivers."""


class StoreRefused(Exception):
    """The database refused this payload itself (it can never be stored): answer 400."""


@dataclass
class _Pending:
    event: store.NewEvent
    done: asyncio.Future[None]


class GroupWriter:
    """Writes events in groups; `write` returns once the event's group has committed."""

    def __init__(
        self, engine: AsyncEngine, redis: ArqRedis, queue_name: str, *, writers: int
    ) -> None:
        self._engine = engine
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
        if not self._scheduled and self._active < self._writers:
            # Start on the next loop turn: the requests of this turn join the group.
            self._scheduled = True
            loop.call_soon(self._start)
        await item.done

    def _start(self) -> None:
        self._scheduled = False
        while self._pending and self._active < self._writers:
            group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
            self._active += 1
            task = asyncio.create_task(self._flush(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, group: list[_Pending]) -> None:
        try:
            ids = await self._insert(group)
        finally:
            self._active -= 1
            if self._pending and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._start)
        if ids:
            try:
                await enqueue_apply(self._redis, self._queue_name, ids)
            except (RedisError, OSError, TimeoutError) as exc:
                # Stored: the sweeper applies it. Redis may be lost without losing events.
                log.warning("could not enqueue %d stored events: %r", len(ids), exc)

    async def _insert(self, group: list[_Pending]) -> list[int]:
        try:
            async with self._engine.begin() as conn:
                ids = await store.insert_events(conn, [p.event for p in group])
        except SQLAlchemyError as exc:
            if len(group) == 1:
                _fail(group[0], exc)
                return []
            # One bad row must not fail its neighbours: write them one by one.
            ids = []
            for item in group:
                try:
                    async with self._engine.begin() as conn:
                        ids += await store.insert_events(conn, [item.event])
                except SQLAlchemyError as one:
                    _fail(item, one)
                else:
                    _resolve(item)
            return ids
        except OSError as exc:
            for item in group:
                _fail(item, exc)
            return []
        for item in group:
            _resolve(item)
        return ids

    async def close(self) -> None:
        while self._tasks or self._pending:
            if self._pending and not self._scheduled and self._active < self._writers:
                self._start()
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                await asyncio.sleep(0.001)


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


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge
        except ValueError:
            raise BodyTooLarge from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _refuse(status: int, why: str, request: Request) -> Response:
    client = request.client.host if request.client else "?"
    log.warning("webhook refused %s from %s: %s", status, client, why)
    return JSONResponse({"error": why}, status_code=status)


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

    async def webhook(self, request: Request) -> Response:
        token = str(request.path_params.get("token", "")).encode()
        if not self._token or not hmac.compare_digest(token, self._token):
            log.warning("webhook refused 404: wrong path token")
            return Response(status_code=404)
        try:
            body = await _read_body(request, self.settings.webhook_max_body_bytes)
        except BodyTooLarge:
            return _refuse(413, "body too large", request)
        except ClientDisconnect:
            return Response(status_code=400)
        headers = request.headers
        plaintext = not any(h in headers for h in ALGORITHM_HEADERS)
        if plaintext and not self.settings.webhook_accept_plaintext:
            return _refuse(415, "plaintext deliveries are refused: encrypt the payload", request)
        try:
            data = decrypt_payload(headers, body, self.settings.enablex_app_id)
            event = parse_event(data, amd_field=self.settings.amd_field)
        except WebhookDecodeError as exc:
            return _refuse(400, exc.reason, request)
        if "\\u0000" in json.dumps(data):
            return _refuse(400, "payload contains a NUL character", request)
        new = store.NewEvent(
            dedupe_key=dedupe_key(data, amd_field=self.settings.amd_field),
            voice_id=event.voice_id,
            broadcast_id=event.broadcast_id,
            payload=data,
            received_at=self.clock(),
        )
        assert self.writer is not None
        try:
            await self.writer.write(new)
        except StoreRefused as exc:
            return _refuse(400, f"payload cannot be stored: {exc}", request)
        except StoreUnavailable as exc:
            log.error("webhook not stored, database unavailable: %s", exc)
            return JSONResponse({"error": "database unavailable"}, status_code=503)
        return OK

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


def create_app(
    settings: Settings,
    *,
    engine: AsyncEngine | None = None,
    redis: ArqRedis | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> Starlette:
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

    routes = [
        Route("/webhooks/enablex/{token}", ingester.webhook, methods=["POST"]),
        Route("/healthz", ingester.healthz, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.ingester = ingester
    return app


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
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    )
    try:
        sock.bind((host, port))
        sock.listen(1024)
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
        sock.close()
        if app.state.ingester.writer is not None:
            await app.state.ingester.writer.close()
        await redis.aclose()
        await engine.dispose()
