"""One apply transaction at a time, urgent ones first: for SQLite, which has one writer.

SQLite lets one transaction write at a time; the others wait in its busy handler, which
polls and keeps no order. With a backlog on the ordinary apply feed, the urgent feed's
group (a person waiting for the next question) could lose that race again and again and
wait for the whole backlog. The gate makes the order explicit within a worker process:
one apply transaction holds it, and when it is freed an urgent waiter goes before any
other. PostgreSQL needs none of this (applies of different calls run side by side) and
gets no gate.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ApplyGate:
    """An asyncio lock with two queues: urgent waiters are served before the others, each
    queue first come, first served."""

    def __init__(self) -> None:
        self._held = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._other: deque[asyncio.Future[None]] = deque()

    @property
    def held(self) -> bool:
        return self._held

    def waiting(self, *, urgent: bool) -> int:
        queue = self._urgent if urgent else self._other
        return sum(1 for future in queue if not future.done())

    @asynccontextmanager
    async def hold(self, *, urgent: bool) -> AsyncIterator[None]:
        await self._acquire(urgent)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, urgent: bool) -> None:
        if not self._held and not self.waiting(urgent=True) and not self.waiting(urgent=False):
            self._held = True
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._other).append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # handed to us as we were cancelled: hand it on
            raise

    def _release(self) -> None:
        """Hand the gate to the next waiter (urgent first), or free it."""
        for queue in (self._urgent, self._other):
            while queue:
                future = queue.popleft()
                if not future.done():
                    future.set_result(None)  # still held: now by that waiter
                    return
        self._held = False
