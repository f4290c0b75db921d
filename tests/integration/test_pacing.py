"""The shared calls-per-second budget in real Redis."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from campaigns.pacing import Pacer


async def test_bucket_grants_at_most_the_burst_then_refills_at_the_rate(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    pacer = Pacer(redis)
    try:
        assert await pacer.take(1, rate=10, burst=5, want=100) == 5
        assert await pacer.take(1, rate=10, burst=5, want=100) == 0
        await asyncio.sleep(0.35)
        got = await pacer.take(1, rate=10, burst=5, want=100)
        assert 2 <= got <= 4  # ~3.5 tokens refilled in 0.35 s
        # Another campaign has its own bucket.
        assert await pacer.take(2, rate=10, burst=5, want=3) == 3
    finally:
        await redis.aclose()


async def test_give_back_returns_unused_tokens_up_to_the_burst(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    pacer = Pacer(redis)
    try:
        assert await pacer.take(7, rate=1, burst=4, want=4) == 4
        await pacer.give_back(7, count=3, burst=4)
        assert await pacer.take(7, rate=1, burst=4, want=10) == 3
        await pacer.give_back(7, count=100, burst=4)
        assert await pacer.take(7, rate=1, burst=4, want=10) == 4
    finally:
        await redis.aclose()


async def test_many_concurrent_takers_never_exceed_the_rate(redis_url: str) -> None:
    """Eight 'workers' hammer one bucket for 1.5 s: the total stays within rate x time."""
    clients = [Redis.from_url(redis_url) for _ in range(8)]
    pacers = [Pacer(c) for c in clients]
    rate, burst = 40.0, 10.0
    granted = 0
    started = time.monotonic()

    async def worker(p: Pacer) -> None:
        nonlocal granted
        while time.monotonic() - started < 1.5:
            got = await p.take(3, rate=rate, burst=burst, want=3)
            granted += got  # (not `granted += await ...`: that reads `granted` first)
            await asyncio.sleep(0.005)

    try:
        await asyncio.gather(*(worker(p) for p in pacers))
        elapsed = time.monotonic() - started
        assert granted <= burst + rate * elapsed + 1
        assert granted >= rate * 1.0  # and the budget is actually usable
    finally:
        for c in clients:
            await c.aclose()
