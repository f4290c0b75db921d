"""The workers' apply feed: groups of stored event ids pushed by the ingester, popped and
applied at once; groups already waiting are merged into one apply (real Redis and
database, the worker's own `ApplyFeed`)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta

from arq.connections import ArqRedis, RedisSettings, create_pool
from sqlalchemy import func, select

from campaigns.config import Settings
from campaigns.db import make_async_engine
from campaigns.models import WebhookEvent, utcnow
from campaigns.store import events as store
from campaigns.webhooks import feed_key
from tests.integration.factories import running_workers
from workers.context import Deps, build_deps, close_deps
from workers.event_jobs import (
    APPLY_GROUP,
    MERGE_POP,
    SWEEP_BACKLOG_LIMIT,
    ApplyFeed,
    sweep_events,
)


def _event(i: int, age: timedelta = timedelta(hours=1)) -> store.NewEvent:
    voice_id = f"never-submitted-{uuid.uuid4().hex[:8]}-{i}"
    payload = {
        "voice_id": voice_id,
        "broadcast_id": "b-unknown",
        "state": "connected",
        "from": "12025550100",
        "to": "12025550123",
        "timestamp": "2024-05-01T10:52:10.000Z",
    }
    return store.NewEvent(
        dedupe_key=voice_id,
        voice_id=voice_id,
        broadcast_id="b-unknown",
        payload=payload,
        received_at=utcnow() - age,
    )


async def _stored(database_url: str, redis_url: str, count: int) -> tuple[Settings, list[int]]:
    """Settings on a fresh queue, and `count` stored events of broadcasts never submitted
    (quarantined when applied: `early_event_timeout_seconds` is 1, they are an hour old)."""
    settings = replace(
        Settings(database_url=database_url, redis_url=redis_url),
        queue_name=f"test-feed-{uuid.uuid4().hex[:8]}",
        early_event_timeout_seconds=1,
    )
    engine = make_async_engine(database_url)
    async with engine.begin() as conn:
        ids = await store.insert_events(conn, [_event(i) for i in range(count)])
    await engine.dispose()
    return settings, ids


@asynccontextmanager
async def running_feed(
    settings: Settings, redis: ArqRedis, *, urgent: bool = False
) -> AsyncIterator[tuple[ApplyFeed, Deps]]:
    """A worker's apply feed (one slot) on `settings`' queue, running for the block."""
    deps = await build_deps(settings, redis)
    feed = ApplyFeed(deps, redis, concurrency=1, urgent=urgent)
    feed.start()
    try:
        yield feed, deps
    finally:
        await feed.close()
        await close_deps(deps)


async def _handled(deps: Deps, ids: list[int]) -> int:
    """How many of the events `ids` were applied (quarantined: their broadcast is unknown)."""
    async with deps.sessions() as session:
        count = await session.scalar(
            select(func.count()).where(WebhookEvent.id.in_(ids), WebhookEvent.quarantined.is_(True))
        )
    return int(count or 0)


async def test_waiting_groups_are_merged_into_one_apply_and_none_is_lost(
    database_url: str, redis_url: str
) -> None:
    settings, ids = await _stored(database_url, redis_url, APPLY_GROUP + 10)
    small, big = ids[:10], ids[10:]
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    key = feed_key(settings.queue_name)
    # Five small groups wait on the feed, then one too big to merge with them.
    for start in range(0, 10, 2):
        await redis.rpush(key, json.dumps(small[start : start + 2]))
    await redis.rpush(key, json.dumps(big))
    async with running_feed(settings, redis) as (feed, deps):
        for _ in range(200):
            if feed.applies >= 2 and not await redis.llen(key):
                break
            await asyncio.sleep(0.05)
    assert await _handled(deps, ids) == len(ids)  # every event taken and handled, none left
    assert feed.applies == 2  # the five small groups in one apply, the big one alone
    assert await redis.llen(key) == 0
    await redis.aclose()


async def test_a_merge_takes_the_groups_that_fit_and_leaves_the_rest_in_order(
    database_url: str, redis_url: str
) -> None:
    """Groups are popped several per round trip; the first that does not fit and every
    group behind it go back to the head of the feed in the order they came."""
    settings, _ = await _stored(database_url, redis_url, 0)
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    key = feed_key(settings.queue_name)
    groups = [[1, 2], [3, 4, 5], list(range(10, 10 + APPLY_GROUP)), [6], [7, 8]]
    groups += [[100 + i] for i in range(MERGE_POP * 2)]
    for group in groups:
        await redis.rpush(key, json.dumps(group))
    deps = await build_deps(settings, redis)
    try:
        feed = ApplyFeed(deps, redis, concurrency=1)
        assert await feed._more(APPLY_GROUP) == [1, 2, 3, 4, 5]
        left = [json.loads(item) for item in await redis.lrange(key, 0, -1)]
        assert left == groups[2:]
        await redis.delete(key)
        for group in groups[3:]:
            await redis.rpush(key, json.dumps(group))
        # more than one round trip's worth, all of it fitting: everything, in order
        assert await feed._more(APPLY_GROUP) == [i for g in groups[3:] for i in g]
        assert await redis.llen(key) == 0
    finally:
        await close_deps(deps)
        await redis.delete(key)
        await redis.aclose()


async def test_the_sweeper_leaves_a_backlog_to_the_feed_and_sweeps_once_it_is_gone(
    database_url: str, redis_url: str
) -> None:
    settings, ids = await _stored(database_url, redis_url, 5)
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    key = feed_key(settings.queue_name)
    for event_id in ids:  # a backlog: more groups waiting than the sweep's limit
        for _ in range(SWEEP_BACKLOG_LIMIT // len(ids) + 1):
            await redis.rpush(key, json.dumps([event_id]))
    deps = await build_deps(settings, redis)
    try:
        busy = await sweep_events({"deps": deps})
        await redis.delete(key)  # the backlog drained (or Redis lost it)
        done = await sweep_events({"deps": deps})
        handled = await _handled(deps, ids)
    finally:
        await close_deps(deps)
        await redis.aclose()
    assert busy.startswith(f"{len(ids) * (SWEEP_BACKLOG_LIMIT // len(ids) + 1)} groups")
    assert done.startswith("re-applied 0, quarantined 5")
    assert handled == len(ids)


async def test_a_malformed_feed_entry_does_not_stop_the_feed(
    database_url: str, redis_url: str
) -> None:
    settings, ids = await _stored(database_url, redis_url, 3)
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    key = feed_key(settings.queue_name)
    await redis.rpush(key, b"not json at all")
    try:
        async with running_feed(settings, redis) as (feed, _):
            await asyncio.sleep(0.2)
            await redis.rpush(key, json.dumps(ids))  # after the bad entry was popped
            for _ in range(300):  # the feed pauses 1 s after a failed pop; a busy CI is slow
                if feed.applies >= 1:
                    break
                await asyncio.sleep(0.05)
    finally:
        await redis.aclose()
    assert feed.applies == 1
    assert feed.applied == 0  # quarantined (never submitted), handled all the same


async def test_urgent_events_are_applied_ahead_of_a_backlog_on_the_other_feed(
    database_url: str, redis_url: str
) -> None:
    """A real worker runs both feeds: a group on the urgent feed (a live call's answer)
    is applied while a backlog of other events still waits on the other one."""
    backlog_groups = 40
    settings, ids = await _stored(database_url, redis_url, backlog_groups * APPLY_GROUP + 3)
    backlog, urgent = ids[:-3], ids[-3:]
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    queue = settings.queue_name
    for start in range(0, len(backlog), APPLY_GROUP):
        await redis.rpush(feed_key(queue), json.dumps(backlog[start : start + APPLY_GROUP]))
    await redis.rpush(feed_key(queue, urgent=True), json.dumps(urgent))
    deps = await build_deps(settings, redis)
    try:
        async with running_workers(settings, redis_url):
            for _ in range(600):
                if await _handled(deps, urgent) == len(urgent):
                    break
                await asyncio.sleep(0.02)
            waiting_then = await redis.llen(feed_key(queue))
            for _ in range(1200):
                if not await redis.llen(feed_key(queue)) and await _handled(deps, ids) == len(ids):
                    break
                await asyncio.sleep(0.05)
        handled = await _handled(deps, ids)
    finally:
        await close_deps(deps)
        await redis.aclose()
    assert waiting_then > 0, "the urgent group waited for the whole backlog"
    assert handled == len(ids)  # and the backlog was applied all the same


async def test_a_waiting_urgent_group_is_handed_to_a_job_that_keeps_its_urgency(
    database_url: str, redis_url: str
) -> None:
    """Events of a broadcast not recorded yet wait in an `apply_events` job; one from the
    urgent feed carries the flag, so that what it finds busy later goes back there."""
    settings, _ = await _stored(database_url, redis_url, 0)
    engine = make_async_engine(database_url)
    async with engine.begin() as conn:
        ids = await store.insert_events(conn, [_event(i, timedelta(0)) for i in range(2)])
    await engine.dispose()
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    await redis.rpush(feed_key(settings.queue_name, urgent=True), json.dumps(ids))
    try:
        async with running_feed(settings, redis, urgent=True):
            for _ in range(200):
                jobs = await redis.queued_jobs(queue_name=settings.queue_name)
                if jobs:
                    break
                await asyncio.sleep(0.05)
    finally:
        await redis.aclose()
    assert [(job.function, job.args) for job in jobs] == [("apply_events", (ids, True))]
