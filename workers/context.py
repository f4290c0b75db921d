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
from campaigns.db import async_session_factory, make_async_engine
from campaigns.enablex.client import EnablexClient
from campaigns.models import utcnow


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


async def build_deps(
    settings: Settings, redis: ArqRedis, *, clock: Callable[[], datetime] = utcnow
) -> Deps:
    engine = make_async_engine(settings.database_url)
    http = httpx.AsyncClient(
        timeout=settings.enablex_timeout,
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=20),
    )
    enablex = EnablexClient(
        http,
        base_url=settings.enablex_base_url,
        app_id=settings.enablex_app_id,
        app_key=settings.enablex_app_key,
        timeout=settings.enablex_timeout,
    )
    return Deps(settings, engine, async_session_factory(engine), redis, http, enablex, clock)


async def close_deps(deps: Deps) -> None:
    await deps.http.aclose()
    await deps.engine.dispose()


def deps_of(ctx: Mapping[str, Any]) -> Deps:
    """The Deps object of an arq job context."""
    deps = ctx["deps"]
    if not isinstance(deps, Deps):
        raise TypeError("the arq context has no Deps: is the worker started by workers.settings?")
    return deps
