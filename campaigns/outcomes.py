"""Settling an attempt: its outcome decides the recipient's next step (retry rules).

Called by the webhook side when an attempt ends, by the sweeper when its final event never
came, and by the dispatcher when EnableX rejects a batch. Idempotent: an attempt is settled
once; a second call is a no-op. Only the recipient's latest attempt can move the recipient.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import select, update
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

log = logging.getLogger(__name__)


@lru_cache(maxsize=256)
def _definition(campaign_id: int, frozen: str) -> CampaignDefinition:
    import json

    return definition_from_json(json.loads(frozen))


def campaign_definition(campaign_id: int, data: dict[str, Any]) -> CampaignDefinition:
    """The parsed, frozen definition of a campaign (cached: it never changes once started)."""
    import json

    return _definition(campaign_id, json.dumps(data, sort_keys=True))


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
    recipient = (
        await session.execute(
            select(Recipient.attempts, Recipient.time_zones).where(Recipient.id == recipient_id)
        )
    ).one()
    definition = campaign_definition(campaign_id, campaign.definition)
    if campaign.status == CampaignStatus.CANCELLED:
        return Decision(status="cancelled", next_attempt_at=None, final_outcome=outcome.value)
    return decide_after_attempt(
        outcome=outcome,
        attempts_made=attempt_no,
        retry=definition.retry,
        window=definition.window,
        zones=zones_of(recipient.time_zones, definition.window),
        ended_at=ended_at,
        retry_incomplete=bool(definition.poll and definition.poll.retry_incomplete),
        end_date=definition.end_date,
    )


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
