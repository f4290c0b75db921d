"""A worker's table of the calls its own applies hold (workers/attempt_holds.py)."""

from __future__ import annotations

import asyncio

import pytest

from workers.attempt_holds import AttemptHolds


async def test_an_apply_waits_for_another_apply_of_the_same_calls_and_not_for_others() -> None:
    holds = AttemptHolds()
    order: list[str] = []
    first_holds = asyncio.Event()
    first_may_end = asyncio.Event()

    async def first() -> None:
        async with holds.scope() as acquire:
            await acquire([1, 2, 3])
            first_holds.set()
            await first_may_end.wait()
            order.append("first ends")

    async def overlapping() -> None:
        async with holds.scope() as acquire:
            await acquire([3, 4])
            order.append("overlapping goes on")

    async def disjoint() -> None:
        async with holds.scope() as acquire:
            await acquire([5, 6])
            order.append("disjoint goes on")

    running = asyncio.create_task(first())
    await first_holds.wait()
    waiting = asyncio.create_task(overlapping())
    await asyncio.wait_for(disjoint(), timeout=1)
    await asyncio.sleep(0.05)
    assert order == ["disjoint goes on"]
    assert holds.held() == {1, 2, 3}  # the waiting apply took nothing meanwhile
    first_may_end.set()
    await asyncio.wait_for(asyncio.gather(running, waiting), timeout=1)
    assert order == ["disjoint goes on", "first ends", "overlapping goes on"]
    assert holds.waits == 1
    assert holds.held() == set()


async def test_an_urgent_apply_takes_what_is_free_at_once() -> None:
    holds = AttemptHolds()
    async with holds.scope() as acquire:
        await acquire([1, 2])
        async with holds.scope(wait=False) as urgent:
            await asyncio.wait_for(urgent([2, 3]), timeout=0.5)
            assert holds.held() == {1, 2, 3}
        assert holds.held() == {1, 2}  # 2 stays with the apply that took it first
    assert holds.held() == set()
    assert holds.waits == 0


async def test_the_wait_is_bounded_and_a_failed_apply_gives_its_calls_back() -> None:
    holds = AttemptHolds(max_wait=0.1)
    seen: list[set[int]] = []

    async def failing_apply() -> None:
        async with holds.scope() as acquire:
            await acquire([7])
            async with holds.scope() as late:
                await asyncio.wait_for(late([7, 8]), timeout=1)  # gives up after 0.1 s
                seen.append(holds.held())
            raise RuntimeError("the apply failed")

    with pytest.raises(RuntimeError):
        await failing_apply()
    assert seen == [{7, 8}]
    assert holds.held() == set()
    assert holds.waits == 1


async def test_an_ordinary_apply_does_not_wait_for_an_urgent_one() -> None:
    """Calls an urgent apply holds are left to SKIP LOCKED, as before: the ordinary
    apply goes on at once and takes only what is free."""
    holds = AttemptHolds()
    async with holds.scope(wait=False) as urgent:
        await urgent([1])
        async with holds.scope() as ordinary:
            await asyncio.wait_for(ordinary([1, 2]), timeout=0.5)
            assert holds.held() == {1, 2}
        assert holds.held() == {1}
    assert holds.waits == 0
