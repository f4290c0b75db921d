"""The SQL of campaigns: creation, lifecycle transitions, recipient fan-out, status counts.

Every function takes a session and never commits: the caller owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, exists, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from campaigns.errors import NotFoundError, StateError
from campaigns.models import (
    CallAttempt,
    Campaign,
    CampaignStatus,
    Contact,
    ContactList,
    DncNumber,
    Recipient,
    RecipientStatus,
)

# Which transitions each command may make: command -> (allowed from, to).
TRANSITIONS: dict[str, tuple[frozenset[str], CampaignStatus]] = {
    "start": (frozenset({CampaignStatus.DRAFT}), CampaignStatus.RUNNING),
    "pause": (frozenset({CampaignStatus.RUNNING}), CampaignStatus.PAUSED),
    "resume": (frozenset({CampaignStatus.PAUSED}), CampaignStatus.RUNNING),
    "cancel": (
        frozenset({CampaignStatus.DRAFT, CampaignStatus.RUNNING, CampaignStatus.PAUSED}),
        CampaignStatus.CANCELLED,
    ),
}
OPEN_RECIPIENT = (RecipientStatus.PENDING, RecipientStatus.WAITING_RETRY)
DNC_OUTCOME = "dnc"


async def list_id_by_name(session: AsyncSession, name: str) -> int:
    found = await session.scalar(select(ContactList.id).where(ContactList.name == name))
    if found is None:
        names = (await session.scalars(select(ContactList.name).order_by(ContactList.name))).all()
        known = ", ".join(names) if names else "none: run `campaign import` first"
        raise NotFoundError(f"contact list {name!r} does not exist (lists: {known})")
    return found


async def create_campaign(
    session: AsyncSession,
    *,
    name: str,
    list_id: int,
    caller_id: str,
    definition: dict[str, Any],
    source_file: str | None,
    now: datetime,
) -> int:
    campaign = Campaign(
        name=name,
        status=CampaignStatus.DRAFT,
        list_id=list_id,
        caller_id=caller_id,
        definition=definition,
        source_file=source_file,
        created_at=now,
        updated_at=now,
    )
    session.add(campaign)
    await session.flush()
    return campaign.id


async def get_campaign(session: AsyncSession, campaign_id: int) -> Campaign:
    campaign = await session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFoundError(f"campaign {campaign_id} does not exist")
    return campaign


async def transition(
    session: AsyncSession, campaign_id: int, command: str, now: datetime
) -> Campaign:
    """Move a campaign by `command`, or raise StateError naming the current status."""
    allowed, target = TRANSITIONS[command]
    campaign = await get_campaign(session, campaign_id)
    stamps: dict[str, Any] = {"status": target, "updated_at": now}
    if command == "start":
        stamps["started_at"] = now
    elif command == "pause":
        stamps["paused_at"] = now
    elif command == "resume":
        stamps["paused_at"] = None
    elif command == "cancel":
        stamps["ended_at"] = now
    result = await session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.status.in_(allowed))
        .values(**stamps)
        .returning(Campaign.id)
    )
    if result.scalar_one_or_none() is None:
        await session.refresh(campaign)
        raise StateError(
            f"cannot {command} campaign {campaign_id}: it is {campaign.status} "
            f"(allowed from: {', '.join(sorted(allowed))})"
        )
    await session.refresh(campaign)
    return campaign


async def fan_out_recipients(session: AsyncSession, campaign: Campaign, now: datetime) -> int:
    """One recipient row per contact of the campaign's list, in one set-based statement,
    in the order the contacts were added (an import adds them in the file's row order), so
    the campaign calls them in that order. Each recipient keeps a copy of its contact's name
    and attributes (personalisation and the export read them there).

    Numbers on the DNC list become `suppressed` with final outcome `dnc`.
    """
    on_dnc = exists().where(DncNumber.phone == Contact.phone)
    rows = (
        select(
            literal(campaign.id),
            Contact.id,
            Contact.phone,
            Contact.time_zones,
            Contact.name,
            Contact.attributes,
            case(
                (on_dnc, literal(RecipientStatus.SUPPRESSED.value)),
                else_=literal(RecipientStatus.PENDING.value),
            ),
            literal(0),
            case((on_dnc, literal(DNC_OUTCOME)), else_=literal(None)),
            literal(now, type_=Recipient.__table__.c.updated_at.type),
        )
        .where(Contact.list_id == campaign.list_id)
        .order_by(Contact.id)
    )
    statement = insert(Recipient).from_select(
        [
            "campaign_id",
            "contact_id",
            "phone",
            "time_zones",
            "name",
            "attributes",
            "status",
            "attempts",
            "final_outcome",
            "updated_at",
        ],
        rows,
    )
    await session.execute(statement)
    total = (
        await session.scalar(
            select(func.count()).select_from(Recipient).where(Recipient.campaign_id == campaign.id)
        )
        or 0
    )
    await session.execute(
        update(Campaign).where(Campaign.id == campaign.id).values(recipients_total=total)
    )
    return total


async def cancel_open_recipients(session: AsyncSession, campaign_id: int, now: datetime) -> int:
    """A cancelled campaign: every recipient not yet dialled or waiting is cancelled."""
    result = await session.execute(
        update(Recipient)
        .where(Recipient.campaign_id == campaign_id, Recipient.status.in_(OPEN_RECIPIENT))
        .values(status=RecipientStatus.CANCELLED, final_outcome="cancelled", updated_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def list_campaigns(session: AsyncSession) -> list[Campaign]:
    return list((await session.scalars(select(Campaign).order_by(Campaign.id))).all())


async def running_campaign_ids(session: AsyncSession) -> list[int]:
    rows = await session.scalars(
        select(Campaign.id).where(Campaign.status == CampaignStatus.RUNNING).order_by(Campaign.id)
    )
    return list(rows.all())


@dataclass(frozen=True)
class StatusCounts:
    by_status: dict[str, int]
    by_outcome: dict[str, int]
    attempts: int
    attempts_open: int

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    @property
    def finished(self) -> int:
        return sum(
            n
            for s, n in self.by_status.items()
            if s
            not in (
                RecipientStatus.PENDING,
                RecipientStatus.WAITING_RETRY,
                RecipientStatus.IN_FLIGHT,
            )
        )


async def status_counts(session: AsyncSession, campaign_id: int) -> StatusCounts:
    by_status = {
        str(s): int(n)
        for s, n in (
            await session.execute(
                select(Recipient.status, func.count())
                .where(Recipient.campaign_id == campaign_id)
                .group_by(Recipient.status)
            )
        ).all()
    }
    by_outcome = {
        str(o): int(n)
        for o, n in (
            await session.execute(
                select(Recipient.final_outcome, func.count())
                .where(Recipient.campaign_id == campaign_id, Recipient.final_outcome.is_not(None))
                .group_by(Recipient.final_outcome)
            )
        ).all()
    }
    attempts = (
        await session.scalar(
            select(func.count())
            .select_from(CallAttempt)
            .where(CallAttempt.campaign_id == campaign_id)
        )
        or 0
    )
    attempts_open = (
        await session.scalar(
            select(func.count())
            .select_from(CallAttempt)
            .where(and_(CallAttempt.campaign_id == campaign_id, CallAttempt.settled_at.is_(None)))
        )
        or 0
    )
    return StatusCounts(by_status, by_outcome, int(attempts), int(attempts_open))


async def complete_if_finished(session: AsyncSession, campaign_id: int, now: datetime) -> bool:
    """Mark a running campaign completed when no recipient can be called any more."""
    open_left = await session.scalar(
        select(func.count())
        .select_from(Recipient)
        .where(
            Recipient.campaign_id == campaign_id,
            Recipient.status.in_((*OPEN_RECIPIENT, RecipientStatus.IN_FLIGHT)),
        )
    )
    if open_left:
        return False
    result = await session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.RUNNING)
        .values(status=CampaignStatus.COMPLETED, ended_at=now, updated_at=now)
        .returning(Campaign.id)
    )
    return result.scalar_one_or_none() is not None
