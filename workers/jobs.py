"""The engine's arq jobs: thin, take ids, safe to run twice."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from arq import Retry

from campaigns import engine
from campaigns.pacing import Pacer
from workers.context import deps_of

log = logging.getLogger(__name__)

SUBMIT_MAX_TRIES = 12


def _pacer(ctx: dict[str, Any]) -> Pacer:
    """The worker's one Pacer (its Lua scripts registered once)."""
    pacer = ctx.get("pacer")
    if not isinstance(pacer, Pacer):
        pacer = ctx["pacer"] = Pacer(deps_of(ctx).redis)
    return pacer


async def dispatch_tick(ctx: dict[str, Any]) -> str:
    """Every second: claim what is due for every running campaign, in paced batches."""
    deps = deps_of(ctx)
    result = await engine.dispatch_all(deps.sessions, deps.redis, _pacer(ctx), deps.clock())
    return f"claimed {result.claimed} in {len(result.batches)} batches"


async def submit_batch(ctx: dict[str, Any], batch_id: str) -> str:
    deps = deps_of(ctx)
    outcome = await engine.submit_batch(
        deps.sessions,
        deps.enablex,
        batch_id,
        event_url=deps.settings.webhook_event_url,
        now=deps.clock(),
        pacer=_pacer(ctx),
    )
    if outcome.status == "retry":
        tries = int(ctx.get("job_try", 1))
        if tries >= SUBMIT_MAX_TRIES:
            await engine.release_batch(
                deps.sessions,
                batch_id,
                f"gave up after {tries} tries: {outcome.detail}",
                deps.clock(),
            )
            return f"released after {tries} tries"
        backoff = min(60.0, 0.5 * 2 ** (tries - 1))
        defer = max(backoff, outcome.retry_after or 0.0)
        log.info("batch %s: transient error (%s), retry in %.1fs", batch_id, outcome.detail, defer)
        raise Retry(defer=timedelta(seconds=defer))
    return f"{outcome.status} {outcome.detail}".strip()


async def sweep(ctx: dict[str, Any]) -> str:
    deps = deps_of(ctx)
    settings = deps.settings
    result = await engine.sweep(
        deps.sessions,
        deps.redis,
        now=deps.clock(),
        attempt_timeout=timedelta(seconds=settings.attempt_timeout_seconds),
        # Past this, a batch still `submitting` belongs to a worker that died mid-POST.
        submit_timeout=timedelta(seconds=settings.enablex_timeout * 2 + 5),
    )
    return (
        f"settled {result.settled_unknown} unknown, {result.marked_unknown} batches unknown, "
        f"{result.resubmitted} resubmitted, {result.campaigns_completed} campaigns completed"
    )
