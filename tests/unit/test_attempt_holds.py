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


async def test_an_urgent_apply_takes_at_once_what_only_an_ordinary_one_holds() -> None:
    """It does not wait behind a backlog's group: it goes on with the calls that are free,
    and its scope keeps the release of the apply it passed over."""
    holds = AttemptHolds()
    async with holds.scope() as ordinary:
        await ordinary([1, 2])
        async with holds.scope(urgent=True) as urgent:
            await asyncio.wait_for(urgent([2, 3]), timeout=0.5)
            assert holds.held() == {1, 2, 3}
            assert len(urgent.passed) == 1
            (release,) = urgent.passed
            assert not release.is_set()
        assert holds.held() == {1, 2}  # 2 stays with the apply that took it first
    assert release.is_set()
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


@pytest.mark.parametrize(("first_urgent", "second_urgent"), [(True, False), (True, True)])
async def test_an_apply_waits_for_an_urgent_one_of_the_same_calls(
    first_urgent: bool, second_urgent: bool
) -> None:
    """An urgent apply is short: an ordinary apply, or another urgent one, waits for it
    rather than find its calls locked and hand its events back."""
    holds = AttemptHolds()
    order: list[str] = []
    first_holds = asyncio.Event()
    first_may_end = asyncio.Event()

    async def first() -> None:
        async with holds.scope(urgent=first_urgent) as acquire:
            await acquire([1])
            first_holds.set()
            await first_may_end.wait()
            order.append("first ends")

    async def second() -> None:
        async with holds.scope(urgent=second_urgent) as acquire:
            await acquire([1, 2])
            order.append("second goes on")
            assert not acquire.passed

    running = asyncio.create_task(first())
    await first_holds.wait()
    waiting = asyncio.create_task(second())
    await asyncio.sleep(0.05)
    assert order == []
    first_may_end.set()
    await asyncio.wait_for(asyncio.gather(running, waiting), timeout=1)
    assert order == ["first ends", "second goes on"]
    assert holds.waits == 1
