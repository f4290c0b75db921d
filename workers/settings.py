"""arq worker settings: `campaign worker`, or `arq workers.settings.WorkerSettings`.

Dependencies are built at start-up and closed at shutdown (workers/context.py). The
settings come from the environment once, at this entry point.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from datetime import datetime
from typing import Any

from arq import cron
from arq.connections import RedisSettings
from arq.worker import Worker

from campaigns.config import Settings
from campaigns.models import utcnow
from workers import jobs
from workers.context import build_deps, close_deps
from workers.event_jobs import (
    APPLY_CONCURRENCY,
    EVENT_CRON_JOBS,
    EVENT_FUNCTIONS,
    URGENT_CONCURRENCY,
    ApplyFeed,
)

EVERY_SECOND = set(range(60))
EVERY_5_SECONDS = set(range(0, 60, 5))


def worker_options(
    settings: Settings, redis_url: str, *, clock: Callable[[], datetime] = utcnow
) -> dict[str, Any]:
    """Keyword arguments for `arq.worker.Worker`, for this deployment's settings."""

    async def startup(ctx: dict[str, Any]) -> None:
        deps = ctx["deps"] = await build_deps(settings, ctx["redis"], clock=clock)
        # Both feeds within the worker's job limit, as the arq jobs are.
        urgent_slots = min(settings.worker_max_jobs, URGENT_CONCURRENCY)
        slots = min(settings.worker_max_jobs, APPLY_CONCURRENCY)
        feeds = ctx["apply_feeds"] = [
            ApplyFeed(deps, ctx["redis"], concurrency=urgent_slots, urgent=True),
            ApplyFeed(deps, ctx["redis"], concurrency=slots),
        ]
        for feed in feeds:
            feed.start()

    async def shutdown(ctx: dict[str, Any]) -> None:
        for feed in ctx.get("apply_feeds", []):
            if isinstance(feed, ApplyFeed):
                await feed.close()
        deps = ctx.get("deps")
        if deps is not None:
            await close_deps(deps)

    return {
        "functions": [jobs.submit_batch, *EVENT_FUNCTIONS],
        "cron_jobs": [
            cron(
                jobs.dispatch_tick,
                second=EVERY_SECOND,
                run_at_startup=True,
                timeout=30,
                max_tries=1,
            ),
            cron(jobs.sweep, second=EVERY_5_SECONDS, timeout=120, max_tries=1),
            *EVENT_CRON_JOBS,
        ],
        "redis_settings": RedisSettings.from_dsn(redis_url),
        "queue_name": settings.queue_name,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "poll_delay": settings.worker_poll_delay,
        "max_jobs": settings.worker_max_jobs,
        "max_tries": jobs.SUBMIT_MAX_TRIES + 1,
        "job_timeout": 120,
        "keep_result": 60,
        "handle_signals": True,
    }


def make_worker(
    settings: Settings, redis_url: str, *, clock: Callable[[], datetime] = utcnow, **extra: Any
) -> Worker:
    options = worker_options(settings, redis_url, clock=clock)
    options.update(extra)
    return Worker(**options)


async def close_worker(worker: Worker) -> None:
    """Stop an in-process worker (`handle_signals=False`) and run its shutdown.

    arq's `Worker.close()` cancels the running jobs, then gathers them without
    `return_exceptions`: a job cut off mid-flight raises CancelledError out of `close()`,
    and `on_shutdown` (closing the apply feed, the engine, the HTTP client) never runs.
    Here the jobs are cancelled and awaited first. A job cut off is run again later (arq
    re-queues it; every job is safe to run twice)."""
    worker.handle_sig(signal.SIGUSR1)
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
    worker.tasks.clear()
    await worker.close()


def __getattr__(name: str) -> Any:
    """`arq workers.settings.WorkerSettings`: built on first access, from the environment
    (REDIS_URL must be set for this form; `campaign worker` can start a private Redis)."""
    if name == "WorkerSettings":
        settings = Settings.from_env(os.environ)
        return worker_options(settings, settings.redis_url or "redis://127.0.0.1:6379")
    raise AttributeError(name)
