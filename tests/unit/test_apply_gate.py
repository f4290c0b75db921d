"""The SQLite apply gate: one holder at a time, urgent waiters first, none lost."""

from __future__ import annotations

import asyncio

import pytest

from workers.apply_gate import ApplyGate


async def _queue_up(gate: ApplyGate, order: list[str], name: str, *, urgent: bool) -> None:
    async with gate.hold(urgent=urgent):
        order.append(name)
        await asyncio.sleep(0)


async def test_urgent_waiters_go_before_earlier_others_and_each_kind_in_order() -> None:
    gate = ApplyGate()
    order: list[str] = []
    async with gate.hold(urgent=False):
        tasks = [
            asyncio.create_task(_queue_up(gate, order, name, urgent=name.startswith("u")))
            for name in ("o1", "o2", "u1", "o3", "u2")
        ]
        await asyncio.sleep(0.01)  # all five are waiting now
        assert gate.waiting(urgent=True) == 2
        assert gate.waiting(urgent=False) == 3
        assert order == []  # nobody runs while the gate is held
    await asyncio.gather(*tasks)
    assert order == ["u1", "u2", "o1", "o2", "o3"]
    assert not gate.held


async def test_one_holder_at_a_time() -> None:
    gate = ApplyGate()
    inside = 0
    most = 0

    async def work(urgent: bool) -> None:
        nonlocal inside, most
        async with gate.hold(urgent=urgent):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.001)
            inside -= 1

    await asyncio.gather(*(work(i % 3 == 0) for i in range(30)))
    assert most == 1
    assert not gate.held


async def test_a_cancelled_waiter_does_not_keep_the_gate() -> None:
    gate = ApplyGate()
    order: list[str] = []
    async with gate.hold(urgent=False):
        doomed = asyncio.create_task(_queue_up(gate, order, "cancelled", urgent=True))
        later = asyncio.create_task(_queue_up(gate, order, "later", urgent=False))
        await asyncio.sleep(0.01)
        doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await asyncio.wait_for(later, 1)
    assert order == ["later"]
    assert not gate.held


async def test_a_waiter_cancelled_as_the_gate_reaches_it_hands_it_on() -> None:
    gate = ApplyGate()
    order: list[str] = []
    holder = gate.hold(urgent=False)
    await holder.__aenter__()
    doomed = asyncio.create_task(_queue_up(gate, order, "cancelled", urgent=True))
    later = asyncio.create_task(_queue_up(gate, order, "later", urgent=False))
    await asyncio.sleep(0.01)
    await holder.__aexit__(None, None, None)  # hands the gate to `doomed` ...
    doomed.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await asyncio.wait_for(later, 1)
    assert order == ["later"]
    assert not gate.held
