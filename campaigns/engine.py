"""The campaign engine's I/O: dispatch ticks, batch submission, and the sweeper.

Decisions (windows, pacing, retry times) are pure functions in `scheduling`; the SQL is in
`store`; this module strings them together, one transaction at a time. Every function here
is safe to run twice and from several workers at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from arq.connections import ArqRedis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from campaigns.definition import CampaignDefinition
from campaigns.enablex.client import EnablexClient
from campaigns.errors import (
    BroadcastOutcomeUnknown,
    EnablexRejection,
    OutcomeUnknownError,
    TransientEnablexError,
)
from campaigns.models import BatchState, Campaign, CampaignStatus, DncNumber
from campaigns.outcomes import campaign_definition, settle_attempt
from campaigns.pacing import Pacer
from campaigns.poll import initial_play
from campaigns.scheduling import (
    Outcome,
    campaign_active,
    dispatch_allowance,
    in_window,
    next_allowed_start,
    zones_of,
)
from campaigns.store import campaigns as campaign_store
from campaigns.store import dispatch as store

log = logging.getLogger(__name__)

SUBMIT_JOB = "submit_batch"


def submit_job_id(batch_id: str, generation: str = "0") -> str:
    return f"submit:{batch_id}:{generation}"


@dataclass
class TickResult:
    claimed: int = 0
    batches: list[str] = field(default_factory=list)
    suppressed: int = 0
    deferred: int = 0


async def _enqueue_submits(
    redis: ArqRedis,
    batch_ids: list[str],
    generation: str = "0",
    not_before: datetime | None = None,
) -> None:
    for batch_id in batch_ids:
        await redis.enqueue_job(
            SUBMIT_JOB,
            batch_id,
            _job_id=submit_job_id(batch_id, generation),
            _defer_until=not_before,
        )


async def dispatch_campaign(
    sessions: async_sessionmaker[AsyncSession],
    redis: ArqRedis,
    pacer: Pacer,
    campaign_id: int,
    now: datetime,
) -> TickResult:
    """Claim the recipients of one running campaign that may be dialled now, in batches.

    Each batch gets a paced slot first (rule 6) and is claimed within the concurrency cap;
    its submit job is deferred to the slot's time. Stops when no slot is free within the
    pacer's horizon, the cap is reached, or nobody else is due.
    """
    result = TickResult()
    async with sessions() as session:
        campaign = await session.get(Campaign, campaign_id)
        if campaign is None or campaign.status != CampaignStatus.RUNNING:
            return result
        definition = campaign_definition(campaign_id, campaign.definition)
        in_flight = await store.in_flight_count(session, campaign_id)
    pacing = definition.pacing
    while True:
        count = dispatch_allowance(
            max_concurrent=pacing.max_concurrent,
            in_flight=in_flight,
            batch_size=pacing.batch_size,
            calls_per_second=pacing.calls_per_second,
        )
        if count <= 0:
            break
        start = await pacer.slot(campaign_id, rate=pacing.calls_per_second, count=count)
        if start is None:
            break
        claimed: list[store.Claimed] = []
        try:
            async with sessions() as session, session.begin():
                claimed = await _claim(session, definition, campaign_id, count, now, result)
                batch_ids = await store.create_batches(
                    session, campaign_id, claimed, pacing.batch_size, now
                )
        finally:
            await pacer.give_back(
                campaign_id,
                start=start,
                rate=pacing.calls_per_second,
                asked=count,
                used=len(claimed),
            )
        await _enqueue_submits(redis, batch_ids, not_before=start)
        result.claimed += len(claimed)
        result.batches += batch_ids
        in_flight += len(claimed)
        if len(claimed) < count:
            break
    return result


def callable_now(definition: CampaignDefinition, time_zones: str | None, now: datetime) -> bool:
    """Rule 2: inside the calling window, and within the campaign's dates, in every one of
    the recipient's zones (a number with no known zone is never callable)."""
    zones = zones_of(time_zones, definition.window)
    return (
        bool(zones)
        and in_window(definition.window, zones, now)
        and campaign_active(definition, now, zones)
    )


def next_opening(
    definition: CampaignDefinition, time_zones: str | None, now: datetime
) -> datetime | None:
    """When the recipient may next be called; None if never again."""
    return next_allowed_start(
        definition.window,
        zones_of(time_zones, definition.window),
        now,
        start_date=definition.start_date,
        end_date=definition.end_date,
    )


async def _claim(
    session: AsyncSession,
    definition: CampaignDefinition,
    campaign_id: int,
    want: int,
    now: datetime,
    result: TickResult,
) -> list[store.Claimed]:
    max_attempts = definition.retry.max_attempts
    candidates = await store.due_candidates(session, campaign_id, now, want * 2, max_attempts)
    open_by_zones: dict[str | None, bool] = {}
    callable_ids: list[int] = []
    dnc_ids: list[int] = []
    later: list[tuple[int, datetime | None]] = []
    for cand in candidates:
        if cand.on_dnc:
            dnc_ids.append(cand.recipient_id)
            continue
        if cand.time_zones not in open_by_zones:
            open_by_zones[cand.time_zones] = callable_now(definition, cand.time_zones, now)
        if open_by_zones[cand.time_zones]:
            if len(callable_ids) < want:
                callable_ids.append(cand.recipient_id)
        else:
            later.append((cand.recipient_id, next_opening(definition, cand.time_zones, now)))
    result.suppressed = await store.suppress(session, dnc_ids, now)
    result.deferred = len(later)
    await store.defer(session, later, now)
    return await store.claim(session, callable_ids, max_attempts, now)


async def dispatch_all(
    sessions: async_sessionmaker[AsyncSession], redis: ArqRedis, pacer: Pacer, now: datetime
) -> TickResult:
    """One dispatch step over every running campaign; completes finished campaigns."""
    total = TickResult()
    async with sessions() as session:
        ids = await campaign_store.running_campaign_ids(session)
    for campaign_id in ids:
        part = await dispatch_campaign(sessions, redis, pacer, campaign_id, now)
        total.claimed += part.claimed
        total.batches += part.batches
        total.suppressed += part.suppressed
        total.deferred += part.deferred
        if part.claimed == 0:
            async with sessions() as session, session.begin():
                if await campaign_store.complete_if_finished(session, campaign_id, now):
                    log.info("campaign %s completed", campaign_id)
    return total


@dataclass(frozen=True)
class SubmitOutcome:
    status: str  # submitted | released | failed | unknown | retry | skipped
    detail: str = ""
    retry_after: float | None = None


async def submit_batch(
    sessions: async_sessionmaker[AsyncSession],
    enablex: EnablexClient,
    batch_id: str,
    *,
    event_url: str,
    now: datetime,
    pacer: Pacer | None = None,
) -> SubmitOutcome:
    """Send one claimed batch to EnableX, re-checking DNC, window and campaign status first.

    With a `pacer`, the POST waits for room in the campaign's sliding one-second window of
    calls actually sent (rule 6 holds even when this job started late).

    A transient failure puts the batch back to `claimed` for a later try; a timeout (the
    broadcast may exist) marks it `unknown`, never resubmitted; a rejection fails the batch
    and its attempts go through the retry rules with outcome `failed`.
    """
    async with sessions() as session, session.begin():
        batch = await store.get_batch(session, batch_id)
        if batch is None or batch.state != BatchState.CLAIMED:
            return SubmitOutcome("skipped", batch.state if batch else "no such batch")
        # Take the batch first. Two jobs may hold one batch (the sweeper re-enqueues a batch
        # that waited long for its slot): only the one whose conditional update wins goes
        # on; the other must not POST it a second time (rule 1).
        won = await store.set_batch_state(
            session,
            batch_id,
            BatchState.SUBMITTING,
            expect=[BatchState.CLAIMED],
            now=now,
            submit_tries=batch.submit_tries + 1,
            submitted_at=now,
        )
        if not won:
            return SubmitOutcome("skipped", "taken by another job")
        campaign = await session.get(Campaign, batch.campaign_id)
        assert campaign is not None
        members = await store.batch_members(session, batch_id)
        if campaign.status != CampaignStatus.RUNNING:
            await store.release_attempts(session, [m.attempt_id for m in members], now)
            if campaign.status == CampaignStatus.CANCELLED:
                # Released claims of a cancelled campaign are cancelled, not pending again.
                await campaign_store.cancel_open_recipients(session, campaign.id, now)
            await store.set_batch_state(
                session,
                batch_id,
                BatchState.RELEASED,
                expect=[BatchState.SUBMITTING],
                now=now,
                error=f"campaign {campaign.status} before submission",
            )
            return SubmitOutcome("released", f"campaign {campaign.status}")
        campaign_id = campaign.id
        definition = campaign_definition(campaign_id, campaign.definition)
        members = await _recheck(session, definition, members, now)
        if not members:
            await store.set_batch_state(
                session,
                batch_id,
                BatchState.RELEASED,
                expect=[BatchState.SUBMITTING],
                now=now,
                error="no member callable at submission",
            )
            return SubmitOutcome("released", "no member callable")
    retries = definition.retry.max_attempts - 1 if definition.platform_retries else 0
    interval_ms = int(definition.retry.delays[0].total_seconds() * 1000) if retries else 0
    if pacer is not None:
        await pacer.admit(
            campaign_id,
            rate=definition.pacing.calls_per_second,
            count=len(members),
            batch_id=batch_id,
        )
    try:
        created = await enablex.create_broadcast(
            name=definition.name,
            owner_ref=batch_id,
            caller_id=definition.caller_id,
            numbers=[m.phone for m in members],
            play=initial_play(definition),
            event_url=event_url,
            retries=retries,
            retry_interval_ms=interval_ms,
            amd=True,
        )
    except (OutcomeUnknownError, BroadcastOutcomeUnknown) as exc:
        async with sessions() as session, session.begin():
            await store.set_batch_state(
                session,
                batch_id,
                BatchState.UNKNOWN,
                expect=[BatchState.SUBMITTING],
                now=now,
                error=str(exc),
            )
        log.warning("batch %s: submission outcome unknown (%s); not resubmitted", batch_id, exc)
        return SubmitOutcome("unknown", str(exc))
    except TransientEnablexError as exc:
        async with sessions() as session, session.begin():
            await store.set_batch_state(
                session,
                batch_id,
                BatchState.CLAIMED,
                expect=[BatchState.SUBMITTING],
                now=now,
                error=str(exc),
            )
        return SubmitOutcome("retry", str(exc), exc.retry_after)
    except EnablexRejection as exc:
        async with sessions() as session, session.begin():
            await store.set_batch_state(
                session,
                batch_id,
                BatchState.FAILED,
                expect=[BatchState.SUBMITTING],
                now=now,
                error=str(exc),
            )
            for attempt_id in await store.unsettled_attempt_ids(session, batch_id):
                await settle_attempt(
                    session, attempt_id=attempt_id, outcome=Outcome.FAILED, now=now
                )
        log.error("batch %s rejected by EnableX: %s", batch_id, exc)
        return SubmitOutcome("failed", str(exc))
    async with sessions() as session, session.begin():
        await store.set_batch_state(
            session,
            batch_id,
            BatchState.SUBMITTED,
            expect=[BatchState.SUBMITTING, BatchState.UNKNOWN],
            now=now,
            broadcast_id=created.broadcast_id,
            error=None,
        )
    return SubmitOutcome("submitted", created.broadcast_id)


async def _recheck(
    session: AsyncSession,
    definition: CampaignDefinition,
    members: list[store.BatchMember],
    now: datetime,
) -> list[store.BatchMember]:
    """Rule 2 at the moment of dispatch: release members now on the DNC list or outside
    their window (a batch may have waited on retries); return the members still callable."""
    phones = [m.phone for m in members]
    dnc = set(
        (await session.scalars(select(DncNumber.phone).where(DncNumber.phone.in_(phones)))).all()
    )
    keep: list[store.BatchMember] = []
    release: list[int] = []
    later: dict[int, datetime | None] = {}
    suppressed: list[int] = []
    for m in members:
        if m.phone in dnc:
            release.append(m.attempt_id)
            suppressed.append(m.recipient_id)
        elif not callable_now(definition, m.time_zones, now):
            release.append(m.attempt_id)
            later[m.recipient_id] = next_opening(definition, m.time_zones, now)
        else:
            keep.append(m)
    if release:
        await store.release_attempts(session, release, now, later)
        await store.suppress(session, suppressed, now)
        await store.defer(session, list(later.items()), now)
    return keep


async def release_batch(
    sessions: async_sessionmaker[AsyncSession], batch_id: str, reason: str, now: datetime
) -> None:
    """Give up on a batch that was never accepted by EnableX: its claims are undone."""
    async with sessions() as session, session.begin():
        if await store.set_batch_state(
            session,
            batch_id,
            BatchState.RELEASED,
            expect=[BatchState.CLAIMED],
            now=now,
            error=reason,
        ):
            await store.release_attempts(
                session, await store.unsettled_attempt_ids(session, batch_id), now
            )


@dataclass
class SweepResult:
    settled_unknown: int = 0
    marked_unknown: int = 0
    resubmitted: int = 0
    batches_completed: int = 0
    campaigns_completed: int = 0


async def sweep(
    sessions: async_sessionmaker[AsyncSession],
    redis: ArqRedis,
    *,
    now: datetime,
    attempt_timeout: timedelta,
    submit_timeout: timedelta,
) -> SweepResult:
    """Settle what never ended; repair batches stranded by a crash; complete campaigns."""
    result = SweepResult()
    async with sessions() as session, session.begin():
        # A crash mid-POST: EnableX may have the broadcast. Never resubmit: mark unknown;
        # its attempts are settled as `unknown` after the attempt timeout (rule 1 > rule 4).
        for batch_id in await store.batches_in_state(
            session, BatchState.SUBMITTING, now - submit_timeout
        ):
            if await store.set_batch_state(
                session,
                batch_id,
                BatchState.UNKNOWN,
                expect=[BatchState.SUBMITTING],
                now=now,
                error="worker stopped during submission; outcome unknown",
            ):
                result.marked_unknown += 1
        stranded = await store.batches_in_state(session, BatchState.CLAIMED, now - submit_timeout)
    # Claimed but never sent (e.g. the enqueue was lost): safe to submit, it never left.
    await _enqueue_submits(redis, stranded, generation=f"sweep{int(now.timestamp()) // 30}")
    result.resubmitted = len(stranded)
    async with sessions() as session, session.begin():
        for attempt_id in await store.stale_attempts(session, now - attempt_timeout, 1000):
            if await settle_attempt(
                session, attempt_id=attempt_id, outcome=Outcome.UNKNOWN, now=now
            ):
                result.settled_unknown += 1
        result.batches_completed = await store.complete_settled_batches(session, now)
    async with sessions() as session, session.begin():
        for campaign_id in await campaign_store.running_campaign_ids(session):
            if await campaign_store.complete_if_finished(session, campaign_id, now):
                result.campaigns_completed += 1
    return result
