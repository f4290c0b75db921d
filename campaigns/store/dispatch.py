"""The SQL of dispatching: finding due recipients, claiming them, batches and attempts.

The recipient table is the queue. A claim is a conditional update (`status` still open and
`attempts < max_attempts`, checked in the same statement that increments `attempts`), so two
workers never claim the same recipient and nobody is dialled beyond the campaign's limit,
whatever crashes or duplicate jobs happen. On PostgreSQL the candidate rows are read
`FOR UPDATE SKIP LOCKED` so concurrent dispatchers do not wait on each other.
Every function takes a session and never commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, exists, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from campaigns.models import (
    AttemptState,
    Batch,
    BatchState,
    CallAttempt,
    DncNumber,
    Recipient,
    RecipientStatus,
)
from campaigns.store.campaigns import DNC_OUTCOME, OPEN_RECIPIENT


@dataclass(frozen=True, slots=True)
class Candidate:
    recipient_id: int
    phone: str
    time_zones: str | None
    on_dnc: bool


@dataclass(frozen=True, slots=True)
class Claimed:
    recipient_id: int
    phone: str
    attempt_no: int


@dataclass(frozen=True, slots=True)
class BatchMember:
    attempt_id: int
    recipient_id: int
    phone: str
    time_zones: str | None
    attributes: dict[str, Any]
    name: str | None


def _is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def in_flight_count(session: AsyncSession, campaign_id: int) -> int:
    """Recipients with a live attempt: the concurrency that the cap is measured against."""
    count = await session.scalar(
        select(func.count())
        .select_from(Recipient)
        .where(Recipient.campaign_id == campaign_id, Recipient.status == RecipientStatus.IN_FLIGHT)
    )
    return int(count or 0)


async def due_candidates(
    session: AsyncSession, campaign_id: int, now: datetime, limit: int, max_attempts: int
) -> list[Candidate]:
    """Open recipients whose next attempt time has come, oldest due first."""
    on_dnc = exists().where(DncNumber.phone == Recipient.phone)
    query = (
        select(Recipient.id, Recipient.phone, Recipient.time_zones, on_dnc.label("on_dnc"))
        .where(
            Recipient.campaign_id == campaign_id,
            Recipient.status.in_(OPEN_RECIPIENT),
            Recipient.attempts < max_attempts,
            or_(Recipient.next_attempt_at.is_(None), Recipient.next_attempt_at <= now),
        )
        .order_by(Recipient.next_attempt_at.is_not(None), Recipient.next_attempt_at, Recipient.id)
        .limit(limit)
    )
    if _is_postgres(session):
        query = query.with_for_update(skip_locked=True, of=Recipient)
    rows = (await session.execute(query)).all()
    return [Candidate(r.id, r.phone, r.time_zones, bool(r.on_dnc)) for r in rows]


async def suppress(session: AsyncSession, recipient_ids: Sequence[int], now: datetime) -> int:
    """Recipients found on the DNC list at dispatch: never dialled."""
    if not recipient_ids:
        return 0
    result = await session.execute(
        update(Recipient)
        .where(Recipient.id.in_(recipient_ids), Recipient.status.in_(OPEN_RECIPIENT))
        .values(status=RecipientStatus.SUPPRESSED, final_outcome=DNC_OUTCOME, updated_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def defer(
    session: AsyncSession, next_times: Sequence[tuple[int, datetime | None]], now: datetime
) -> None:
    """Push recipients outside their calling window to its next opening.

    A recipient whose window never opens again (None) fails with outcome `no_window`.
    """
    never = [rid for rid, when in next_times if when is None]
    if never:
        await session.execute(
            update(Recipient)
            .where(Recipient.id.in_(never), Recipient.status.in_(OPEN_RECIPIENT))
            .values(status=RecipientStatus.FAILED, final_outcome="no_window", updated_at=now)
        )
    by_time: dict[datetime, list[int]] = {}
    for rid, when in next_times:
        if when is not None:
            by_time.setdefault(when, []).append(rid)
    for when, ids in by_time.items():
        await session.execute(
            update(Recipient)
            .where(Recipient.id.in_(ids), Recipient.status.in_(OPEN_RECIPIENT))
            .values(next_attempt_at=when, updated_at=now)
        )


async def claim(
    session: AsyncSession,
    recipient_ids: Sequence[int],
    max_attempts: int,
    now: datetime,
) -> list[Claimed]:
    """Claim recipients for dialling: in-flight, one more attempt. Returns what was claimed."""
    if not recipient_ids:
        return []
    result = await session.execute(
        update(Recipient)
        .where(
            Recipient.id.in_(recipient_ids),
            Recipient.status.in_(OPEN_RECIPIENT),
            Recipient.attempts < max_attempts,
        )
        .values(status=RecipientStatus.IN_FLIGHT, attempts=Recipient.attempts + 1, updated_at=now)
        .returning(Recipient.id, Recipient.phone, Recipient.attempts)
    )
    return [Claimed(r.id, r.phone, r.attempts) for r in result.all()]


async def create_batches(
    session: AsyncSession,
    campaign_id: int,
    claimed: Sequence[Claimed],
    batch_size: int,
    now: datetime,
) -> list[str]:
    """Group claimed recipients into batches; write the batch and its attempt rows."""
    batch_ids: list[str] = []
    for start in range(0, len(claimed), batch_size):
        part = claimed[start : start + batch_size]
        batch_id = str(uuid.uuid4())
        batch_ids.append(batch_id)
        await session.execute(
            insert(Batch).values(
                id=batch_id,
                campaign_id=campaign_id,
                size=len(part),
                state=BatchState.CLAIMED,
                submit_tries=0,
                created_at=now,
            )
        )
        await session.execute(
            insert(CallAttempt),
            [
                {
                    "recipient_id": c.recipient_id,
                    "campaign_id": campaign_id,
                    "batch_id": batch_id,
                    "attempt_no": c.attempt_no,
                    "phone": c.phone,
                    "state": AttemptState.QUEUED,
                    "poll_step": 0,
                    "poll_tries": 0,
                    "created_at": now,
                }
                for c in part
            ],
        )
    return batch_ids


async def get_batch(session: AsyncSession, batch_id: str) -> Batch | None:
    return await session.get(Batch, batch_id)


async def batch_members(session: AsyncSession, batch_id: str) -> list[BatchMember]:
    rows = (
        await session.execute(
            select(
                CallAttempt.id,
                CallAttempt.recipient_id,
                CallAttempt.phone,
                Recipient.time_zones,
                Recipient.attributes,
                Recipient.name,
            )
            .join(Recipient, Recipient.id == CallAttempt.recipient_id)
            .where(CallAttempt.batch_id == batch_id)
            .order_by(CallAttempt.id)
        )
    ).all()
    return [BatchMember(r[0], r[1], r[2], r[3], dict(r[4] or {}), r[5]) for r in rows]


async def set_batch_state(
    session: AsyncSession,
    batch_id: str,
    state: BatchState,
    *,
    expect: Sequence[BatchState],
    now: datetime,
    **values: Any,
) -> bool:
    """Conditional batch transition; False when the batch was not in an expected state."""
    stamps: dict[str, Any] = {"state": state, **values}
    if state == BatchState.SUBMITTED:
        stamps.setdefault("submitted_at", now)
    if state in (BatchState.COMPLETED, BatchState.FAILED, BatchState.RELEASED):
        stamps.setdefault("completed_at", now)
    result = await session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.state.in_(expect))
        .values(**stamps)
        .returning(Batch.id)
    )
    return result.scalar_one_or_none() is not None


async def release_attempts(
    session: AsyncSession,
    attempt_ids: Sequence[int],
    now: datetime,
    next_times: dict[int, datetime | None] | None = None,
) -> int:
    """Undo claims that were never sent to EnableX: the attempt did not happen.

    The attempt rows are deleted and each recipient gets its attempt back (pending when it
    had none before, else waiting_retry), due at `next_times[recipient_id]` when given.
    """
    if not attempt_ids:
        return 0
    rows = (
        await session.execute(
            select(
                CallAttempt.id,
                CallAttempt.recipient_id,
                CallAttempt.attempt_no,
                CallAttempt.batch_id,
            ).where(CallAttempt.id.in_(attempt_ids), CallAttempt.settled_at.is_(None))
        )
    ).all()
    for attempt_id, recipient_id, attempt_no, _batch in rows:
        values: dict[str, Any] = {
            "status": RecipientStatus.PENDING if attempt_no <= 1 else RecipientStatus.WAITING_RETRY,
            "attempts": attempt_no - 1,
            "updated_at": now,
        }
        if next_times is not None and recipient_id in next_times:
            values["next_attempt_at"] = next_times[recipient_id]
        await session.execute(
            update(Recipient)
            .where(
                Recipient.id == recipient_id,
                Recipient.status == RecipientStatus.IN_FLIGHT,
                Recipient.attempts == attempt_no,
            )
            .values(**values)
        )
        await session.execute(delete(CallAttempt).where(CallAttempt.id == attempt_id))
    for batch_id in {r[3] for r in rows}:
        remaining = await session.scalar(
            select(func.count()).select_from(CallAttempt).where(CallAttempt.batch_id == batch_id)
        )
        await session.execute(update(Batch).where(Batch.id == batch_id).values(size=remaining or 0))
    return len(rows)


async def unsettled_attempt_ids(session: AsyncSession, batch_id: str) -> list[int]:
    rows = await session.scalars(
        select(CallAttempt.id).where(
            CallAttempt.batch_id == batch_id, CallAttempt.settled_at.is_(None)
        )
    )
    return list(rows.all())


async def stale_attempts(session: AsyncSession, older_than: datetime, limit: int) -> list[int]:
    """Attempts sent (or possibly sent) to EnableX whose final event never came."""
    rows = await session.scalars(
        select(CallAttempt.id)
        .join(Batch, Batch.id == CallAttempt.batch_id)
        .where(
            CallAttempt.settled_at.is_(None),
            Batch.state.in_((BatchState.SUBMITTED, BatchState.UNKNOWN)),
            func.coalesce(
                CallAttempt.ended_at, CallAttempt.started_at, Batch.submitted_at, Batch.created_at
            )
            < older_than,
        )
        .order_by(CallAttempt.id)
        .limit(limit)
    )
    return list(rows.all())


async def batches_in_state(
    session: AsyncSession, state: BatchState, older_than: datetime, limit: int = 100
) -> list[str]:
    rows = await session.scalars(
        select(Batch.id)
        .where(
            Batch.state == state,
            func.coalesce(Batch.submitted_at, Batch.created_at) < older_than,
        )
        .order_by(Batch.created_at)
        .limit(limit)
    )
    return list(rows.all())


async def complete_settled_batches(session: AsyncSession, now: datetime) -> int:
    """Submitted/unknown batches whose every attempt is settled are completed."""
    open_attempt = exists().where(
        and_(CallAttempt.batch_id == Batch.id, CallAttempt.settled_at.is_(None))
    )
    result = await session.execute(
        update(Batch)
        .where(Batch.state.in_((BatchState.SUBMITTED, BatchState.UNKNOWN)), ~open_attempt)
        .values(state=BatchState.COMPLETED, completed_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
