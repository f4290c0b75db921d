"""The SQL of webhook events: storing them raw, finding the unapplied ones, matching them to
broadcasts and numbers, recording opt-outs, and quarantining. (Applying them in sets, with
the attempts they change, is `campaigns.store.calls`.)

Every function takes a session (or a connection) and never commits: the caller owns the
transaction. Inserts are `ON CONFLICT DO NOTHING` on the event's dedupe key, so a redelivered
copy is acknowledged and never stored twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from campaigns.models import (
    Answer,
    AttemptState,
    Batch,
    CallAttempt,
    DncNumber,
    Recipient,
    WebhookEvent,
)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """One decoded delivery, ready to be stored."""

    dedupe_key: str
    voice_id: str | None
    broadcast_id: str | None
    payload: dict[str, Any]
    received_at: datetime
    # A live call's next IVR step may wait on this event: the workers apply it first
    # (`campaigns.webhooks.is_urgent`).
    urgent: bool = False


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _insert(dialect: str) -> Any:
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


# PostgreSQL: the group goes as one JSON document, unpacked by the server, so the statement
# text is the same whatever the group size (neither SQLAlchemy nor psycopg compiles it per
# call; the server prepares it once per connection) and no value needs driver-side escaping
# (psycopg's text arrays escape every quote of every payload with a regex: ~100 µs/event).
_PG_INSERT_EVENTS = (
    "INSERT INTO webhook_event"
    " (dedupe_key, voice_id, broadcast_id, payload, received_at, quarantined)"
    " SELECT e.k, e.v, e.b, e.p, e.r, false"
    " FROM json_to_recordset(%(events)s::json) AS e (k text, v text, b text, p jsonb, r timestamptz)"
    " ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, dedupe_key"
)


async def insert_events(conn: AsyncConnection, events: Sequence[NewEvent]) -> list[int]:
    """Store events, skipping those already stored (also a second copy in `events`); the
    ids of the rows written, ascending. `received_at` must be timezone-aware."""
    return [event_id for event_id, _ in await insert_events_keyed(conn, events)]


async def insert_events_keyed(
    conn: AsyncConnection, events: Sequence[NewEvent]
) -> list[tuple[int, str]]:
    """`insert_events`, with each written row's dedupe key: (id, key), ascending by id."""
    if not events:
        return []
    if conn.dialect.name == "postgresql":
        document = json.dumps(
            [
                {
                    "k": e.dedupe_key,
                    "v": e.voice_id,
                    "b": e.broadcast_id,
                    "p": e.payload,
                    "r": e.received_at.isoformat(),
                }
                for e in events
            ]
        )
        written = await conn.exec_driver_sql(_PG_INSERT_EVENTS, {"events": document})
        return sorted((int(m["id"]), str(m["dedupe_key"])) for m in written.mappings())
    rows = [
        {
            "dedupe_key": e.dedupe_key,
            "voice_id": e.voice_id,
            "broadcast_id": e.broadcast_id,
            "payload": e.payload,
            "received_at": e.received_at,
            "quarantined": False,
        }
        for e in events
    ]
    stmt: Insert = (
        _insert(conn.dialect.name)(WebhookEvent)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(WebhookEvent.id, WebhookEvent.dedupe_key)
    )
    result = await conn.execute(stmt)
    return sorted((int(i), str(k)) for i, k in result.all())


async def unapplied_event_ids(
    session: AsyncSession, received_before: datetime, limit: int
) -> list[int]:
    """Events stored but never applied (a crash, a lost job, an early event waiting)."""
    rows = await session.scalars(
        select(WebhookEvent.id)
        .where(
            WebhookEvent.applied_at.is_(None),
            WebhookEvent.quarantined.is_(False),
            WebhookEvent.received_at < received_before,
        )
        .order_by(WebhookEvent.id)
        .limit(limit)
    )
    return list(rows.all())


async def known_broadcasts(session: AsyncSession, broadcast_ids: Iterable[str]) -> dict[str, str]:
    """broadcast_id → batch id, for the broadcasts we submitted."""
    wanted = list(set(broadcast_ids))
    if not wanted:
        return {}
    rows = await session.execute(
        select(Batch.broadcast_id, Batch.id).where(Batch.broadcast_id.in_(wanted))
    )
    return {str(b): str(i) for b, i in rows.all()}


async def attempt_ids_by_batch_phone(
    session: AsyncSession, pairs: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """(batch id, E.164 phone) → attempt id."""
    wanted = set(pairs)
    if not wanted:
        return {}
    batches = {b for b, _ in wanted}
    phones = {p for _, p in wanted}
    rows = await session.execute(
        select(CallAttempt.batch_id, CallAttempt.phone, CallAttempt.id).where(
            CallAttempt.batch_id.in_(batches), CallAttempt.phone.in_(phones)
        )
    )
    return {(b, p): int(i) for b, p, i in rows.all() if (b, p) in wanted}


async def contact_attributes(
    session: AsyncSession, recipient_ids: Iterable[int]
) -> dict[int, dict[str, Any]]:
    """recipient id → its contact's attributes (with `name` and `phone` too), from the
    recipient's copy of them."""
    wanted = list(set(recipient_ids))
    if not wanted:
        return {}
    rows = await session.execute(
        select(Recipient.id, Recipient.attributes, Recipient.name, Recipient.phone).where(
            Recipient.id.in_(wanted)
        )
    )
    out: dict[int, dict[str, Any]] = {}
    for rid, attributes, name, phone in rows.all():
        merged: dict[str, Any] = {"phone": phone}
        if name is not None:
            merged["name"] = name
        merged.update(attributes or {})
        out[int(rid)] = merged
    return out


async def delete_answers_except(
    session: AsyncSession, attempt_id: int, keep: Iterable[str]
) -> None:
    """Remove an attempt's answers to questions not in `keep` (a re-fold that no longer
    reaches them, e.g. an answering machine reported late)."""
    stmt = delete(Answer).where(Answer.attempt_id == attempt_id)
    kept = list(keep)
    if kept:
        stmt = stmt.where(Answer.question_key.not_in(kept))
    await session.execute(stmt.execution_options(synchronize_session=False))


async def add_opt_out(session: AsyncSession, phone: str, now: datetime, reason: str) -> None:
    stmt = (
        _insert(_dialect(session))(DncNumber)
        .values(phone=phone, source="opt-out", reason=reason, added_at=now)
        .on_conflict_do_nothing(index_elements=["phone"])
    )
    await session.execute(stmt)


async def quarantine(session: AsyncSession, ids: Sequence[int], reason: str) -> None:
    if ids:
        await session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id.in_(ids))
            .values(quarantined=True, error=reason)
            .execution_options(synchronize_session=False)
        )


async def ended_unsettled(session: AsyncSession, ended_before: datetime, limit: int) -> list[int]:
    """Attempts whose call ended before `ended_before` but were never settled (their settle
    waited for a reordered event that never came)."""
    rows = await session.scalars(
        select(CallAttempt.id)
        .where(
            CallAttempt.state == AttemptState.ENDED,
            CallAttempt.settled_at.is_(None),
            CallAttempt.ended_at < ended_before,
        )
        .order_by(CallAttempt.id)
        .limit(limit)
    )
    return list(rows.all())
