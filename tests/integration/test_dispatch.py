"""The dispatcher's claims against real SQL and Redis: rules 1 and 2 of the design."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from campaigns import engine
from campaigns.db import async_session_factory, make_async_engine
from campaigns.enablex.client import EnablexClient
from campaigns.models import (
    Batch,
    CallAttempt,
    DncNumber,
    Recipient,
    RecipientStatus,
)
from campaigns.outcomes import settle_attempt
from campaigns.pacing import Pacer
from campaigns.scheduling import Outcome
from tests.integration.factories import campaign_toml, create_campaign, make_list, us_numbers
from tests.integration.sim_helpers import start_simulator


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    eng = make_async_engine(database_url)
    yield async_session_factory(eng)
    await eng.dispose()


@pytest.fixture
async def arq_redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    yield pool
    await pool.aclose()


async def _dispatch_until_empty(
    sessions: async_sessionmaker[AsyncSession],
    redis: ArqRedis,
    campaign_id: int,
    now: datetime,
    parallel: int = 1,
) -> int:
    pacer = Pacer(redis)
    claimed = 0
    idle = 0
    for _ in range(200):
        results = await asyncio.gather(
            *(
                engine.dispatch_campaign(sessions, redis, pacer, campaign_id, now)
                for _ in range(parallel)
            )
        )
        got = sum(r.claimed for r in results)
        claimed += got
        idle = idle + 1 if got == 0 else 0
        if idle == (1 if parallel == 1 else 2):
            break
        if got == 0:
            # Nothing claimed by parallel dispatchers: done, or every slot within the
            # pacer's horizon is taken (slots one of them could not use and not give back,
            # on a slow machine): look again once it has passed.
            await asyncio.sleep(pacer.horizon)
    return claimed


async def test_concurrent_dispatchers_claim_every_recipient_exactly_once(
    database_url: str, sessions: async_sessionmaker[AsyncSession], arq_redis: ArqRedis
) -> None:
    make_list(database_url, us_numbers(600))
    campaign_id = await create_campaign(database_url, campaign_toml(batch_size=50))
    claimed = await _dispatch_until_empty(
        sessions, arq_redis, campaign_id, datetime.now(UTC), parallel=4
    )
    assert claimed == 600
    async with sessions() as session:
        per_recipient = (
            await session.execute(
                select(CallAttempt.recipient_id, func.count()).group_by(CallAttempt.recipient_id)
            )
        ).all()
        assert len(per_recipient) == 600
        assert {n for _, n in per_recipient} == {1}
        sizes = (await session.scalars(select(Batch.size))).all()
        assert sum(sizes) == 600
        assert max(sizes) <= 50
        statuses = set((await session.scalars(select(Recipient.status))).all())
        assert statuses == {RecipientStatus.IN_FLIGHT}
    # Each batch has its submit job queued under a deterministic id.
    queued = await arq_redis.zcard("arq:queue")
    assert queued == len(sizes)


async def test_dnc_at_dispatch_time_suppresses_and_never_claims(
    database_url: str, sessions: async_sessionmaker[AsyncSession], arq_redis: ArqRedis
) -> None:
    phones = us_numbers(20)
    make_list(database_url, phones)
    campaign_id = await create_campaign(database_url, campaign_toml())
    async with sessions() as session, session.begin():  # added after the campaign started
        await session.execute(insert(DncNumber).values(phone=phones[3], source="test"))
    claimed = await _dispatch_until_empty(sessions, arq_redis, campaign_id, datetime.now(UTC))
    assert claimed == 19
    async with sessions() as session:
        row = (
            await session.execute(
                select(Recipient.status, Recipient.final_outcome, Recipient.attempts).where(
                    Recipient.phone == phones[3]
                )
            )
        ).one()
        assert tuple(row) == (RecipientStatus.SUPPRESSED, "dnc", 0)
        assert (
            await session.scalar(
                select(func.count()).select_from(CallAttempt).where(CallAttempt.phone == phones[3])
            )
            == 0
        )


async def test_recipients_outside_their_window_are_deferred_to_its_opening(
    database_url: str, sessions: async_sessionmaker[AsyncSession], arq_redis: ArqRedis
) -> None:
    india = us_numbers(10)
    new_york = us_numbers(10, start=100)
    make_list(
        database_url,
        india + new_york,
        zones=lambda p: "Asia/Kolkata" if p in india else "America/New_York",
    )
    window = 'days = "mon-sun"\nstart = "09:00"\nend = "20:00"\ntimezone = "recipient"'
    campaign_id = await create_campaign(database_url, campaign_toml(window=window))
    # 04:30 UTC on a Wednesday: 10:00 in Kolkata, 23:30 (Tuesday) in New York.
    now = datetime(2026, 11, 25, 4, 30, tzinfo=UTC)
    claimed = await _dispatch_until_empty(sessions, arq_redis, campaign_id, now)
    assert claimed == 10
    async with sessions() as session:
        dialled = set((await session.scalars(select(CallAttempt.phone))).all())
        assert dialled == set(india)
        waiting = (
            await session.execute(
                select(Recipient.status, Recipient.next_attempt_at).where(
                    Recipient.phone.in_(new_york)
                )
            )
        ).all()
    # 09:00 in New York (EST, UTC-5) on Wednesday = 14:00 UTC.
    assert {tuple(w) for w in waiting} == {
        (RecipientStatus.PENDING, datetime(2026, 11, 25, 14, 0, tzinfo=UTC))
    }
    # At 14:00 UTC they become due (and Kolkata, at 19:30 there, is still open but done).
    later = await _dispatch_until_empty(
        sessions, arq_redis, campaign_id, datetime(2026, 11, 25, 14, 0, tzinfo=UTC)
    )
    assert later == 10


async def test_retry_rules_and_the_attempt_limit_hold_at_claim_time(
    database_url: str, sessions: async_sessionmaker[AsyncSession], arq_redis: ArqRedis
) -> None:
    make_list(database_url, us_numbers(5))
    campaign_id = await create_campaign(database_url, campaign_toml(max_attempts=2, interval="10m"))
    now = datetime.now(UTC)
    assert await _dispatch_until_empty(sessions, arq_redis, campaign_id, now) == 5
    async with sessions() as session, session.begin():
        attempt_ids = (await session.scalars(select(CallAttempt.id))).all()
        for attempt_id in attempt_ids:
            decision = await settle_attempt(
                session, attempt_id=attempt_id, outcome=Outcome.NO_ANSWER, now=now
            )
            assert decision is not None
            assert decision.status == "waiting_retry"
            # Settling twice is a no-op.
            assert (
                await settle_attempt(session, attempt_id=attempt_id, outcome=Outcome.BUSY, now=now)
                is None
            )
    # Not due yet: nothing claimed.
    assert await _dispatch_until_empty(sessions, arq_redis, campaign_id, now) == 0
    due = now + timedelta(minutes=10, seconds=1)
    assert await _dispatch_until_empty(sessions, arq_redis, campaign_id, due) == 5
    async with sessions() as session, session.begin():
        for attempt_id in (
            await session.scalars(select(CallAttempt.id).where(CallAttempt.attempt_no == 2))
        ).all():
            decision = await settle_attempt(
                session, attempt_id=attempt_id, outcome=Outcome.NO_ANSWER, now=due
            )
            assert decision is not None
            assert (decision.status, decision.final_outcome) == ("failed", "no_answer")
        # Even if a row were forced back to waiting_retry, the claim refuses attempt 3.
        await session.execute(
            update(Recipient).values(status=RecipientStatus.WAITING_RETRY, next_attempt_at=None)
        )
    assert (
        await _dispatch_until_empty(sessions, arq_redis, campaign_id, due + timedelta(days=1)) == 0
    )
    async with sessions() as session:
        assert set((await session.scalars(select(Recipient.attempts))).all()) == {2}


async def test_sweeper_settles_lost_attempts_and_never_resubmits_an_unknown_batch(
    database_url: str, sessions: async_sessionmaker[AsyncSession], arq_redis: ArqRedis
) -> None:
    make_list(database_url, us_numbers(30))
    campaign_id = await create_campaign(
        database_url, campaign_toml(max_attempts=2, batch_size=10, interval="5m")
    )
    start = datetime.now(UTC)
    assert await _dispatch_until_empty(sessions, arq_redis, campaign_id, start) == 30
    async with sessions() as session, session.begin():
        batch_ids = list((await session.scalars(select(Batch.id).order_by(Batch.id))).all())
        submitted, submitting, claimed = batch_ids
        await session.execute(
            update(Batch)
            .where(Batch.id == submitted)
            .values(state="submitted", broadcast_id="b-1", submitted_at=start)
        )
        # A worker died in the middle of POST /broadcast for this one.
        await session.execute(
            update(Batch)
            .where(Batch.id == submitting)
            .values(state="submitting", submitted_at=start + timedelta(minutes=5))
        )
    await arq_redis.delete("arq:queue")  # the claimed batch's job was lost too
    later = start + timedelta(minutes=11)
    result = await engine.sweep(
        sessions,
        arq_redis,
        now=later,
        attempt_timeout=timedelta(minutes=10),
        submit_timeout=timedelta(minutes=1),
    )
    assert result.marked_unknown == 1
    assert result.resubmitted == 1
    async with sessions() as session:
        states = dict((await session.execute(select(Batch.id, Batch.state))).all())
        assert states[submitting] == "unknown"
        assert states[claimed] == "claimed"
        # The submitted batch's attempts had no final event: settled as unknown -> retry.
        rows = (
            await session.execute(
                select(CallAttempt.outcome, Recipient.status, Recipient.next_attempt_at)
                .join(Recipient, Recipient.id == CallAttempt.recipient_id)
                .where(CallAttempt.batch_id == submitted)
            )
        ).all()
    assert result.settled_unknown == 10
    assert {(o, s) for o, s, _ in rows} == {("unknown", "waiting_retry")}
    assert {n for _, _, n in rows} == {later + timedelta(minutes=5)}
    # The stranded claimed batch is queued again under a new deterministic job id...
    assert await arq_redis.zcard("arq:queue") == 1
    # ...and the unknown batch is only settled after the attempt timeout, never resubmitted.
    much_later = later + timedelta(minutes=11)
    result = await engine.sweep(
        sessions,
        arq_redis,
        now=much_later,
        attempt_timeout=timedelta(minutes=10),
        submit_timeout=timedelta(minutes=1),
    )
    assert result.settled_unknown == 10
    async with sessions() as session:
        assert (await session.get(Batch, submitting)).state == "completed"  # type: ignore[union-attr]


async def test_two_jobs_for_one_batch_post_it_once(
    database_url: str, sessions: async_sessionmaker[AsyncSession], arq_redis: ArqRedis
) -> None:
    """The sweeper re-enqueues a batch that waited long for its slot while its first job is
    about to run: both jobs run, at once. The simulator must see one broadcast (rule 1)."""
    make_list(database_url, us_numbers(10))
    campaign_id = await create_campaign(database_url, campaign_toml(batch_size=10))
    now = datetime.now(UTC)
    assert await _dispatch_until_empty(sessions, arq_redis, campaign_id, now) == 10
    async with sessions() as session:
        (batch_id,) = (await session.scalars(select(Batch.id))).all()
    async with (
        start_simulator(speed=500) as sim,
        httpx.AsyncClient() as http,
    ):
        client = EnablexClient(http, base_url=sim.base_url, app_id=sim.app_id, app_key=sim.app_key)
        outcomes = await asyncio.gather(
            *(
                engine.submit_batch(
                    sessions, client, batch_id, event_url="http://127.0.0.1:9/hooks", now=now
                )
                for _ in range(2)
            ),
            return_exceptions=True,
        )
        await sim.wait_idle(limit=20)
        ledger = sim.ledger()
    statuses = sorted(
        o.status if isinstance(o, engine.SubmitOutcome) else "error" for o in outcomes
    )
    # One job submits; the other is skipped (or, on SQLite, may lose the write race with a
    # "database is locked" error that arq retries, and then finds the batch taken).
    assert statuses in (["skipped", "submitted"], ["error", "submitted"])
    assert len(ledger) == 10
    assert {d["owner_ref"] for d in ledger} == {batch_id}
    async with sessions() as session:
        batch = await session.get(Batch, batch_id)
        assert batch is not None
        assert batch.state == "submitted"
        assert batch.submit_tries == 1


async def test_starting_a_campaign_copies_each_contacts_name_and_attributes(
    database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Personalisation and the export read a recipient's own copy of its contact."""
    make_list(database_url, us_numbers(3), name="copy-list")
    campaign_id = await create_campaign(database_url, campaign_toml(list_name="copy-list"))
    async with sessions() as session:
        rows = (
            await session.execute(
                select(Recipient.phone, Recipient.name, Recipient.attributes)
                .where(Recipient.campaign_id == campaign_id)
                .order_by(Recipient.id)
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        (phone, f"Person {i}", {"city": "Springfield"}) for i, phone in enumerate(us_numbers(3))
    ]
