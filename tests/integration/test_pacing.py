"""The shared calls-per-second pacer in real Redis."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest
from redis.asyncio import Redis

from campaigns.pacing import ADMIT_WINDOW, Pacer, sent_key
from campaigns.scheduling import PACING_MARGIN


async def test_slots_are_spaced_by_count_over_rate(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    pacer = Pacer(redis, lead=0.2, horizon=1.5)
    try:
        before = time.time()
        first = await pacer.slot(1, rate=10, count=5)
        second = await pacer.slot(1, rate=10, count=5)
        assert first is not None
        assert second is not None
        assert first.timestamp() == pytest.approx(before + 0.2, abs=0.05)
        assert (second - first).total_seconds() == pytest.approx(0.5 * PACING_MARGIN, abs=1e-3)
        # Another campaign has its own pacer.
        other = await pacer.slot(2, rate=10, count=5)
        assert other is not None
        assert other.timestamp() == pytest.approx(before + 0.2, abs=0.05)
    finally:
        await redis.aclose()


async def test_slots_beyond_the_horizon_are_refused(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    pacer = Pacer(redis, lead=0.1, horizon=1.0)
    try:
        granted: list[datetime] = []
        while (slot := await pacer.slot(3, rate=10, count=2)) is not None:
            granted.append(slot)
        # 0.1 s lead, 0.206 s apart, up to 1.0 s ahead: five slots.
        assert len(granted) == 5
        await asyncio.sleep(0.25)
        assert await pacer.slot(3, rate=10, count=2) is not None
    finally:
        await redis.aclose()


async def test_an_unused_slot_tail_is_given_back(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    pacer = Pacer(redis, lead=0.1, horizon=5.0)
    try:
        first = await pacer.slot(4, rate=10, count=10)
        assert first is not None
        await pacer.give_back(4, start=first, rate=10, asked=10, used=2)
        second = await pacer.slot(4, rate=10, count=1)
        assert second is not None
        assert (second - first).total_seconds() == pytest.approx(0.2 * PACING_MARGIN, abs=1e-3)
    finally:
        await redis.aclose()


async def test_many_concurrent_dispatchers_never_exceed_the_rate(redis_url: str) -> None:
    """Eight dispatchers hammer one campaign for 2 s: in any one-second window of slot times
    there are at most `rate` calls, and together they get the whole rate."""
    clients = [Redis.from_url(redis_url) for _ in range(8)]
    pacers = [Pacer(c, lead=0.1, horizon=1.0) for c in clients]
    rate = 40.0
    slots: list[float] = []
    started = time.time()

    async def dispatcher(p: Pacer) -> None:
        while time.time() - started < 2.0:
            slot = await p.slot(5, rate=rate, count=4)
            if slot is not None:
                slots.extend([slot.timestamp()] * 4)
            await asyncio.sleep(0.005)

    try:
        await asyncio.gather(*(dispatcher(p) for p in pacers))
        slots.sort()
        left = peak = 0
        for right, t in enumerate(slots):
            while slots[left] <= t - 1.0:
                left += 1
            peak = max(peak, right - left + 1)
        assert peak <= rate
        in_run = [t for t in slots if started + 0.1 <= t < started + 2.0]
        assert len(in_run) / 1.9 == pytest.approx(rate, rel=0.1)
    finally:
        for c in clients:
            await c.aclose()


async def test_admission_holds_the_sent_calls_of_any_second_within_the_rate(
    redis_url: str,
) -> None:
    """Three batches of 5 at 10/s asked for at once: two go now, the third waits until the
    first has left the one-second window of calls actually sent."""
    redis = Redis.from_url(redis_url)
    pacer = Pacer(redis)
    try:
        started = time.monotonic()
        waits = [await pacer.admit(5, rate=10, count=5, batch_id=f"b{i}") for i in range(3)]
        elapsed = time.monotonic() - started
        assert waits[:2] == [0.0, 0.0]
        assert waits[2] == pytest.approx(ADMIT_WINDOW, abs=0.1)
        assert elapsed >= ADMIT_WINDOW - 0.05
        # Another campaign's window is its own.
        assert await pacer.admit(6, rate=10, count=10, batch_id="other") == 0.0
    finally:
        await redis.aclose()


async def test_admission_never_waits_for_ever(redis_url: str) -> None:
    """A batch larger than the rate goes alone; a waiting batch goes after `limit`."""
    redis = Redis.from_url(redis_url)
    pacer = Pacer(redis)
    try:
        assert await pacer.admit(7, rate=5, count=50, batch_id="big") == 0.0
        waited = await pacer.admit(7, rate=5, count=1, batch_id="next", limit=0.3)
        assert waited == pytest.approx(0.3, abs=0.01)
        members = await redis.zrange(sent_key(7), 0, -1)
        assert sorted(members) == [b"1:next", b"50:big"]
    finally:
        await redis.aclose()
