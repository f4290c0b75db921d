"""The SQL of applying webhook events to call attempts, in sets: one statement per step for
a whole group of events, whatever its size (`campaigns.applying.apply_events`).

Claiming the events (lock and load in one UPDATE ... RETURNING), loading the attempts with
what deciding about them needs (broadcast, recipient's zones; locked in id order), the
calls' history, and writing the folds back (one executemany), the answers (one multi-row
upsert) and the applied marks. Every function takes a session and never commits: the
caller owns the transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Dialect, Table, Text, any_, bindparam, select, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from campaigns.models import Answer, Batch, CallAttempt, Campaign, Recipient, WebhookEvent
from campaigns.store.events import _dialect

_EVENT = cast(Table, WebhookEvent.__table__)
_ATTEMPT = cast(Table, CallAttempt.__table__)
_ANSWER = cast(Table, Answer.__table__)

_EVENT_COLUMNS = (
    _EVENT.c.id,
    _EVENT.c.dedupe_key,
    _EVENT.c.voice_id,
    _EVENT.c.received_at,
    sql_cast(_EVENT.c.payload, Text),
)


@dataclass(frozen=True, slots=True)
class EventRow:
    """A stored event with its payload as JSON text (parsed once per text by the applier:
    a call's history is read again by every later group of its events)."""

    id: int
    dedupe_key: str
    voice_id: str | None
    received_at: datetime
    payload: str


@dataclass(slots=True)
class AttemptRow:
    """A call attempt as the applier reads and writes it, with its batch's broadcast_id and
    its recipient's time zones (for the retry decision)."""

    id: int
    recipient_id: int
    campaign_id: int
    batch_id: str
    attempt_no: int
    phone: str
    voice_id: str | None
    state: str
    amd_result: str | None
    disconnect_reason: str | None
    outcome: str | None
    poll_step: int
    poll_tries: int
    ivr_state: str | None
    started_at: datetime | None
    answered_at: datetime | None
    ended_at: datetime | None
    settled_at: datetime | None
    folded_digest: int  # `campaigns.applying.events_digest` of the events applied
    broadcast_id: str | None
    time_zones: str | None


# The attempt's own columns, in AttemptRow's order (then broadcast_id, time_zones).
_ROW_COLUMNS = tuple(f.name for f in fields(AttemptRow))[:-2]
# What applying a fold may change on an attempt.
_FOLD_COLUMNS = (
    "voice_id",
    "state",
    "amd_result",
    "disconnect_reason",
    "poll_step",
    "poll_tries",
    "ivr_state",
    "started_at",
    "answered_at",
    "ended_at",
    "folded_digest",
)


def _among(session: AsyncSession, column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
    """`column IN values`. On PostgreSQL as `= ANY(one array parameter)`: the statement is
    compiled once and cached, however many values (an IN list is rendered anew for every
    execution)."""
    wanted = list(values)
    if _dialect(session) == "postgresql":
        array = ARRAY(column.type)
        return cast(
            ColumnElement[bool],
            column == any_(sql_cast(bindparam(None, wanted, type_=array), array)),
        )
    return cast(ColumnElement[bool], column.in_(wanted))


async def claim_unapplied(session: AsyncSession, ids: Sequence[int]) -> list[EventRow]:
    """Lock the events not applied (nor quarantined) yet and return them, in id order.

    PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED: an event another transaction is
    applying (a sweep, a retried job) is left to it, never waited for; if that one rolls
    back, the sweeper applies the event later. SQLite: UPDATE ... RETURNING, which takes
    the database write lock, so every later read of this transaction sees a consistent,
    locked state."""
    if not ids:
        return []
    unapplied = (
        _among(session, _EVENT.c.id, ids),
        _EVENT.c.applied_at.is_(None),
        _EVENT.c.quarantined.is_(False),
    )
    if _dialect(session) == "postgresql":  # row locks, no new row versions
        stmt: Any = (
            select(*_EVENT_COLUMNS)
            .where(*unapplied)
            .order_by(_EVENT.c.id)
            .with_for_update(skip_locked=True)
        )
    else:
        stmt = update(_EVENT).where(*unapplied).values(error=_EVENT.c.error)
        stmt = stmt.returning(*_EVENT_COLUMNS)
    rows = await session.execute(stmt)
    return sorted((EventRow(*row) for row in rows.all()), key=lambda e: e.id)


async def history_of_calls(
    session: AsyncSession, voice_ids: Iterable[str]
) -> dict[str, list[EventRow]]:
    """The events already applied to these calls (their history), by voice_id."""
    wanted = list(set(voice_ids))
    if not wanted:
        return {}
    rows = await session.execute(
        select(*_EVENT_COLUMNS).where(
            _among(session, _EVENT.c.voice_id, wanted),
            _EVENT.c.applied_at.is_not(None),
            _EVENT.c.quarantined.is_(False),
        )
    )
    out: dict[str, list[EventRow]] = {}
    for row in rows.all():
        event = EventRow(*row)
        out.setdefault(event.voice_id or "", []).append(event)
    return out


async def attempt_ids_by_voice(session: AsyncSession, voice_ids: Iterable[str]) -> dict[str, int]:
    """voice_id → attempt id, for the calls whose voice_id is recorded."""
    wanted = list(set(voice_ids))
    if not wanted:
        return {}
    rows = await session.execute(
        select(_ATTEMPT.c.voice_id, _ATTEMPT.c.id).where(
            _among(session, _ATTEMPT.c.voice_id, wanted)
        )
    )
    return {str(v): int(i) for v, i in rows.all()}


async def mark_applied(session: AsyncSession, ids: Sequence[int], now: datetime) -> None:
    if ids:
        await session.execute(
            update(_EVENT)
            .where(_among(session, _EVENT.c.id, ids))
            .values(applied_at=now, error=None)
        )


async def lock_attempt_rows(
    session: AsyncSession, attempt_ids: Iterable[int], *, skip_locked: bool = False
) -> list[AttemptRow]:
    """The attempts, with their broadcast and their recipient's zones, locked in id order
    (PostgreSQL `FOR UPDATE` of the attempt rows; SQLite holds the write lock already).
    With `skip_locked`, attempts another transaction holds are left out, not waited for."""
    ids = sorted(set(attempt_ids))
    if not ids:
        return []
    stmt = (
        select(
            *(_ATTEMPT.c[name] for name in _ROW_COLUMNS),
            Batch.__table__.c.broadcast_id,
            Recipient.__table__.c.time_zones,
        )
        .select_from(_ATTEMPT)
        .join(Batch.__table__, Batch.__table__.c.id == _ATTEMPT.c.batch_id)
        .join(Recipient.__table__, Recipient.__table__.c.id == _ATTEMPT.c.recipient_id)
        .where(_among(session, _ATTEMPT.c.id, ids))
        .order_by(_ATTEMPT.c.id)
    )
    if _dialect(session) == "postgresql":
        stmt = stmt.with_for_update(of=_ATTEMPT, skip_locked=skip_locked)
    return [AttemptRow(*tuple(row)) for row in (await session.execute(stmt)).all()]


async def campaign_states(
    session: AsyncSession, campaign_ids: Iterable[int]
) -> dict[int, tuple[str, str]]:
    """campaign id → (status, its frozen definition as JSON text)."""
    wanted = list(set(campaign_ids))
    if not wanted:
        return {}
    table = Campaign.__table__
    rows = await session.execute(
        select(table.c.id, table.c.status, sql_cast(table.c.definition, Text)).where(
            _among(session, table.c.id, wanted)
        )
    )
    return {int(i): (str(status), str(text)) for i, status, text in rows.all()}


async def update_rows(
    session: AsyncSession,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    match: Sequence[str],
    where: Sequence[ColumnElement[bool]] = (),
) -> int:
    """UPDATE many rows of `table`, each with its own values, in one statement: a row's
    `match` columns pick the table row (with the extra conditions `where`), its other
    columns are set. PostgreSQL: UPDATE ... FROM json_to_recordset(one JSON parameter),
    the same short SQL whatever the number of rows, sent straight to the driver; SQLite
    (in-process, no round trips): an executemany. Returns the number of rows updated."""
    if not rows:
        return 0
    columns = tuple(rows[0])
    sets = [c for c in columns if c not in match]
    if _dialect(session) == "postgresql":
        conn = await session.connection()
        conditions = tuple(
            str(w.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
            for w in where
        )
        key = ("update", table.name, columns, tuple(match), conditions)
        sql = _SQL.get(key)
        if sql is None:
            on = [f"{table.name}.{c} = v.{c}" for c in match] + list(conditions)
            sql = _SQL[key] = (
                f"UPDATE {table.name} SET {', '.join(f'{c} = v.{c}' for c in sets)} "
                f"FROM {_recordset(conn.dialect, table, columns)} WHERE {' AND '.join(on)}"
            )
        updated = await conn.exec_driver_sql(sql, (_json_rows(rows),))
        return int(updated.rowcount)
    stmt = (
        update(table)
        .where(*(table.c[c] == bindparam(f"m_{c}") for c in match), *where)
        .values({c: bindparam(f"s_{c}") for c in sets})
    )
    result = await session.execute(
        stmt,
        [{**{f"m_{c}": r[c] for c in match}, **{f"s_{c}": r[c] for c in sets}} for r in rows],
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


# SQL text built once per shape (table, columns, conditions).
_SQL: dict[tuple[Any, ...], str] = {}


def _recordset(dialect: Dialect, table: Table, columns: Sequence[str]) -> str:
    """PostgreSQL: the rows of a JSON array parameter as a typed derived table `v`."""
    typed = ", ".join(f"{c} {table.c[c].type.compile(dialect=dialect)}" for c in columns)
    return f"json_to_recordset(CAST(%s AS json)) AS v({typed})"


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:  # as models.UTCDateTime refuses them
            raise ValueError("naive datetime given where an aware UTC datetime is required")
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _json_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps(rows, default=_json_default)


async def write_attempts(session: AsyncSession, attempts: Sequence[AttemptRow]) -> None:
    """Write what the folds changed onto the attempts, in one statement."""
    await update_rows(
        session,
        _ATTEMPT,
        [{"id": a.id, **{name: getattr(a, name) for name in _FOLD_COLUMNS}} for a in attempts],
        match=("id",),
    )


_ANSWER_UPDATES = ("input_kind", "raw", "confidence", "label", "valid", "received_at")


async def upsert_answers(session: AsyncSession, answers: Sequence[dict[str, Any]]) -> None:
    """Answers, one per (attempt, question): a later write for the same question replaces
    it. One INSERT ... SELECT FROM json_to_recordset ... ON CONFLICT DO UPDATE for the
    whole group on PostgreSQL (each (attempt, question) at most once in `answers`), an
    executemany on SQLite."""
    if not answers:
        return
    if _dialect(session) == "postgresql":
        conn = await session.connection()
        columns = tuple(answers[0])
        key = ("answer-upsert", columns)
        sql = _SQL.get(key)
        if sql is None:
            sql = _SQL[key] = (
                f"INSERT INTO answer ({', '.join(columns)}) SELECT {', '.join(columns)} "
                f"FROM {_recordset(conn.dialect, _ANSWER, columns)} "
                "ON CONFLICT (attempt_id, question_key) DO UPDATE SET "
                + ", ".join(f"{c} = EXCLUDED.{c}" for c in _ANSWER_UPDATES)
            )
        await conn.exec_driver_sql(sql, (_json_rows(answers),))
        return
    stmt = sqlite.insert(_ANSWER)
    stmt = stmt.on_conflict_do_update(
        index_elements=["attempt_id", "question_key"],
        set_={k: stmt.excluded[k] for k in _ANSWER_UPDATES},
    )
    await session.execute(stmt, list(answers))
