"""The calls a worker's own apply transactions are applying, so that they wait for each
other instead of skipping each other.

An apply locks its calls' attempt rows with `SKIP LOCKED`: events of a call another
transaction holds are handed back to the feed (`ApplyResult.busy`) and applied later.
Across worker processes that is right (never wait on another process's transaction).
Within one process it was mostly waste: under a backlog, consecutive groups on the feed
carry the next events of the same calls, and a worker applies several groups at once
(two feeds, several slots each). In one bench/ingest_bench.py run a third of the events
a worker took were skipped this way: claimed, found busy, pushed back, popped and
claimed again, and an urgent event so skipped went to the back of its feed.

`AttemptHolds` is an in-process table of the attempts being applied. Before locking, an
apply takes all of its attempts at once, waiting while any of them is taken by another
ordinary apply of this process; it gives them back after its transaction ends. Urgent
applies (a person may be waiting for the next prompt) keep the old way both ways: they
never wait, taking the attempts that are free, and nothing waits for them (the calls
they hold are handed back by `SKIP LOCKED`, as before). An apply takes its
attempts once and waits before it holds any attempt lock, so two applies never wait for
each other in a circle. The wait is bounded (`MAX_WAIT_SECONDS`): past it, the apply
goes on with the attempts that are free, and `SKIP LOCKED` decides as before.
PostgreSQL only: on SQLite one apply at a time holds the whole database (`ApplyGate`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager

MAX_WAIT_SECONDS = 2.0

Acquire = Callable[[Collection[int]], Awaitable[None]]


class AttemptHolds:
    def __init__(self, *, max_wait: float = MAX_WAIT_SECONDS) -> None:
        self.max_wait = max_wait
        # attempt id -> (set when given back, whether its holder is an ordinary apply)
        self._held: dict[int, tuple[asyncio.Event, bool]] = {}
        self.waits = 0  # acquisitions that had to wait

    def held(self) -> set[int]:
        return set(self._held)

    @asynccontextmanager
    async def scope(self, *, wait: bool = True) -> AsyncIterator[Acquire]:
        """For one apply transaction: yields `acquire(attempt_ids)`, to be awaited once
        before the attempts are locked; what it took is given back when the block ends.
        An ordinary apply waits only for other ordinary applies (the backlog's groups);
        attempts an urgent apply holds are left to `SKIP LOCKED` (it gives way, as it did
        before). `wait=False` (an urgent apply: a person may be waiting for its next
        prompt): take the attempts that are free at once and leave the others to `SKIP
        LOCKED`, rather than wait behind a large apply of the other feed."""
        released = asyncio.Event()
        mine: list[int] = []

        async def acquire(attempt_ids: Collection[int]) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + (self.max_wait if wait else 0.0)
            waited = False
            while True:
                taken = {
                    holder[0]
                    for i in attempt_ids
                    if (holder := self._held.get(i)) is not None and holder[1]
                }
                if not taken:
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break  # go on with what is free; SKIP LOCKED decides the rest
                waited = True
                waiting = [asyncio.ensure_future(event.wait()) for event in taken]
                try:
                    await asyncio.wait(
                        waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for future in waiting:
                        future.cancel()
            self.waits += waited
            for attempt_id in attempt_ids:
                if attempt_id not in self._held:
                    self._held[attempt_id] = (released, wait)
                    mine.append(attempt_id)

        try:
            yield acquire
        finally:
            for attempt_id in mine:
                if self._held.get(attempt_id, (None,))[0] is released:
                    del self._held[attempt_id]
            released.set()
