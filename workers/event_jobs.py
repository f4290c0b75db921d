"""The event side's arq jobs: apply stored webhook events, send IVR commands, settle late.

Thin: each takes ids, opens one transaction, calls `campaigns.applying`, then sends the
IVR commands after the commit (a play command never waits on unrelated work: the batch's
commands go out in parallel, per call in order). Every job is safe to run twice: events
are applied once (`applied_at`, under a lock), settling is idempotent.

The ingester pushes each commit group's event ids onto the apply feed (a Redis list);
`ApplyFeed`, started with every worker, pops them with BLPOP and applies them at once, up
to `APPLY_CONCURRENCY` groups at a time (groups already waiting are merged, up to
`APPLY_GROUP` ids; a group's slot is held until its IVR commands are sent): one Redis
round trip between the ingester's commit and the apply, which is what an IVR turn waits
for. The events a live call's next prompt may wait on (`campaigns.webhooks.is_urgent`)
come on a feed of their own, with slots of their own (`URGENT_CONCURRENCY`): a backlog of
other events never stands between a person's answer and the next question (on SQLite,
which has one writer, the applies of a worker take turns, urgent ones first:
`workers.apply_gate`). Events whose call another process's transaction holds are
skipped, not waited for, and pushed back on the feed they came from a moment later; on
PostgreSQL a group waits instead for this worker's own applies of the same calls, an
urgent one only for urgent ones, and an urgent event that one of the worker's ordinary
applies held goes back at the head of its feed the moment that apply ends
(`workers.attempt_holds`). Groups that must
wait (events of a broadcast not recorded yet) or hit a database error go on as
`apply_events` arq jobs with backoff, which keep the group's urgency. The cron
`sweep_events` re-applies what was stored but never applied (a crash between the commit
and the push, a lost Redis, a worker killed mid-apply) and settles attempts whose settle
waited for a reordered event that never came.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Coroutine
from datetime import timedelta
from typing import Any, cast

from arq import Retry, cron, func
from arq.connections import ArqRedis
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from campaigns import applying
from campaigns.config import Settings
from campaigns.enablex.client import PlaySpec
from campaigns.errors import TransientEnablexError
from campaigns.store import events as store
from campaigns.webhooks import APPLY_JOB, apply_job_id, enqueue_apply, feed_key
from workers.attempt_holds import MAX_WAIT_SECONDS
from workers.context import Deps, deps_of

log = logging.getLogger(__name__)

SETTLE_JOB = "settle_attempts"
COMMAND_JOB = "send_ivr_command"
COMMAND_MAX_TRIES = 6
SWEEP_BATCH = 500
# Events younger than this are left to their own job (not raced by the sweeper).
SWEEP_MIN_AGE = timedelta(seconds=5)
# With more groups than this waiting on the apply feed, the sweep leaves unapplied events
# to it: under a backlog the oldest unapplied events are mostly still on the feed, and
# sweeping them only duplicates the work (and competes with it for the same calls). Events
# a lost Redis or a crash left behind are swept once the backlog is gone.
SWEEP_BACKLOG_LIMIT = 20


def apply_config(settings: Settings) -> applying.ApplyConfig:
    """The applier's settings."""
    return applying.ApplyConfig(
        amd_field=settings.amd_field,
        settle_grace=timedelta(seconds=settings.settle_grace_seconds),
        early_timeout=timedelta(seconds=settings.early_event_timeout_seconds),
    )


async def _apply(deps: Deps, event_ids: list[int], *, urgent: bool = False) -> applying.ApplyResult:
    result = await _apply_in_db(deps, event_ids, urgent=urgent)
    await _follow_up(deps, result)
    return result


async def _apply_in_db(
    deps: Deps,
    event_ids: list[int],
    *,
    urgent: bool = False,
    passed: set[asyncio.Event] | None = None,
) -> applying.ApplyResult:
    """Apply the events in one transaction, committed on return (on SQLite, one such
    transaction at a time in this process, urgent groups first: `workers.apply_gate`; on
    PostgreSQL, waiting for this process's other applies of the same calls rather than
    skipping them: `workers.attempt_holds`). `passed` gets the releases of this process's
    applies that held calls this one went on without (`Scope.passed`)."""
    config = apply_config(deps.settings)
    gate, holds = deps.apply_gate, deps.attempt_holds
    async with (
        gate.hold(urgent=urgent) if gate is not None else contextlib.nullcontext(),
        holds.scope(urgent=urgent) if holds is not None else contextlib.nullcontext(None) as scope,
        deps.sessions() as session,
        session.begin(),
    ):
        result = await applying.apply_events(
            session, event_ids, now=deps.clock(), config=config, before_lock=scope
        )
        if scope is not None and passed is not None:
            passed |= scope.passed
        return result


async def _follow_up(deps: Deps, result: applying.ApplyResult) -> None:
    """After the commit: send the IVR commands (retrying failed ones as jobs), and
    schedule the settling that waits for the grace period."""
    config = apply_config(deps.settings)
    failed = await applying.send_commands(deps.enablex, result.commands)
    for command, exc in failed:
        log.info("IVR command for %s failed (%s): retrying", command.voice_id, exc)
        await deps.redis.enqueue_job(
            COMMAND_JOB,
            command.broadcast_id,
            command.voice_id,
            command.play,
            _defer_by=timedelta(seconds=exc.retry_after or 0.2),
            _queue_name=deps.settings.queue_name,
        )
    if result.settle_later:
        await deps.redis.enqueue_job(
            SETTLE_JOB,
            sorted(result.settle_later),
            _job_id=f"settle:{min(result.settle_later)}:{len(result.settle_later)}",
            _defer_by=config.settle_grace,
            _queue_name=deps.settings.queue_name,
        )


async def apply_events(ctx: dict[str, Any], event_ids: list[int], urgent: bool = False) -> str:
    """Apply a group of stored events. Early events (broadcast not recorded yet) are
    retried with backoff; the sweeper keeps retrying them until they are quarantined.
    `urgent`: the group came from the urgent feed, and its busy events go back there."""
    deps = deps_of(ctx)
    tries = int(ctx.get("job_try", 1))
    try:
        result = await _apply(deps, event_ids, urgent=urgent)
    except OperationalError as exc:  # a deadlock or a lost connection: run again
        log.warning("applying events failed (%s): retrying", exc.__class__.__name__)
        raise Retry(defer=timedelta(seconds=min(5.0, 0.1 * 2**tries))) from exc
    if result.busy:  # calls another transaction held: to the feed, as the ingester does
        await enqueue_apply(deps.redis, deps.settings.queue_name, result.busy, urgent=urgent)
    if result.waiting and tries < 8:
        raise Retry(defer=timedelta(seconds=min(5.0, 0.25 * 2 ** (tries - 1))))
    return (
        f"applied {result.applied}, quarantined {result.quarantined}, "
        f"waiting {len(result.waiting)}, settled {result.settled}, "
        f"{len(result.commands)} commands"
    )


async def settle_attempts(ctx: dict[str, Any], attempt_ids: list[int]) -> str:
    """Settle attempts whose grace period for late events is over."""
    deps = deps_of(ctx)
    async with deps.sessions() as session, session.begin():
        settled = await applying.settle_attempts(session, attempt_ids, now=deps.clock())
    return f"settled {settled}"


async def send_ivr_command(
    ctx: dict[str, Any], broadcast_id: str, voice_id: str, play: PlaySpec | None
) -> str:
    """Retry one IVR command after a transient failure (backoff, then give up: the
    platform's own prompt timeouts and the sweeper end the call)."""
    deps = deps_of(ctx)
    tries = int(ctx.get("job_try", 1))
    command = applying.Command(0, broadcast_id, voice_id, play)
    try:
        await applying.send_command(deps.enablex, command)
    except TransientEnablexError as exc:
        if tries >= COMMAND_MAX_TRIES:
            log.warning("IVR command for %s given up after %d tries: %s", voice_id, tries, exc)
            return "given up"
        raise Retry(defer=timedelta(seconds=exc.retry_after or 0.2 * 2**tries)) from exc
    return "sent"


async def sweep_events(ctx: dict[str, Any]) -> str:
    """Re-apply stored-but-unapplied events; settle ended attempts past their grace."""
    deps = deps_of(ctx)
    now = deps.clock()
    config = apply_config(deps.settings)
    ids: list[int] = []
    backlog = await _feed_backlog(deps)
    if backlog <= SWEEP_BACKLOG_LIMIT:
        async with deps.sessions() as session:
            ids = await store.unapplied_event_ids(session, now - SWEEP_MIN_AGE, 10 * SWEEP_BATCH)
    applied = quarantined = 0
    for start in range(0, len(ids), SWEEP_BATCH):
        result = await _apply(deps, ids[start : start + SWEEP_BATCH])
        applied += result.applied
        quarantined += result.quarantined
    async with deps.sessions() as session, session.begin():
        settled = await applying.settle_overdue(session, now=now, grace=config.settle_grace)
    if backlog > SWEEP_BACKLOG_LIMIT:
        return f"{backlog} groups on the apply feed: events left to it; settled {settled} overdue"
    return f"re-applied {applied}, quarantined {quarantined}, settled {settled} overdue"


async def _feed_backlog(deps: Deps) -> int:
    """Groups waiting on the apply feeds (0 when Redis cannot tell: sweep anyway)."""
    queue = deps.settings.queue_name
    try:
        return sum(
            [
                int(await cast(Awaitable[int], deps.redis.llen(feed_key(queue, urgent=urgent))))
                for urgent in (False, True)
            ]
        )
    except (RedisError, OSError):
        return 0


# How long one BLPOP waits before looking again (and noticing a shutdown).
FEED_BLOCK_SECONDS = 1
# Group transactions one worker runs at once: well under its database pool (10 + 10
# connections), so that a backlog of events never starves the dispatch tick and the
# submit jobs of connections (seen in bench/ingest_bench.py with 50: dispatch timed out).
# Few, as a backlog is merged into large groups anyway, and concurrent groups touching
# the same calls only skip each other (bench/ingest_bench.py, backlog applied: 717
# events/s with 8, 1,110/s with 3).
APPLY_CONCURRENCY = 3
# Group transactions one worker runs at once for the urgent feed, on top of those.
URGENT_CONCURRENCY = 2
# Most event ids one apply takes when merging groups that wait on the feed.
APPLY_GROUP = 500
# Groups taken from the feed per Redis round trip when merging (one round trip per group
# before: under a backlog a merge gathers many of the ingester's small commit groups).
MERGE_POP = 16
# How long events whose call another apply held wait before they are tried again.
BUSY_DEFER_SECONDS = 0.02


class ApplyFeed:
    """Applies the event groups the ingester pushes, as soon as they arrive: those of one
    feed (`urgent`: the urgent events' feed; every worker runs one of each)."""

    def __init__(
        self, deps: Deps, redis: ArqRedis, *, concurrency: int, urgent: bool = False
    ) -> None:
        self.deps = deps
        self.redis = redis
        self.urgent = urgent
        self.key = feed_key(deps.settings.queue_name, urgent=urgent)
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.Task[None] | None = None
        self.applied = 0  # events applied
        self.applies = 0  # transactions that applied them

    def start(self) -> None:
        name = "apply-feed-urgent" if self.urgent else "apply-feed"
        self._loop = asyncio.create_task(self._run(), name=name)

    async def close(self) -> None:
        """Stop popping; let the groups already popped finish."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._loop
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                await self._next()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the feed die: the sweeper backs what is lost
                self._slots.release()
                log.exception("apply feed: popping a group failed; going on")
                await asyncio.sleep(1.0)

    async def _next(self) -> None:
        """Pop a group (and those waiting behind it) and start applying it; the caller
        holds a slot, which this passes to the apply task or releases."""
        try:
            item = await cast(
                Awaitable[list[bytes] | None],
                self.redis.blpop([self.key], timeout=FEED_BLOCK_SECONDS),
            )
        except (RedisError, OSError) as exc:
            self._slots.release()
            log.warning("apply feed: %r; the sweeper applies what is stored", exc)
            await asyncio.sleep(1.0)
            return
        if item is None:
            self._slots.release()
            return
        ids = [int(i) for i in json.loads(item[1])]
        if len(ids) < APPLY_GROUP:
            ids += await self._more(APPLY_GROUP - len(ids))
        self._spawn(self._apply(ids))

    async def _more(self, room: int) -> list[int]:
        """Groups already waiting behind the one popped, merged into it up to `room` ids
        (a backlog is applied in fewer, larger transactions: the cost of an apply is
        mostly per statement, not per event). Takes only what is there: no waiting. Pops
        up to `MERGE_POP` groups per Redis round trip; those that do not fit go back to
        the head of the feed, in their order."""
        ids: list[int] = []
        while len(ids) < room:
            try:
                items = await cast(
                    Awaitable[list[bytes] | None], self.redis.lpop(self.key, MERGE_POP)
                )
            except (RedisError, OSError) as exc:
                log.warning("apply feed: %r", exc)
                break
            items = items or []
            for n, item in enumerate(items):
                more = [int(i) for i in json.loads(item)]
                if len(ids) + len(more) > room:
                    # Too big to merge: back to the head of the feed, for the next pop (or,
                    # if Redis fails now, applied with this group rather than lost).
                    rest = items[n:]
                    try:
                        await cast(Awaitable[int], self.redis.lpush(self.key, *reversed(rest)))
                    except (RedisError, OSError) as exc:
                        log.warning("apply feed: %r", exc)
                        ids += [int(i) for entry in rest for i in json.loads(entry)]
                    return ids
                ids += more
            if len(items) < MERGE_POP:
                break  # the feed is empty
        return ids

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "apply feed: a group failed; the sweeper re-applies it", exc_info=task.exception()
            )

    async def _apply(self, ids: list[int]) -> None:
        # The slot is held until this group's IVR commands are sent: that is the feed's
        # back-pressure. Freed at the commit instead, applying outran the sending under
        # load, the commands queued up, and a live call's next prompt waited behind
        # thousands of others until the person hung up (bench/ingest_bench.py).
        try:
            passed: set[asyncio.Event] = set()
            try:
                result = await _apply_in_db(self.deps, ids, urgent=self.urgent, passed=passed)
            except SQLAlchemyError as exc:  # a deadlock or a lost connection: a job retries
                log.warning("applying events failed (%s): handed to a job", exc.__class__.__name__)
                await self._enqueue(ids, 0.1)
                return
            self.applied += result.applied
            self.applies += 1
            if result.busy and passed:
                # Calls another apply of this worker holds (an urgent group behind a
                # backlog's): back at the head of the feed the moment it ends.
                self._spawn(self._push_back_after(passed, result.busy))
            elif result.busy:
                asyncio.get_running_loop().call_later(
                    BUSY_DEFER_SECONDS, self._push_back, result.busy
                )
            try:
                if result.waiting:
                    await self._enqueue(result.waiting, 0.25)
                await _follow_up(self.deps, result)
            except (RedisError, OSError) as exc:  # committed: the sweeper and timeouts cover it
                log.warning("apply feed: after applying: %r", exc)
        finally:
            self._slots.release()

    def _push_back(self, ids: list[int]) -> None:
        """Events whose calls another transaction held: back on the feed, for whichever
        worker pops them next."""
        queue = self.deps.settings.queue_name
        self._spawn(enqueue_apply(self.redis, queue, ids, urgent=self.urgent))

    async def _push_back_after(self, releases: set[asyncio.Event], ids: list[int]) -> None:
        """Events whose calls other applies of this worker held: at the head of the feed
        once those applies have ended (or after `MAX_WAIT_SECONDS`), to be taken next.
        No slot is held meanwhile."""
        waiting = [asyncio.ensure_future(release.wait()) for release in releases]
        try:
            await asyncio.wait(waiting, timeout=MAX_WAIT_SECONDS)
        finally:
            for future in waiting:
                future.cancel()
        queue = self.deps.settings.queue_name
        await enqueue_apply(self.redis, queue, ids, urgent=self.urgent, first=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def _enqueue(self, ids: list[int], defer: float) -> None:
        await self.redis.enqueue_job(
            APPLY_JOB,
            ids,
            self.urgent,
            _job_id=apply_job_id(min(ids)),
            _defer_by=timedelta(seconds=defer),
            _queue_name=self.deps.settings.queue_name,
        )


EVENT_FUNCTIONS = [
    func(apply_events, name=APPLY_JOB, keep_result=0, max_tries=20),
    func(settle_attempts, name=SETTLE_JOB, keep_result=0),
    func(send_ivr_command, name=COMMAND_JOB, keep_result=0, max_tries=COMMAND_MAX_TRIES + 1),
]
EVENT_CRON_JOBS = [
    cron(sweep_events, second=set(range(0, 60, 5)), timeout=120, max_tries=1, run_at_startup=False),
]
