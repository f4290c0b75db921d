"""The SQL of `campaign report` and `campaign export`: GROUP BY aggregates and export queries.

Every function takes a synchronous `Connection` and never commits. The aggregates return
plain rows; `campaigns.reporting` assembles them. The export queries are Core `Select`s whose
text cells are already neutralised against spreadsheet formula injection *in SQL* (see
`safe_cell`), so the rows can be streamed unchanged: through `COPY ... TO STDOUT` on
PostgreSQL, through `csv.writer` on SQLite.

Which answer counts. A recipient may answer a question in several attempts; the report and
the export both use, per recipient and question, the latest *valid* answer, or when there is
none the latest answer row of any kind (invalid input, or silence: `input_kind = 'none'`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    Select,
    String,
    and_,
    case,
    cast,
    distinct,
    func,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.engine import Dialect

from campaigns.errors import NotFoundError
from campaigns.models import (
    Answer,
    CallAttempt,
    Campaign,
    Contact,
    ContactList,
    Recipient,
    UTCDateTime,
)

# Attempt outcomes that mean somebody (or something) picked up.
ANSWERED_OUTCOMES = ("completed", "partial", "voicemail", "machine", "opted_out")
MACHINE_OUTCOMES = ("voicemail", "machine")
# First characters a spreadsheet reads as the start of a formula (design.md §5 rule 8).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


# --------------------------------------------------------------------------- predicates


def _answered() -> ColumnElement[bool]:
    return or_(
        CallAttempt.answered_at.is_not(None),
        CallAttempt.outcome.in_(ANSWERED_OUTCOMES),
        CallAttempt.amd_result.in_(("human", "machine")),
    )


def _machine() -> ColumnElement[bool]:
    # COALESCE: NULL = 'machine' is NULL, and NOT NULL would drop humans without a verdict.
    return or_(
        func.coalesce(CallAttempt.amd_result, "") == "machine",
        func.coalesce(CallAttempt.outcome, "").in_(MACHINE_OUTCOMES),
    )


def _flag(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return case((condition, 1), else_=0)


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class CampaignRow:
    id: int
    name: str
    status: str
    list_id: int
    list_name: str
    caller_id: str
    definition: dict[str, Any]
    recipients_total: int
    created_at: datetime
    started_at: datetime | None
    paused_at: datetime | None
    ended_at: datetime | None


def campaign_row(conn: Connection, campaign_id: int) -> CampaignRow:
    row = conn.execute(
        select(
            Campaign.id,
            Campaign.name,
            Campaign.status,
            Campaign.list_id,
            ContactList.name,
            Campaign.caller_id,
            Campaign.definition,
            Campaign.recipients_total,
            Campaign.created_at,
            Campaign.started_at,
            Campaign.paused_at,
            Campaign.ended_at,
        )
        .join(ContactList, ContactList.id == Campaign.list_id)
        .where(Campaign.id == campaign_id)
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"campaign {campaign_id} does not exist")
    return CampaignRow(*row)


def count_by(conn: Connection, column: Any, campaign_id: int) -> dict[str | None, int]:
    """Recipients of the campaign grouped by one of their columns (status, final_outcome)."""
    rows = conn.execute(
        select(column, func.count()).where(Recipient.campaign_id == campaign_id).group_by(column)
    )
    return {key: int(n) for key, n in rows}


@dataclass(frozen=True)
class FunnelCounts:
    recipients: int
    dialled: int
    answered: int
    human: int
    machine: int
    poll_started: int
    poll_complete: int
    suppressed: int
    failed: int


def funnel_counts(conn: Connection, campaign_id: int) -> FunnelCounts:
    """Recipients at each stage; one GROUP BY recipient over the attempts, then sums.

    `human`: at least one answered attempt not taken by a machine; `machine`: answered, but
    only ever by a machine (so human + machine = answered).
    """
    per = (
        select(
            CallAttempt.recipient_id.label("rid"),
            func.max(_flag(_answered())).label("answered"),
            func.max(_flag(and_(_answered(), ~_machine()))).label("human"),
            func.max(_flag(CallAttempt.outcome == "completed")).label("completed"),
        )
        .where(CallAttempt.campaign_id == campaign_id)
        .group_by(CallAttempt.recipient_id)
        .subquery()
    )
    dialled, answered, human, completed = conn.execute(
        select(
            func.count(),
            func.coalesce(func.sum(per.c.answered), 0),
            func.coalesce(func.sum(per.c.human), 0),
            func.coalesce(func.sum(per.c.completed), 0),
        )
    ).one()
    poll_started = conn.execute(
        select(func.count(distinct(Answer.recipient_id)))
        .join(CallAttempt, CallAttempt.id == Answer.attempt_id)
        .where(CallAttempt.campaign_id == campaign_id)
    ).scalar_one()
    status = count_by(conn, Recipient.status, campaign_id)
    return FunnelCounts(
        recipients=sum(status.values()),
        dialled=int(dialled),
        answered=int(answered),
        human=int(human),
        machine=int(answered) - int(human),
        poll_started=int(poll_started),
        poll_complete=int(completed),
        suppressed=status.get("suppressed", 0),
        failed=status.get("failed", 0),
    )


def outcomes_by_attempt(conn: Connection, campaign_id: int) -> list[tuple[int, str | None, int]]:
    """(attempt_no, outcome or None while the attempt is open, count)."""
    rows = conn.execute(
        select(CallAttempt.attempt_no, CallAttempt.outcome, func.count())
        .where(CallAttempt.campaign_id == campaign_id)
        .group_by(CallAttempt.attempt_no, CallAttempt.outcome)
        .order_by(CallAttempt.attempt_no, CallAttempt.outcome)
    )
    return [(int(a), o, int(n)) for a, o, n in rows]


def amd_split(conn: Connection, campaign_id: int) -> dict[str | None, int]:
    """AMD result of the answered attempts (None: answered without an AMD verdict)."""
    rows = conn.execute(
        select(CallAttempt.amd_result, func.count())
        .where(CallAttempt.campaign_id == campaign_id, _answered())
        .group_by(CallAttempt.amd_result)
    )
    return {amd: int(n) for amd, n in rows}


def attempt_span(conn: Connection, campaign_id: int) -> tuple[datetime | None, datetime | None]:
    """When the first attempt started and the last one ended (or was settled)."""
    ended = func.coalesce(CallAttempt.ended_at, CallAttempt.settled_at)
    first, last = conn.execute(
        select(func.min(CallAttempt.started_at), func.max(ended)).where(
            CallAttempt.campaign_id == campaign_id
        )
    ).one()
    return _aware(conn, first), _aware(conn, last)


def _aware(conn: Connection, value: Any) -> datetime | None:
    """Aggregates lose the column type: restore an aware UTC datetime from the raw value."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    result: datetime | None = UTCDateTime().process_result_value(value, conn.dialect)
    return result


def _epoch(dialect: Dialect, column: Any) -> ColumnElement[Any]:
    if dialect.name == "sqlite":
        return cast(func.strftime("%s", column), Integer)
    return func.extract("epoch", column)


def ended_timeline(
    conn: Connection, campaign_id: int, bucket_seconds: int
) -> list[tuple[int, str | None, int]]:
    """(bucket start as a Unix time, outcome, attempts) for the attempts that ended."""
    ended = func.coalesce(CallAttempt.ended_at, CallAttempt.settled_at)
    bucket = (
        cast(func.floor(_epoch(conn.dialect, ended) / bucket_seconds), Integer) * bucket_seconds
    ).label("bucket")
    rows = conn.execute(
        select(bucket, CallAttempt.outcome, func.count())
        .where(CallAttempt.campaign_id == campaign_id, ended.is_not(None))
        .group_by(bucket, CallAttempt.outcome)
        .order_by(bucket, CallAttempt.outcome)
    )
    return [(int(b), o, int(n)) for b, o, n in rows]


def _preferred_answers(campaign_id: int) -> Any:
    """Answer rows ranked per (recipient, question): rank 1 = the latest valid answer, else
    the latest answer of any kind."""
    rank = (
        func.row_number()
        .over(
            partition_by=(Answer.recipient_id, Answer.question_key),
            order_by=(Answer.valid.desc(), CallAttempt.attempt_no.desc(), Answer.id.desc()),
        )
        .label("rank")
    )
    return (
        select(
            Answer.recipient_id,
            Answer.question_key,
            Answer.input_kind,
            Answer.raw,
            Answer.label,
            Answer.valid,
            rank,
        )
        .join(CallAttempt, CallAttempt.id == Answer.attempt_id)
        .where(CallAttempt.campaign_id == campaign_id)
        .subquery("ranked")
    )


def answer_distribution(
    conn: Connection, campaign_id: int
) -> list[tuple[str, bool, str, str | None, int]]:
    """(question_key, valid, input_kind, label, recipients) over each recipient's answer."""
    ranked = _preferred_answers(campaign_id)
    rows = conn.execute(
        select(
            ranked.c.question_key, ranked.c.valid, ranked.c.input_kind, ranked.c.label, func.count()
        )
        .where(ranked.c.rank == 1)
        .group_by(ranked.c.question_key, ranked.c.valid, ranked.c.input_kind, ranked.c.label)
    )
    return [(k, bool(v), str(i), lab, int(n)) for k, v, i, lab, n in rows]


# --------------------------------------------------------------------------- export


def safe_cell(expr: Any) -> ColumnElement[Any]:
    """SQL twin of `campaigns.export.neutralise`: a leading apostrophe on text that starts
    with = + - @ TAB or CR; NULL stays NULL."""
    return case(
        (func.substr(expr, 1, 1).in_(FORMULA_STARTS), literal("'", String) + expr),
        else_=expr,
    )


def phone_cell(dialect: Dialect, expr: Any) -> ColumnElement[Any]:
    """A phone keeps its '+' when it is E.164 (+ then 2-15 digits, no leading 0); anything
    else in the phone column is neutralised like any other cell."""
    if dialect.name == "postgresql":
        e164: ColumnElement[bool] = expr.regexp_match(r"^\+[1-9][0-9]{1,14}$")
    else:
        digits = func.substr(expr, 2)
        e164 = and_(
            expr.op("GLOB")(literal("+[1-9]*")),
            digits.op("NOT GLOB")(literal("*[^0-9]*")),
            func.length(expr).between(3, 16),
        )
    return case((e164, expr), else_=safe_cell(expr))


def iso_utc(dialect: Dialect, column: Any) -> ColumnElement[Any]:
    """A timestamp column as ISO-8601 UTC text to the second: 2024-10-01T14:03:07Z."""
    if dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
    return func.strftime("%Y-%m-%dT%H:%M:%SZ", column)


def attribute_keys(conn: Connection, list_id: int) -> list[str]:
    """The union of the attribute keys of a list's contacts, in first-seen order (contact
    id, then position in the object; PostgreSQL's JSONB keeps its own key order within an
    object: shorter keys first)."""
    if conn.dialect.name == "postgresql":
        sql = (
            "SELECT k.key FROM contact c, "
            "jsonb_object_keys(c.attributes) WITH ORDINALITY AS k(key, pos) "
            "WHERE c.list_id = :list_id GROUP BY k.key ORDER BY min(c.id), min(k.pos)"
        )
    else:
        sql = (
            "SELECT j.key FROM contact c, json_each(c.attributes) AS j "
            "WHERE c.list_id = :list_id GROUP BY j.key ORDER BY min(c.id), min(j.id)"
        )
    return [str(k) for (k,) in conn.execute(text(sql), {"list_id": list_id})]


def count_rows(conn: Connection, campaign_id: int, kind: str) -> int:
    """How many rows an export of `kind` (recipients | attempts | answers) will write."""
    if kind == "recipients":
        stmt = (
            select(func.count()).select_from(Recipient).where(Recipient.campaign_id == campaign_id)
        )
    elif kind == "attempts":
        stmt = (
            select(func.count())
            .select_from(CallAttempt)
            .where(CallAttempt.campaign_id == campaign_id)
        )
    else:
        stmt = (
            select(func.count())
            .select_from(Answer)
            .join(CallAttempt, CallAttempt.id == Answer.attempt_id)
            .where(CallAttempt.campaign_id == campaign_id)
        )
    return int(conn.execute(stmt).scalar_one())


def recipients_export(
    dialect: Dialect,
    campaign_id: int,
    attributes: list[str],
    questions: list[str],
) -> Select[Any]:
    """One row per recipient (see `campaigns.export.recipient_header` for the columns)."""
    attempts = (
        select(
            CallAttempt.recipient_id.label("rid"),
            func.min(CallAttempt.started_at).label("first_at"),
            func.max(func.coalesce(CallAttempt.ended_at, CallAttempt.started_at)).label("last_at"),
        )
        .where(CallAttempt.campaign_id == campaign_id)
        .group_by(CallAttempt.recipient_id)
        .subquery("att")
    )
    amd_rank = (
        func.row_number()
        .over(partition_by=CallAttempt.recipient_id, order_by=CallAttempt.attempt_no.desc())
        .label("rank")
    )
    ranked_amd = (
        select(CallAttempt.recipient_id.label("rid"), CallAttempt.amd_result, amd_rank)
        .where(CallAttempt.campaign_id == campaign_id, _answered())
        .subquery("ranked_amd")
    )
    # Filtered inside, joined on the id alone: SQLite then indexes the materialised rows.
    amd = (
        select(ranked_amd.c.rid, ranked_amd.c.amd_result)
        .where(ranked_amd.c.rank == 1)
        .subquery("amd")
    )
    columns: list[Any] = [
        phone_cell(dialect, Recipient.phone),
        safe_cell(Contact.name),
        *(safe_cell(Contact.attributes[key].as_string()) for key in attributes),
        Recipient.status,
        func.coalesce(Recipient.final_outcome, Recipient.last_outcome),
        Recipient.attempts,
        safe_cell(amd.c.amd_result),
        iso_utc(dialect, attempts.c.first_at),
        iso_utc(dialect, attempts.c.last_at),
    ]
    stmt = (
        select()
        .select_from(Recipient)
        .join(Contact, Contact.id == Recipient.contact_id)
        .outerjoin(attempts, attempts.c.rid == Recipient.id)
        .outerjoin(amd, amd.c.rid == Recipient.id)
    )
    if questions:
        ranked = _preferred_answers(campaign_id)
        pivot: list[Any] = []
        for key in questions:
            pivot.append(func.max(case((ranked.c.question_key == key, ranked.c.label))))
            pivot.append(func.max(case((ranked.c.question_key == key, ranked.c.raw))))
        answers = (
            select(
                ranked.c.recipient_id.label("rid"), *(p.label(f"c{i}") for i, p in enumerate(pivot))
            )
            .where(ranked.c.rank == 1)
            .group_by(ranked.c.recipient_id)
            .subquery("ans")
        )
        stmt = stmt.outerjoin(answers, answers.c.rid == Recipient.id)
        columns += [safe_cell(answers.c[f"c{i}"]) for i in range(len(pivot))]
    return (
        stmt.add_columns(*columns)
        .where(Recipient.campaign_id == campaign_id)
        .order_by(Recipient.id)
    )


def attempts_export(dialect: Dialect, campaign_id: int) -> Select[Any]:
    """One row per call attempt."""
    return (
        select(
            phone_cell(dialect, CallAttempt.phone),
            CallAttempt.attempt_no,
            safe_cell(CallAttempt.voice_id),
            CallAttempt.batch_id,
            CallAttempt.state,
            safe_cell(CallAttempt.amd_result),
            safe_cell(CallAttempt.disconnect_reason),
            CallAttempt.outcome,
            iso_utc(dialect, CallAttempt.started_at),
            iso_utc(dialect, CallAttempt.answered_at),
            iso_utc(dialect, CallAttempt.ended_at),
        )
        .where(CallAttempt.campaign_id == campaign_id)
        .order_by(CallAttempt.recipient_id, CallAttempt.attempt_no)
    )


def answers_export(dialect: Dialect, campaign_id: int) -> Select[Any]:
    """One row per answer (long format)."""
    return (
        select(
            phone_cell(dialect, CallAttempt.phone),
            CallAttempt.attempt_no,
            Answer.question_key,
            Answer.input_kind,
            safe_cell(Answer.raw),
            Answer.confidence,
            safe_cell(Answer.label),
            case((Answer.valid, literal("true")), else_=literal("false")),
            iso_utc(dialect, Answer.received_at),
        )
        .join(CallAttempt, CallAttempt.id == Answer.attempt_id)
        .where(CallAttempt.campaign_id == campaign_id)
        .order_by(CallAttempt.recipient_id, CallAttempt.attempt_no, Answer.id)
    )
