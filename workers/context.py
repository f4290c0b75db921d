"""The typed dependencies every job reaches through the arq context.

Built once at worker start-up (`build_deps`) and closed at shutdown (`close_deps`): no
module-level engines, clients or settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from campaigns.config import Settings
from campaigns.db import async_session_factory, is_sqlite, make_async_engine
from campaigns.enablex.client import EnablexClient
from campaigns.enablex.transport import KEEPALIVE_SECONDS, KeepAliveTransport
from campaigns.models import utcnow
from workers.apply_gate import ApplyGate
from workers.attempt_holds import AttemptHolds

# Connections to EnableX per worker process; requests beyond wait in the client.
HTTP_CONNECTIONS = 20
# Connections for the IVR commands (play, hang up), on top of those. A 500-calls-per-
# second campaign sends about 1,500 commands a second, each waiting a round trip; with 20
# connections the urgent applies in bench/ingest_bench.py held their slots 4.4 ms per
# command sent, with 64 1.4 ms.
COMMAND_CONNECTIONS = 64


@dataclass
class Deps:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: ArqRedis
    http: httpx.AsyncClient
    enablex: EnablexClient
    # The clock every decision reads: tests inject one to check calling windows.
    clock: Callable[[], datetime] = field(default=utcnow)
    command_transport: KeepAliveTransport | None = None
    # SQLite (one writer): apply transactions one at a time, urgent first. None elsewhere.
    apply_gate: ApplyGate | None = None
    # PostgreSQL: this process's applies wait for each other's calls. None on SQLite.
    attempt_holds: AttemptHolds | None = None


async def build_deps(
    settings: Settings, redis: ArqRedis, *, clock: Callable[[], datetime] = utcnow
) -> Deps:
    engine = make_async_engine(settings.database_url)
    http = httpx.AsyncClient(
        timeout=settings.enablex_timeout,
        # An idle connection is dropped after KEEPALIVE_SECONDS (2 s), well before a
        # server's own idle timeout (uvicorn's default, which the simulator keeps, is 5 s,
        # as httpx's default expiry is): a connection the server closes as it is reused
        # fails the POST /broadcast with its outcome unknown, and that batch is not sent
        # again (seen once in a test run: a ReadError, that batch's numbers never dialled).
        limits=httpx.Limits(
            max_connections=HTTP_CONNECTIONS,
            max_keepalive_connections=20,
            keepalive_expiry=KEEPALIVE_SECONDS,
        ),
    )
    # IVR commands: many small requests, sent on the lean keep-alive transport directly.
    command_transport = KeepAliveTransport(max_connections=COMMAND_CONNECTIONS)
    enablex = EnablexClient(
        http,
        base_url=settings.enablex_base_url,
        app_id=settings.enablex_app_id,
        app_key=settings.enablex_app_key,
        timeout=settings.enablex_timeout,
        max_in_flight=HTTP_CONNECTIONS,
        command_transport=command_transport,
    )
    return Deps(
        settings,
        engine,
        async_session_factory(engine),
        redis,
        http,
        enablex,
        clock,
        command_transport=command_transport,
        apply_gate=ApplyGate() if is_sqlite(settings.database_url) else None,
        attempt_holds=None if is_sqlite(settings.database_url) else AttemptHolds(),
    )


async def close_deps(deps: Deps) -> None:
    await deps.http.aclose()
    if deps.command_transport is not None:
        await deps.command_transport.aclose()
    await deps.engine.dispose()


def deps_of(ctx: Mapping[str, Any]) -> Deps:
    """The Deps object of an arq job context."""
    deps = ctx["deps"]
    if not isinstance(deps, Deps):
        raise TypeError("the arq context has no Deps: is the worker started by workers.settings?")
    return deps
