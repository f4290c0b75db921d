"""Applying webhook events to attempts: real SQL, the real apply path, every delivery order.

Each scenario is one call's events as the platform sends them. They are stored the way
the ingester stores them and applied one delivery at a time (separate jobs), in order,
reversed, shuffled, duplicated, or all at once; the attempt row, the answers, the
recipient and the DNC list must end the same, and be right.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from arq.connections import RedisSettings, create_pool
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from campaigns import applying
from campaigns.applying import ApplyConfig, ApplyResult, apply_events, settle_attempts
from campaigns.config import Settings
from campaigns.db import async_session_factory, make_async_engine
from campaigns.definition import parse_definition
from campaigns.enablex.events import dedupe_key, parse_event
from campaigns.models import (
    Answer,
    Batch,
    BatchState,
    CallAttempt,
    DncNumber,
    Recipient,
    RecipientStatus,
    WebhookEvent,
)
from campaigns.store import events as store
from campaigns.webhooks import feed_key
from tests.integration.factories import campaign_toml, create_campaign, make_list, us_numbers
from workers import event_jobs
from workers.context import Deps, build_deps, close_deps
from workers.event_jobs import sweep_events

POLL = """
[poll]
opt_out_digit = "9"
opt_out_message = "You will not be called again."
closing_message = "Thank you, goodbye."

[[poll.questions]]
key = "rating"
kind = "dtmf"
text = "Press 1 for good, 2 for bad."
choices = { "1" = "good", "2" = "bad" }
max_tries = 2
invalid_message = "Sorry."

[[poll.questions]]
key = "again"
kind = "asr"
text = "Would you come again?"
choices = { "yes" = "yes", "no" = "no" }
"""
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=5)
CONFIG = ApplyConfig(settle_grace=timedelta(seconds=3), early_timeout=timedelta(seconds=60))


@dataclass
class World:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    campaign_id: int
    batch_id: str
    broadcast_id: str | None
    attempts: dict[str, int]  # phone -> attempt id
    settle_later: set[int] = field(default_factory=set)
    results: list[ApplyResult] = field(default_factory=list)

    async def store(self, events: list[dict[str, Any]], *, now: datetime = NOW) -> list[int]:
        """Store events as the ingester does; their ids."""
        async with self.engine.begin() as conn:
            return await store.insert_events(
                conn,
                [
                    store.NewEvent(dedupe_key(e), e.get("voice_id"), e.get("broadcast_id"), e, now)
                    for e in events
                ],
            )

    async def deliver(self, events: list[dict[str, Any]], *, now: datetime = NOW) -> ApplyResult:
        """Store events as the ingester does, then apply them as one job would."""
        ids = await self.store(events, now=now)
        async with self.sessions() as session, session.begin():
            result = await apply_events(session, ids, now=now, config=CONFIG)
        self.settle_later.update(result.settle_later)
        self.results.append(result)
        return result

    @asynccontextmanager
    async def holding(self, phone: str) -> AsyncIterator[None]:
        """Another transaction holds the call's attempt row (a row lock on PostgreSQL)."""
        async with self.sessions() as holder, holder.begin():
            await holder.execute(
                select(CallAttempt.id)
                .where(CallAttempt.id == self.attempts[phone])
                .with_for_update()
            )
            yield

    async def settle_after_grace(self) -> None:
        async with self.sessions() as session, session.begin():
            await settle_attempts(session, sorted(self.settle_later), now=NOW)

    async def snapshot(self, phone: str) -> dict[str, Any]:
        attempt_id = self.attempts[phone]
        async with self.sessions() as session:
            attempt = await session.get_one(CallAttempt, attempt_id)
            recipient = await session.get_one(Recipient, attempt.recipient_id)
            answers = (
                await session.scalars(
                    select(Answer)
                    .where(Answer.attempt_id == attempt_id)
                    .order_by(Answer.question_key)
                )
            ).all()
            dnc = (await session.scalars(select(DncNumber.phone))).all()
        return {
            "attempt": {
                k: getattr(attempt, k)
                for k in (
                    "voice_id",
                    "state",
                    "amd_result",
                    "disconnect_reason",
                    "outcome",
                    "ivr_state",
                    "poll_step",
                    "poll_tries",
                    "answered_at",
                    "ended_at",
                )
            },
            "settled": attempt.settled_at is not None,
            "answers": [
                (a.question_key, a.input_kind, a.raw, a.label, a.valid, a.received_at)
                for a in answers
            ],
            "recipient": (recipient.status, recipient.last_outcome, recipient.final_outcome),
            "dnc": list(dnc),
        }


@asynccontextmanager
async def worker_deps(database_url: str, redis_url: str) -> AsyncIterator[Deps]:
    """A worker's dependencies (on a queue of its own), with the clock at NOW."""
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        queue_name=f"test-apply-{uuid.uuid4().hex[:8]}",
    )
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    deps = await build_deps(settings, redis, clock=lambda: NOW)
    try:
        yield deps
    finally:
        await close_deps(deps)
        await redis.aclose()


@pytest.fixture
async def world_factory(database_url: str) -> AsyncIterator[Callable[..., Any]]:
    engines: list[AsyncEngine] = []

    async def make(
        phones: list[str],
        *,
        poll: str = POLL,
        amd: str = 'behaviour = "hangup_and_retry"',
        broadcast_id: str | None = "bc-0001",
        max_attempts: int = 3,
        message: str | None = None,
    ) -> World:
        make_list(database_url, phones)
        toml = campaign_toml(
            poll=poll,
            amd=amd,
            max_attempts=max_attempts,
            retry_on='["no_answer", "busy", "machine"]',
        )
        if message is not None:
            toml = toml.replace("Hello, this is a test message.", message)
        campaign_id = await create_campaign(database_url, toml, now=T0)
        engine = make_async_engine(database_url)
        engines.append(engine)
        batch_id = str(uuid.uuid4())
        async with engine.begin() as conn:
            await conn.execute(
                insert(Batch).values(
                    id=batch_id,
                    campaign_id=campaign_id,
                    size=len(phones),
                    broadcast_id=broadcast_id,
                    submitted_at=T0,
                    state=BatchState.SUBMITTED if broadcast_id else BatchState.SUBMITTING,
                )
            )
            await conn.execute(
                update(Recipient)
                .where(Recipient.campaign_id == campaign_id)
                .values(status=RecipientStatus.IN_FLIGHT, attempts=1)
            )
            rows = (
                await conn.execute(
                    select(Recipient.id, Recipient.phone).where(
                        Recipient.campaign_id == campaign_id
                    )
                )
            ).all()
            attempts = {}
            for rid, phone in rows:
                attempts[phone] = (
                    await conn.execute(
                        insert(CallAttempt)
                        .values(
                            recipient_id=rid,
                            campaign_id=campaign_id,
                            batch_id=batch_id,
                            attempt_no=1,
                            phone=phone,
                            state="queued",
                        )
                        .returning(CallAttempt.id)
                    )
                ).scalar_one()
        return World(
            engine, async_session_factory(engine), campaign_id, batch_id, broadcast_id, attempts
        )

    yield make
    for engine in engines:
        await engine.dispose()


class Script:
    """One call's events, 400 ms apart, as the platform sends them."""

    def __init__(self, phone: str, broadcast_id: str = "bc-0001") -> None:
        self.voice_id = str(uuid.uuid4())
        self.phone = phone
        self.broadcast_id = broadcast_id
        self.events: list[dict[str, Any]] = []

    def add(self, **fields: Any) -> Script:
        stamp = T0 + timedelta(milliseconds=400 * len(self.events))
        self.events.append(
            {
                "voice_id": self.voice_id,
                "broadcast_id": self.broadcast_id,
                "from": "12025550100",
                "to": self.phone.lstrip("+"),
                "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                **fields,
            }
        )
        return self

    def prompt(self, ref: str, end: str = "playfinished", **extra: Any) -> Script:
        self.add(playstate="initiated", prompt_ref=ref, play_id=f"p-{ref}")
        return self.add(playstate=end, prompt_ref=ref, play_id=f"p-{ref}", **extra)

    def answered(self, amd: str | None = "human") -> Script:
        self.add(state="initiated").add(state="ringing")
        return self.add(state="connected", **({"amd_result": amd} if amd else {}))

    def hangup(self, reason: str) -> Script:
        return self.add(state="disconnected", disconnect_reason=reason)


def completed(phone: str) -> Script:
    s = Script(phone).answered().prompt("msg")
    s.prompt("q:rating:1", "digitcollected", digit="7")
    s.prompt("q:rating:2", "digitcollected", digit="2")
    s.prompt(
        "q:again:1", "speech_recognized", text="Yes", reason="RecognizedSpeech", confidence=0.93
    )
    return s.prompt("closing").hangup("cancelled")


def partial(phone: str) -> Script:
    s = Script(phone).answered().prompt("msg")
    s.prompt("q:rating:1", "digitcollected", digits="1")
    s.add(playstate="initiated", prompt_ref="q:again:1")
    return s.hangup("normal")


def opted_out(phone: str) -> Script:
    s = Script(phone).answered().prompt("msg")
    return s.prompt("q:rating:1", "digitcollected", digit="9").prompt("optout").hangup("cancelled")


def machine(phone: str) -> Script:
    return (
        Script(phone)
        .answered("machine")
        .add(playstate="initiated", prompt_ref="msg")
        .hangup("cancelled")
    )


def silent(phone: str) -> Script:
    s = Script(phone).answered(None).prompt("msg")
    s.prompt("q:rating:1", "menutimeout").prompt("q:rating:2", "menutimeout")
    s.prompt("q:again:1", "speech_recognized", text="", reason="NoMatch")
    return s.hangup("normal")


def no_answer(phone: str) -> Script:
    return Script(phone).add(state="initiated").add(state="ringing").hangup("no-answer")


ORDERS: dict[str, Callable[[list[dict[str, Any]]], list[list[dict[str, Any]]]]] = {
    "in_order": lambda ev: [[e] for e in ev],
    "reversed": lambda ev: [[e] for e in reversed(ev)],
    "shuffled": lambda ev: [[e] for e in random.Random(len(ev)).sample(ev, len(ev))],
    "duplicated": lambda ev: [[e] for e in random.Random(7).sample(ev + ev, 2 * len(ev))],
    "one_job": lambda ev: [list(ev)],
    "disconnect_first": lambda ev: [[ev[-1]], *[[e] for e in ev[:-1]]],
    # groups of up to three, shuffled: some extend the call's fold, some go back in time
    "shuffled_threes": lambda ev: _threes(random.Random(3).sample(ev, len(ev))),
    # in order but for one event held back until the end
    "one_late": lambda ev: [[e] for e in ev[:2] + ev[3:] + ev[2:3]],
}


def _threes(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [events[i : i + 3] for i in range(0, len(events), 3)]


SCENARIOS: dict[str, tuple[Callable[[str], Script], dict[str, Any]]] = {
    "completed": (
        completed,
        {
            "outcome": "completed",
            "amd": "human",
            "reason": "cancelled",
            "ivr": "closing",
            "answers": [("again", "asr", "Yes", "yes", True), ("rating", "dtmf", "2", "bad", True)],
            "recipient": ("done", "completed", "completed"),
            "dnc": False,
        },
    ),
    "partial": (
        partial,
        {
            "outcome": "partial",
            "amd": "human",
            "reason": "normal",
            "ivr": "question",
            "answers": [("rating", "dtmf", "1", "good", True)],
            "recipient": ("done", "partial", "partial"),
            "dnc": False,
        },
    ),
    "opted_out": (
        opted_out,
        {
            "outcome": "opted_out",
            "amd": "human",
            "reason": "cancelled",
            "ivr": "opt_out",
            "answers": [],
            "recipient": ("done", "opted_out", "opted_out"),
            "dnc": True,
        },
    ),
    "machine": (
        machine,
        {
            "outcome": "machine",
            "amd": "machine",
            "reason": "cancelled",
            "ivr": "machine",
            "answers": [],
            "recipient": ("waiting_retry", "machine", None),
            "dnc": False,
        },
    ),
    "silent": (
        silent,
        {
            "outcome": "partial",
            "amd": None,
            "reason": "normal",
            "ivr": "question",
            "answers": [("rating", "none", None, None, False)],
            "recipient": ("done", "partial", "partial"),
            "dnc": False,
        },
    ),
    "no_answer": (
        no_answer,
        {
            "outcome": "no_answer",
            "amd": None,
            "reason": "no-answer",
            "ivr": None,
            "answers": [],
            "recipient": ("waiting_retry", "no_answer", None),
            "dnc": False,
        },
    ),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_the_same_final_state_whatever_the_delivery_order(
    world_factory: Callable[..., Any], scenario: str
) -> None:
    phones = us_numbers(len(ORDERS))
    world: World = await world_factory(phones)
    script_of, expected = SCENARIOS[scenario]
    snapshots: dict[str, dict[str, Any]] = {}
    for phone, order in zip(phones, ORDERS, strict=True):
        script = script_of(phone)
        for delivery in ORDERS[order](script.events):
            await world.deliver(delivery)
        await world.settle_after_grace()
        snap = await world.snapshot(phone)
        attempt = snap["attempt"]
        assert attempt["voice_id"] == script.voice_id, order
        assert attempt["state"] == "ended", order
        assert attempt["outcome"] == expected["outcome"], order
        assert attempt["amd_result"] == expected["amd"], order
        assert attempt["disconnect_reason"] == expected["reason"], order
        assert attempt["ivr_state"] == expected["ivr"], order
        assert (attempt["answered_at"] is not None) == (scenario != "no_answer"), order
        assert snap["settled"], order
        assert [a[:5] for a in snap["answers"]] == expected["answers"], order
        assert snap["recipient"] == expected["recipient"], order
        assert (phone in snap["dnc"]) == expected["dnc"], order
        del attempt["voice_id"], snap["dnc"]
        snapshots[order] = snap
    # every order gives exactly the in-order result, timestamps included
    for order, snap in snapshots.items():
        assert snap == snapshots["in_order"], order


async def test_in_order_the_ivr_commands_follow_the_script(
    world_factory: Callable[..., Any],
) -> None:
    phone = us_numbers(1)[0]
    world: World = await world_factory([phone])
    sent: list[str] = []
    for event in completed(phone).events:
        result = await world.deliver([event])
        for command in result.commands:
            assert command.broadcast_id == "bc-0001"
            sent.append(command.play.prompt_ref if command.play else "hangup")
    assert sent == ["q:rating:1", "q:rating:2", "q:again:1", "closing", "hangup"]
    texts = [c.play.text for r in world.results for c in r.commands if c.play]
    assert texts[1] == "Sorry. Press 1 for good, 2 for bad."


async def _connected_call(
    world_factory: Callable[..., Any],
) -> tuple[World, str, list[dict[str, Any]]]:
    """A call whose first two events (up to connected) are applied, and its whole script;
    PostgreSQL only (these tests hold its row lock)."""
    phone = us_numbers(1)[0]
    world: World = await world_factory([phone])
    if world.engine.dialect.name != "postgresql":
        pytest.skip("SQLite: one writer holds the whole database, there are no row locks")
    events = completed(phone).events
    await world.deliver(events[:2])
    return world, phone, events


async def test_a_call_held_by_another_transaction_is_left_for_later_not_waited_for(
    world_factory: Callable[..., Any],
) -> None:
    world, phone, events = await _connected_call(world_factory)
    async with world.holding(phone):
        held = await asyncio.wait_for(world.deliver(events[2:3]), timeout=10)
        assert held.applied == 0
        assert len(held.busy) == 1
    async with world.sessions() as session, session.begin():
        again = await apply_events(session, held.busy, now=NOW, config=CONFIG)
    assert (again.applied, again.busy) == (1, [])
    assert (await world.snapshot(phone))["attempt"]["state"] == "connected"


@pytest.mark.parametrize("urgent", [True, False])
async def test_an_apply_job_puts_busy_events_back_on_the_feed_they_came_from(
    world_factory: Callable[..., Any], database_url: str, redis_url: str, urgent: bool
) -> None:
    """A group the feed handed to an `apply_events` job (a database error, an early event)
    keeps its urgency: events whose call is held go back on the urgent feed when they came
    from it, not behind the ordinary feed's backlog."""
    world, phone, events = await _connected_call(world_factory)
    ids = await world.store(events[2:3])
    async with worker_deps(database_url, redis_url) as deps:
        async with world.holding(phone):
            status = await asyncio.wait_for(
                event_jobs.apply_events({"deps": deps, "job_try": 1}, ids, urgent), timeout=10
            )
        on_feed = {
            kind: [
                json.loads(item)
                for item in await deps.redis.lrange(
                    feed_key(deps.settings.queue_name, urgent=kind), 0, -1
                )
            ]
            for kind in (True, False)
        }
    assert status.startswith("applied 0")
    assert on_feed == {urgent: [ids], not urgent: []}


async def test_a_worker_apply_waits_for_its_own_other_apply_of_the_call_not_skips_it(
    world_factory: Callable[..., Any], database_url: str, redis_url: str
) -> None:
    """Two applies of one worker on the same call: the second waits for the first and
    applies everything (none handed back as busy); an urgent one does not wait."""
    world, phone, events = await _connected_call(world_factory)
    ids = await world.store(events[2:3])
    async with worker_deps(database_url, redis_url) as deps:
        holds = deps.attempt_holds
        assert holds is not None
        async with holds.scope() as acquire:  # another apply of this worker has the call
            await acquire([world.attempts[phone]])
            waiting = asyncio.create_task(event_jobs._apply_in_db(deps, ids))
            await asyncio.sleep(0.3)
            assert not waiting.done()
        result = await asyncio.wait_for(waiting, timeout=10)
        assert (result.applied, result.busy) == (1, [])
        assert holds.waits == 1
        urgent_ids = await world.store(events[3:4])
        async with holds.scope() as acquire:
            await acquire([world.attempts[phone]])
            urgent = await asyncio.wait_for(
                event_jobs._apply_in_db(deps, urgent_ids, urgent=True), timeout=10
            )
        assert (urgent.applied, urgent.busy, holds.waits) == (1, [], 1)
        assert holds.held() == set()


async def test_an_urgent_event_held_by_the_workers_backlog_apply_goes_first_once_it_ends(
    world_factory: Callable[..., Any], database_url: str, redis_url: str
) -> None:
    """The urgent feed does not wait for an ordinary apply of its own worker (a backlog's
    large group), and does not send the event it found held to the back of the feed: it
    goes back at the head, the moment that apply ends."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite: one writer holds the whole database, there are no row locks")
    world, phone, events = await _connected_call(world_factory)
    ids = await world.store(events[2:3])
    async with worker_deps(database_url, redis_url) as deps:
        holds = deps.attempt_holds
        assert holds is not None
        key = feed_key(deps.settings.queue_name, urgent=True)
        await deps.redis.rpush(key, json.dumps([10**12]))  # another group, already waiting
        feed = event_jobs.ApplyFeed(deps, deps.redis, concurrency=1, urgent=True)
        async with holds.scope() as ordinary, world.holding(phone):
            await ordinary([world.attempts[phone]])
            await feed._slots.acquire()
            await asyncio.wait_for(feed._apply(ids), timeout=10)
            await asyncio.sleep(0.3)
            assert await deps.redis.lrange(key, 0, -1) == [b"[1000000000000]"]
        await asyncio.sleep(0.3)
        assert [json.loads(i) for i in await deps.redis.lrange(key, 0, -1)] == [ids, [10**12]]
        await feed.close()
    assert feed.applied == 0


async def test_an_overlong_disconnect_reason_is_cut_and_fails_nothing_else(
    world_factory: Callable[..., Any],
) -> None:
    odd, fine = us_numbers(2)
    world: World = await world_factory([odd, fine])
    odd_events = Script(odd).add(state="initiated").hangup("carrier-said-" + "x" * 40).events
    result = await world.deliver(odd_events + completed(fine).events)
    assert result.applied == len(odd_events) + len(completed(fine).events)
    reason = (await world.snapshot(odd))["attempt"]["disconnect_reason"]
    assert reason == ("carrier-said-" + "x" * 40)[:32]
    assert (await world.snapshot(fine))["attempt"]["outcome"] == "completed"


async def test_no_command_is_sent_to_a_call_that_has_ended(
    world_factory: Callable[..., Any],
) -> None:
    phone = us_numbers(1)[0]
    world: World = await world_factory([phone])
    for delivery in ORDERS["disconnect_first"](completed(phone).events):
        result = await world.deliver(delivery)
        assert result.commands == []


async def test_disconnected_before_connected_waits_instead_of_settling_wrongly(
    world_factory: Callable[..., Any],
) -> None:
    phone = us_numbers(1)[0]
    world: World = await world_factory([phone])
    script = machine(phone)
    first = await world.deliver([script.events[-1]])  # disconnected (cancelled) first
    assert first.settle_later == [world.attempts[phone]]
    assert not (await world.snapshot(phone))["settled"]
    await world.deliver(script.events[:-1])  # the rest, late
    snap = await world.snapshot(phone)
    assert snap["settled"]
    assert snap["attempt"]["outcome"] == "machine"  # not "completed", not "unknown"


async def test_an_answer_held_up_past_the_grace_period_cancels_the_retry(
    world_factory: Callable[..., Any],
) -> None:
    """The last answer reaches us only after the call was settled `partial` and a retry
    planned (retry_incomplete): the outcome is corrected and nobody calls the person
    again. A late fact never re-opens a finished recipient."""
    phone = us_numbers(1)[0]
    world: World = await world_factory(
        [phone], poll=POLL.replace("[poll]\n", "[poll]\nretry_incomplete = true\n")
    )
    script = completed(phone)
    (late,) = [e for e in script.events if e.get("playstate") == "speech_recognized"]
    await world.deliver([e for e in script.events if e is not late])
    await world.settle_after_grace()
    snap = await world.snapshot(phone)
    assert snap["attempt"]["outcome"] == "partial"
    assert snap["recipient"] == ("waiting_retry", "partial", None)

    result = await world.deliver([late])
    snap = await world.snapshot(phone)
    assert result.resettled == 1
    assert snap["attempt"]["outcome"] == "completed"
    assert snap["recipient"] == ("done", "completed", "completed")
    async with world.sessions() as session:
        recipient = (await session.scalars(select(Recipient))).one()
        assert recipient.next_attempt_at is None
        assert recipient.attempts == 1


async def test_a_late_fact_never_reopens_a_finished_recipient(
    world_factory: Callable[..., Any],
) -> None:
    """A completed poll (recipient done); then the platform reports the call's answering
    machine result as `machine`, late. The attempt's record takes the fact, but the
    finished recipient is not re-opened for a retry."""
    phone = us_numbers(1)[0]
    world: World = await world_factory([phone])
    script = completed(phone)
    await world.deliver(script.events)
    assert (await world.snapshot(phone))["recipient"] == ("done", "completed", "completed")
    connected = next(e for e in script.events if e.get("state") == "connected")
    result = await world.deliver([{**connected, "amd_result": "machine"}])
    snap = await world.snapshot(phone)
    assert result.resettled == 0
    assert snap["attempt"]["amd_result"] == "machine"
    assert snap["recipient"] == ("done", "completed", "completed")


async def test_a_machine_reported_after_the_poll_began_still_hangs_up(
    world_factory: Callable[..., Any],
) -> None:
    phone = us_numbers(1)[0]
    world: World = await world_factory([phone])
    s = Script(phone).answered(None).prompt("msg")
    s.add(playstate="initiated", prompt_ref="q:rating:1", amd_result="machine")
    results = [await world.deliver([e]) for e in s.events]
    assert [c.play for c in results[-1].commands] == [None]  # hang up
    assert (await world.snapshot(phone))["attempt"]["ivr_state"] == "machine"


async def test_an_early_event_waits_for_its_broadcast_then_applies(
    world_factory: Callable[..., Any],
) -> None:
    phone = us_numbers(1)[0]
    world: World = await world_factory([phone], broadcast_id=None)
    script = Script(phone, broadcast_id="bc-late").answered()
    first = await world.deliver(script.events)
    assert len(first.waiting) == 3
    assert (await world.snapshot(phone))["attempt"]["voice_id"] is None
    async with world.engine.begin() as conn:  # POST /broadcast answers: the id is recorded
        await conn.execute(
            update(Batch).where(Batch.id == world.batch_id).values(broadcast_id="bc-late")
        )
    async with world.sessions() as session, session.begin():
        again = await apply_events(session, first.waiting, now=NOW, config=CONFIG)
    assert again.applied == 3
    snap = await world.snapshot(phone)
    assert snap["attempt"]["voice_id"] == script.voice_id
    assert snap["attempt"]["state"] == "connected"


async def test_events_for_numbers_or_calls_not_submitted_are_quarantined(
    world_factory: Callable[..., Any],
) -> None:
    phone, stranger = us_numbers(2)
    world: World = await world_factory([phone])
    ours = Script(phone).answered()
    await world.deliver(ours.events)
    forged = Script(stranger).answered()  # a known broadcast, a number it never had
    second_call = Script(phone).answered()  # a second voice_id for the same attempt
    result = await world.deliver(forged.events + second_call.events)
    assert (result.applied, result.quarantined) == (0, 6)
    async with world.sessions() as session:
        rows = (await session.scalars(select(WebhookEvent).order_by(WebhookEvent.id))).all()
    assert [r.quarantined for r in rows] == [False] * 3 + [True] * 6
    assert all(r.applied_at is None for r in rows if r.quarantined)
    assert (await world.snapshot(phone))["attempt"]["voice_id"] == ours.voice_id


async def test_the_sweeper_applies_events_stored_but_never_applied(
    world_factory: Callable[..., Any], database_url: str, redis_url: str
) -> None:
    phone = us_numbers(1)[0]
    world: World = await world_factory([phone])
    script = completed(phone)
    await world.store(script.events, now=T0)  # stored, then the worker "crashed"
    async with worker_deps(database_url, redis_url) as deps:
        status = await sweep_events({"deps": deps})
    assert status.startswith(f"re-applied {len(script.events)}")
    snap = await world.snapshot(phone)
    assert snap["settled"]
    assert snap["attempt"]["outcome"] == "completed"
    assert [a[3] for a in snap["answers"]] == ["yes", "bad"]


async def test_commands_carry_the_personalised_message(
    world_factory: Callable[..., Any],
) -> None:
    phone = us_numbers(1)[0]
    world: World = await world_factory([phone], poll="", message="Hello {name} from {city}.")
    # the factory's contacts are "Person 0"... with attributes {"city": "Springfield"}
    script = Script(phone).answered().prompt("greet")
    results = [await world.deliver([e]) for e in script.events]
    plays = [c.play for r in results for c in r.commands if c.play]
    assert [(p.prompt_ref, p.text) for p in plays] == [("msg", "Hello Person 0 from Springfield.")]


class _Undo(Exception):
    """Raised to roll a transaction back."""


async def _apply_then_fail(world: World, ids: list[int]) -> None:
    async with world.sessions() as session, session.begin():
        await apply_events(session, ids, now=NOW, config=CONFIG)
        raise _Undo


async def test_a_kept_fold_is_not_used_once_the_call_changed_elsewhere(
    world_factory: Callable[..., Any],
) -> None:
    """A worker keeps each call's fold to extend it; the attempt row's digest of the events
    applied tells it when that fold no longer holds what the database holds: events applied
    by another worker, or its own apply rolled back. Either way the result is the fold of
    what is stored, as if every event had been applied in order by one worker."""
    phones = us_numbers(3)
    world: World = await world_factory(phones)
    snapshots = []
    for n, phone in enumerate(phones):
        events = completed(phone).events
        digit = next(i for i, e in enumerate(events) if e.get("digit") == "7")
        for event in events[:digit]:
            await world.deliver([event])
        voice_id = events[0]["voice_id"]
        if n == 1:  # another worker applies the first answer: this one's fold misses it
            held = applying._FOLDS[voice_id]
            await world.deliver([events[digit]])
            applying._FOLDS[voice_id] = held
        elif n == 2:  # this worker folds the first answer, then its transaction fails
            ids = await world.store([events[digit]])
            with pytest.raises(_Undo):
                await _apply_then_fail(world, ids)
            async with world.sessions() as session, session.begin():
                await apply_events(session, ids, now=NOW, config=CONFIG)  # the sweeper
        else:
            await world.deliver([events[digit]])
        for event in events[digit + 1 :]:
            await world.deliver([event])
        snap = await world.snapshot(phone)
        assert snap["attempt"]["outcome"] == "completed", n
        del snap["attempt"]["voice_id"], snap["dnc"]
        snapshots.append(snap)
    assert snapshots[1] == snapshots[0]
    assert snapshots[2] == snapshots[0]


def test_the_events_digest_is_one_of_the_set() -> None:
    ids = [5, 17, 3, 1_000_000_007]
    whole = applying.events_digest(ids)
    assert applying.events_digest(reversed(ids)) == whole
    assert applying.events_digest(ids[2:], applying.events_digest(ids[:2])) == whole
    assert applying.events_digest([]) == 0
    assert 0 < whole < 2**63
    assert applying.events_digest([5, 17]) != applying.events_digest([5, 18])


def _timed_events(script: Script) -> list[applying.TimedEvent]:
    out = []
    for data in script.events:
        event = parse_event(data)
        assert event.timestamp is not None
        out.append(applying.TimedEvent(event.timestamp, event, dedupe_key(data)))
    return out


def _fold_in_batches(
    defn: Any, batches: list[list[applying.TimedEvent]]
) -> tuple[applying.CallFold, int]:
    """The fold a worker keeps, batch after batch: extended where it can be, folded again
    from everything so far where it cannot; and how many batches extended it."""
    so_far = list(batches[0])
    base = applying._Folded(0, defn, {}, *applying._fold_all(defn, so_far, {}))
    extended = 0
    for batch in batches[1:]:
        so_far += batch
        result = applying._extend(defn, base, batch, {})
        if result is None:
            result = applying._fold_all(defn, so_far, {})
        else:
            extended += 1
        base = applying._Folded(0, defn, {}, *result)
    return base.fold, extended


def test_a_kept_fold_extended_out_of_order_equals_folding_everything_in_order() -> None:
    """Events that commute (dialled, ringing, a prompt started, the hang-up) extend a kept
    fold even when they happened before events it holds; every other event only when it
    happened after them. Whatever the order and batching, the result is `fold_call` of
    the whole set, and out-of-order batches do extend (no history read for them)."""
    defn = parse_definition(campaign_toml(poll=POLL, amd='behaviour = "hangup_and_retry"'))
    extended = 0
    for name, (script_of, _) in SCENARIOS.items():
        events = _timed_events(script_of("+12025550123"))
        whole = applying.fold_call(defn, events, {})
        for seed in range(200):
            rng = random.Random(seed)
            shuffled = rng.sample(events, len(events))
            cuts = sorted(rng.sample(range(1, len(events)), rng.randint(1, len(events) - 1)))
            batches = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
            fold, n = _fold_in_batches(defn, batches)
            assert fold == whole, (name, seed)
            extended += n
    # the feeds' usual reordering: a prompt's answer applied before its call's dialling
    events = _timed_events(completed("+12025550123"))
    late_dialling = [events[2:8], events[:2], events[8:]]
    fold, n = _fold_in_batches(defn, late_dialling)
    assert fold == applying.fold_call(defn, events, {})
    assert n == 2
    assert extended > 0


def test_of_two_hang_ups_the_first_sets_the_reason_in_any_order() -> None:
    defn = parse_definition(campaign_toml(poll=POLL))
    script = Script("+12025550123").answered().hangup("normal").hangup("failed")
    events = _timed_events(script)
    whole = applying.fold_call(defn, events, {})
    assert whole.disconnect_reason == "normal"
    fold, n = _fold_in_batches(defn, [events[:3], [events[4]], [events[3]]])
    assert fold == whole
    assert n == 1  # the earlier hang-up, after the later one: folded again


def test_an_amd_result_on_a_ringing_event_is_folded_in_its_place() -> None:
    defn = parse_definition(campaign_toml(poll=POLL))
    script = Script("+12025550123").add(state="initiated").add(state="connected")
    script.prompt("msg").add(state="ringing", amd_result="machine").hangup("cancelled")
    events = _timed_events(script)
    events[4] = replace(events[4], when=events[1].when - timedelta(milliseconds=1))
    whole = applying.fold_call(defn, events, {})
    assert whole.amd_result == "machine"
    fold, n = _fold_in_batches(defn, [events[:4], [events[4]], events[5:]])
    assert fold == whole
    assert n == 1  # the ringing event with its AMD result went back in time: folded again


async def test_a_call_whose_only_applied_events_are_unknown_ones_folds_right(
    world_factory: Callable[..., Any],
) -> None:
    """An attempt still queued has nothing to fold from its history (an unknown event
    leaves it queued): its first events are folded from nothing, and a worker that later
    reads the history (a restart) agrees with one that kept the fold."""
    phones = us_numbers(2)
    world: World = await world_factory(phones)
    snapshots = []
    for n, phone in enumerate(phones):
        script = completed(phone)
        unknown = dict(script.events[0], state="on-hold-for-music")
        unknown.pop("playstate", None)
        result = await world.deliver([unknown])
        assert result.applied == 1
        assert result.quarantined == 0
        assert (await world.snapshot(phone))["attempt"]["state"] == "queued"
        applying._FOLDS.clear()  # a new worker process
        for i, event in enumerate(script.events):
            if n == 1 and i == len(script.events) - 1:
                applying._FOLDS.clear()  # restarted before the hang-up: history read
            await world.deliver([event])
        snap = await world.snapshot(phone)
        assert snap["attempt"]["outcome"] == "completed", n
        assert [a[:3] for a in snap["answers"]] == [
            ("again", "asr", "Yes"),
            ("rating", "dtmf", "2"),
        ], n
        del snap["attempt"]["voice_id"], snap["dnc"]
        snapshots.append(snap)
    assert snapshots[1] == snapshots[0]
