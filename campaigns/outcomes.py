"""Settling an attempt: its outcome decides the recipient's next step (retry rules).

Called by the webhook side when an attempt ends, by the sweeper when its final event never
came, and by the dispatcher when EnableX rejects a batch. Idempotent: an attempt is settled
once; a second call is a no-op. Only the recipient's latest attempt can move the recipient.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from campaigns.definition import CampaignDefinition, definition_from_json
from campaigns.models import (
    AttemptState,
    CallAttempt,
    Campaign,
    CampaignStatus,
    Recipient,
    RecipientStatus,
)
from campaigns.scheduling import Decision, Outcome, decide_after_attempt, zones_of
from campaigns.store.calls import update_rows

log = logging.getLogger(__name__)

_ATTEMPT = cast(Table, CallAttempt.__table__)
_RECIPIENT = cast(Table, Recipient.__table__)


@lru_cache(maxsize=256)
def _definition(campaign_id: int, frozen: str) -> CampaignDefinition:
    return definition_from_json(json.loads(frozen))


def campaign_definition(campaign_id: int, data: dict[str, Any] | str) -> CampaignDefinition:
    """The parsed, frozen definition of a campaign, from its JSON (a dict, or the text as
    stored: cheaper, no re-serialising); cached, as it never changes once started."""
    frozen = data if isinstance(data, str) else json.dumps(data, sort_keys=True)
    return _definition(campaign_id, frozen)


async def settle_attempt(
    session: AsyncSession, *, attempt_id: int, outcome: Outcome, now: datetime
) -> Decision | None:
    """Record the attempt's outcome and apply the retry rules to its recipient."""
    row = (
        await session.execute(
            update(CallAttempt)
            .where(CallAttempt.id == attempt_id, CallAttempt.settled_at.is_(None))
            .values(
                settled_at=now,
                outcome=outcome.value,
                state=AttemptState.ENDED,
            )
            .returning(
                CallAttempt.recipient_id,
                CallAttempt.attempt_no,
                CallAttempt.campaign_id,
                CallAttempt.ended_at,
            )
        )
    ).one_or_none()
    if row is None:
        return None
    recipient_id, attempt_no, campaign_id, ended_at = row
    if ended_at is None:
        await session.execute(
            update(CallAttempt).where(CallAttempt.id == attempt_id).values(ended_at=now)
        )
    decision = await _decide(
        session, recipient_id, attempt_no, campaign_id, ended_at or now, outcome
    )
    moved = await _move_recipient(
        session, recipient_id, attempt_no, [RecipientStatus.IN_FLIGHT], decision, outcome, now
    )
    if not moved:
        log.warning("attempt %s settled but its recipient had moved on", attempt_id)
    return decision


async def _move_recipient(
    session: AsyncSession,
    recipient_id: int,
    attempt_no: int,
    expect: list[RecipientStatus],
    decision: Decision,
    outcome: Outcome,
    now: datetime,
) -> bool:
    """Apply `decision` to the recipient if it is still at attempt `attempt_no` and in one
    of the `expect`ed states (a conditional update); False when it had moved on."""
    moved = await session.execute(
        update(Recipient)
        .where(
            Recipient.id == recipient_id,
            Recipient.status.in_(expect),
            Recipient.attempts == attempt_no,
        )
        .values(
            status=decision.status,
            next_attempt_at=decision.next_attempt_at,
            last_outcome=outcome.value,
            final_outcome=decision.final_outcome,
            updated_at=now,
        )
    )
    return bool(moved.rowcount)  # type: ignore[attr-defined]


async def _decide(
    session: AsyncSession,
    recipient_id: int,
    attempt_no: int,
    campaign_id: int,
    ended_at: datetime,
    outcome: Outcome,
) -> Decision:
    """The retry rules for a recipient whose attempt `attempt_no` ended with `outcome`."""
    campaign = (
        await session.execute(
            select(Campaign.status, Campaign.definition).where(Campaign.id == campaign_id)
        )
    ).one()
    time_zones = (
        await session.execute(select(Recipient.time_zones).where(Recipient.id == recipient_id))
    ).scalar_one()
    definition = campaign_definition(campaign_id, campaign.definition)
    return decision_for(outcome, attempt_no, campaign.status, definition, time_zones, ended_at)


def decision_for(
    outcome: Outcome,
    attempt_no: int,
    campaign_status: str,
    definition: CampaignDefinition,
    time_zones: str | None,
    ended_at: datetime,
) -> Decision:
    """The retry rules, given what they depend on (pure)."""
    if campaign_status == CampaignStatus.CANCELLED:
        return Decision(status="cancelled", next_attempt_at=None, final_outcome=outcome.value)
    return decide_after_attempt(
        outcome=outcome,
        attempts_made=attempt_no,
        retry=definition.retry,
        window=definition.window,
        zones=zones_of(time_zones, definition.window),
        ended_at=ended_at,
        retry_incomplete=bool(definition.poll and definition.poll.retry_incomplete),
        end_date=definition.end_date,
    )


@dataclass(frozen=True, slots=True)
class ToSettle:
    """An ended, unsettled attempt (locked by the caller) and what its decision needs."""

    attempt_id: int
    recipient_id: int
    attempt_no: int
    ended_at: datetime | None
    outcome: Outcome
    campaign_status: str
    definition: CampaignDefinition
    time_zones: str | None


async def settle_many(session: AsyncSession, items: Sequence[ToSettle], now: datetime) -> int:
    """`settle_attempt` for many attempts at once, in two statements: the attempts'
    outcomes, then their recipients' decisions. The caller holds the attempts'
    locks and has seen them unsettled; the conditions are kept all the same, so a second
    run settles nothing twice. Returns how many attempts were settled."""
    if not items:
        return 0
    settled = await update_rows(
        session,
        _ATTEMPT,
        [
            {
                "id": i.attempt_id,
                "settled_at": now,
                "outcome": i.outcome.value,
                "state": str(AttemptState.ENDED),
                "ended_at": i.ended_at or now,
            }
            for i in items
        ],
        match=("id",),
        where=(_ATTEMPT.c.settled_at.is_(None),),
    )
    moves = []
    for item in items:
        decision = decision_for(
            item.outcome,
            item.attempt_no,
            item.campaign_status,
            item.definition,
            item.time_zones,
            item.ended_at or now,
        )
        moves.append(
            {
                "id": item.recipient_id,
                "attempts": item.attempt_no,
                "status": str(decision.status),
                "next_attempt_at": decision.next_attempt_at,
                "last_outcome": item.outcome.value,
                "final_outcome": decision.final_outcome,
                "updated_at": now,
            }
        )
    moved = await update_rows(
        session,
        _RECIPIENT,
        moves,
        match=("id", "attempts"),
        where=(_RECIPIENT.c.status == RecipientStatus.IN_FLIGHT,),
    )
    if moved < settled:
        log.warning("%d settled attempt(s) whose recipient had moved on", settled - moved)
    return settled


async def resettle_attempt(
    session: AsyncSession, *, attempt_id: int, outcome: Outcome, now: datetime
) -> Decision | None:
    """Late events changed a settled attempt's outcome (an answer held up past the grace
    period, a call settled `unknown` whose events came after all): record the new outcome
    and redo the recipient's decision while nothing has been done on the old one yet.

    A recipient waiting for its retry takes the new decision, whatever it is (so a person
    whose poll was complete after all is not called again). A finished recipient (done,
    failed) takes it only if it is final too: a late fact never re-opens a recipient. A
    recipient dialled again since, suppressed or cancelled keeps its state; the attempt
    keeps its corrected outcome either way. Returns the decision applied, or None."""
    row = (
        await session.execute(
            update(CallAttempt)
            .where(
                CallAttempt.id == attempt_id,
                CallAttempt.settled_at.is_not(None),
                CallAttempt.outcome != outcome.value,
            )
            .values(outcome=outcome.value)
            .returning(
                CallAttempt.recipient_id,
                CallAttempt.attempt_no,
                CallAttempt.campaign_id,
                CallAttempt.ended_at,
                CallAttempt.settled_at,
            )
        )
    ).one_or_none()
    if row is None:
        return None
    recipient_id, attempt_no, campaign_id, ended_at, settled_at = row
    decision = await _decide(
        session, recipient_id, attempt_no, campaign_id, ended_at or settled_at or now, outcome
    )
    open_to = [RecipientStatus.WAITING_RETRY]
    if decision.status in (RecipientStatus.DONE, RecipientStatus.FAILED):
        open_to += [RecipientStatus.DONE, RecipientStatus.FAILED]
    if not await _move_recipient(
        session, recipient_id, attempt_no, open_to, decision, outcome, now
    ):
        return None
    log.info("attempt %s: late events changed its outcome to %s", attempt_id, outcome.value)
    return decision
