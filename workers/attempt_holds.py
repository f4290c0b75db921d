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
apply takes all of its attempts at once, waiting while any of them is taken by an apply
it must give way to; it gives them back after its transaction ends. An ordinary apply
gives way to every other apply of this process; an urgent one (a person may be waiting
for the next prompt) only to another urgent one, short by nature, and never to the large
groups of a backlog: calls an ordinary apply holds are left to `SKIP LOCKED` and handed
back. An apply takes its attempts once and waits before it holds any attempt lock, so
two applies never wait for each other in a circle. The wait is bounded
(`MAX_WAIT_SECONDS`): past it, the apply goes on with the attempts that are free, and
`SKIP LOCKED` decides as before. PostgreSQL only: on SQLite one apply at a time holds
the whole database (`ApplyGate`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager

MAX_WAIT_SECONDS = 2.0

Acquire = Callable[[Collection[int]], Awaitable[None]]


class Scope:
    """One apply's share of the table: `acquire(attempt_ids)`, and what it left."""

    def __init__(self, acquire: Acquire) -> None:
        self.acquire = acquire
        # The release of each apply of this process that held attempts this one wanted
        # and went on without (an urgent apply does not wait for an ordinary one): the
        # events of those calls can be tried again once these are set.
        self.passed: set[asyncio.Event] = set()

    def __call__(self, attempt_ids: Collection[int]) -> Awaitable[None]:
        return self.acquire(attempt_ids)


class AttemptHolds:
    def __init__(self, *, max_wait: float = MAX_WAIT_SECONDS) -> None:
        self.max_wait = max_wait
        # attempt id -> (set when given back, whether its holder is an urgent apply)
        self._held: dict[int, tuple[asyncio.Event, bool]] = {}
        self.waits = 0  # acquisitions that had to wait

    def held(self) -> set[int]:
        return set(self._held)

    @asynccontextmanager
    async def scope(self, *, urgent: bool = False) -> AsyncIterator[Scope]:
        """For one apply transaction: yields a `Scope`, called once with the apply's
        attempt ids just before they are locked; what it took is given back when the
        block ends. An ordinary apply waits while any other apply of this process holds
        one of its attempts. An `urgent` one waits only for other urgent ones: it goes on
        without the attempts an ordinary apply holds, rather than wait behind a
        backlog's group, and leaves them to `SKIP LOCKED` (`Scope.passed` says when they
        are free again)."""
        released = asyncio.Event()
        mine: list[int] = []
        scope: Scope

        async def acquire(attempt_ids: Collection[int]) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.max_wait
            waited = False
            while True:
                taken = {
                    holder[0]
                    for i in attempt_ids
                    if (holder := self._held.get(i)) is not None and (holder[1] or not urgent)
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
                holder = self._held.get(attempt_id)
                if holder is None:
                    self._held[attempt_id] = (released, urgent)
                    mine.append(attempt_id)
                else:
                    scope.passed.add(holder[0])

        scope = Scope(acquire)
        try:
            yield scope
        finally:
            for attempt_id in mine:
                if self._held.get(attempt_id, (None,))[0] is released:
                    del self._held[attempt_id]
            released.set()
