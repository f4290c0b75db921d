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
    LargeBinary,
    Select,
    String,
    Text,
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
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

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


def _answered(attempt: Any = CallAttempt) -> ColumnElement[bool]:
    return or_(
        attempt.answered_at.is_not(None),
        attempt.outcome.in_(ANSWERED_OUTCOMES),
        attempt.amd_result.in_(("human", "machine")),
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

# The code points of FORMULA_STARTS: a cell is neutralised when its first character is one.
FORMULA_CODES = tuple(ord(c) for c in FORMULA_STARTS)


class first_code(FunctionElement[int]):
    """The code point of a text's first character (NULL for NULL): `ascii()` on PostgreSQL,
    `unicode()` on SQLite. An integer test is several times cheaper than `substr(x, 1, 1)
    IN (...)` over a million cells."""

    type = Integer()
    name = "first_code"
    inherit_cache = True


@compiles(first_code)
def _first_code_default(element: first_code, compiler: SQLCompiler, **kw: Any) -> str:
    return f"ascii({compiler.process(element.clauses, **kw)})"


@compiles(first_code, "sqlite")
def _first_code_sqlite(element: first_code, compiler: SQLCompiler, **kw: Any) -> str:
    return f"unicode({compiler.process(element.clauses, **kw)})"


def safe_cell(expr: Any) -> ColumnElement[Any]:
    """SQL twin of `campaigns.export.neutralise`: a leading apostrophe on text that starts
    with = + - @ TAB or CR; NULL stays NULL. `expr` is written three times: pass a column,
    not an expensive expression."""
    return case(
        (first_code(expr).in_(FORMULA_CODES), literal("'", String) + expr),
        else_=expr,
    )


def phone_cell(dialect: Dialect, expr: Any) -> ColumnElement[Any]:
    """A phone keeps its '+' when it is E.164 (+ then 2-15 digits, no leading 0); anything
    else in the phone column is neutralised like any other cell."""
    code = first_code(expr)
    if dialect.name == "postgresql":
        # The regular expression ^\+[1-9][0-9]{1,14}$ costs ~0.7 µs a row; this is ~0.1 µs:
        # the bytes minus the digits at both ends leave exactly the leading '+'.
        e164: ColumnElement[bool] = and_(
            code == ord("+"),
            func.octet_length(expr).between(3, 16),
            func.substr(expr, 2, 1) != "0",
            func.btrim(
                func.convert_to(expr, literal("UTF8")), cast(literal("0123456789"), LargeBinary)
            )
            == cast(literal("+"), LargeBinary),
        )
    else:
        digits = func.substr(expr, 2)
        e164 = and_(
            expr.op("GLOB")(literal("+[1-9]*")),
            digits.op("NOT GLOB")(literal("*[^0-9]*")),
            func.length(expr).between(3, 16),
        )
    return case(
        (code.not_in(FORMULA_CODES), expr),
        (e164, expr),
        else_=literal("'", String) + expr,
    )


def iso_utc(dialect: Dialect, column: Any) -> ColumnElement[Any]:
    """A timestamp column as ISO-8601 UTC text to the second: 2024-10-01T14:03:07Z.

    On PostgreSQL from the timestamp's own text form, which needs DateStyle ISO (the export
    sets it): 0.3 s less per million rows of two timestamps than to_char."""
    if dialect.name == "postgresql":
        text_form = cast(func.timezone("UTC", column), Text)
        return func.replace(func.left(text_form, 19), " ", "T") + literal("Z", String)
    return func.strftime("%Y-%m-%dT%H:%M:%SZ", column)


def recorded_attribute_keys(conn: Connection, list_id: int) -> list[str] | None:
    """The attribute keys the list's import recorded (see `ContactList.attribute_keys`)."""
    keys = conn.execute(
        select(ContactList.attribute_keys).where(ContactList.id == list_id)
    ).scalar_one_or_none()
    return None if keys is None else [str(key) for key in keys]


def attribute_keys(conn: Connection, list_id: int) -> list[str]:
    """The union of the attribute keys of a list's contacts, in first-seen order (contact
    id, then position in the object; PostgreSQL's JSONB keeps its own key order within an
    object: shorter keys first)."""
    params = {"list_id": list_id}
    if conn.dialect.name == "postgresql":
        # An imported list gives every contact the same keys (its header): check that in
        # one cheap pass, and take one contact's keys, before the general union (which
        # expands every contact's keys into rows and groups them: twice the time).
        keys = conn.execute(
            text(
                "SELECT ARRAY(SELECT jsonb_object_keys(attributes)) FROM contact "
                "WHERE list_id = :list_id LIMIT 1"
            ),
            params,
        ).scalar_one_or_none()
        if keys is None:
            return []
        other = conn.execute(
            text(
                "SELECT 1 FROM contact WHERE list_id = :list_id AND NOT ("
                "jsonb_exists_all(attributes, :keys) AND attributes - :keys = '{}'::jsonb) "
                "LIMIT 1"
            ),
            {**params, "keys": list(keys)},
        ).first()
        if other is None:
            return [str(k) for k in keys]
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
    return [str(k) for (k,) in conn.execute(text(sql), params)]


def attribute_is_name(conn: Connection, list_id: int, key: str) -> bool:
    """Whether attribute `key` is every contact's name (trimmed; blank for no name)."""
    value = func.coalesce(Contact.attributes[key].as_string(), "")
    trimmed = func.btrim(value) if conn.dialect.name == "postgresql" else func.trim(value)
    differs = (
        select(Contact.id)
        .where(Contact.list_id == list_id, trimmed != func.coalesce(Contact.name, ""))
        .limit(1)
    )
    return conn.execute(differs).first() is None


def count_rows(conn: Connection, campaign_id: int, kind: str) -> int:
    """How many rows an export of `kind` (attempts | answers) will write."""
    if kind == "attempts":
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


@dataclass(frozen=True)
class RecipientSpan:
    count: int
    first_id: int
    last_id: int


def recipient_span(conn: Connection, campaign_id: int) -> RecipientSpan:
    """How many recipients the campaign has, and its lowest and highest recipient id."""
    count, first, last = conn.execute(
        select(func.count(), func.min(Recipient.id), func.max(Recipient.id)).where(
            Recipient.campaign_id == campaign_id
        )
    ).one()
    return RecipientSpan(int(count), int(first or 0), int(last or 0))


def _bytewise(dialect: Dialect, column: Any) -> Any:
    """`column` compared byte by byte (COLLATE "C" on PostgreSQL; SQLite always is). For an
    aggregate that only carries a value through (max over the one row of a group, the
    rare group of several being resolved otherwise): the database's locale collation would
    spend ~0.2 µs on every comparison for nothing."""
    return column.collate("C") if dialect.name == "postgresql" else column


def _pair(dialect: Dialect, first: Any, second: Any) -> Any:
    """Two text values as one (an array on PostgreSQL, a JSON array on SQLite)."""
    if dialect.name == "postgresql":
        return postgresql.array([first, second], type_=Text)
    return func.json_array(first, second)


def _pair_item(dialect: Dialect, pair: Any, index: int) -> ColumnElement[Any]:
    if dialect.name == "postgresql":
        return cast(pair[index + 1], Text)
    return func.json_extract(pair, f"$[{index}]")


def recipients_export(
    dialect: Dialect,
    campaign_id: int,
    attributes: list[str],
    questions: list[str],
    ids: tuple[int, int],
) -> Select[Any]:
    """One row per recipient whose id is in `ids` (inclusive), by recipient id (see
    `campaigns.export.recipient_header` for the columns).

    Built for one pass over each table in recipient order, with no hash table and no sort:
    the recipients by primary key (each carries its contact's name and attributes, so no
    contact is looked up), the attempts and the answers each aggregated in one GROUP BY
    over their recipient index, merge-joined. The
    id range bounds every index scan (and lets the export split a campaign into streams).

    The AMD result is the latest answered attempt's: when a recipient has one answered
    attempt it is the aggregate's, with several a subquery finds the latest. Likewise each
    question's answer: with one answer row the aggregate holds it, with several a subquery
    ranks them (latest valid, else latest; by attempt number, then answer id). Most
    recipients have one of each, so the subqueries run rarely.

    An inner query computes the raw values once; the outer one formats them (neutralising
    repeats its argument, and a repeated JSON lookup or subquery would run again). OFFSET 0
    keeps the two apart (the planner would otherwise merge them).
    """
    low, high = ids
    attempt = aliased(CallAttempt, name="latest")
    answered = _answered()
    attempts = (
        select(
            CallAttempt.recipient_id.label("rid"),
            func.count().filter(answered).label("answered"),
            func.max(_bytewise(dialect, CallAttempt.amd_result)).filter(answered).label("amd"),
            func.min(CallAttempt.started_at).label("first_at"),
            func.max(func.coalesce(CallAttempt.ended_at, CallAttempt.started_at)).label("last_at"),
        )
        .where(CallAttempt.campaign_id == campaign_id, CallAttempt.recipient_id.between(low, high))
        .group_by(CallAttempt.recipient_id)
        .subquery("att")
    )
    latest_amd = (
        select(attempt.amd_result)
        .where(attempt.recipient_id == Recipient.id, _answered(attempt))
        .order_by(attempt.attempt_no.desc())
        .limit(1)
        .scalar_subquery()
    )
    inner: list[Any] = [
        Recipient.id.label("id"),
        Recipient.phone.label("phone"),
        Recipient.name.label("name"),
        *(Recipient.attributes[key].as_string().label(f"a{i}") for i, key in enumerate(attributes)),
        Recipient.status.label("status"),
        func.coalesce(Recipient.final_outcome, Recipient.last_outcome).label("outcome"),
        Recipient.attempts.label("attempts"),
        case((attempts.c.answered > 1, latest_amd), else_=attempts.c.amd).label("amd"),
        attempts.c.first_at.label("first_at"),
        attempts.c.last_at.label("last_at"),
    ]
    stmt = select().select_from(Recipient).outerjoin(attempts, attempts.c.rid == Recipient.id)
    if questions:
        pivot: list[Any] = [Answer.recipient_id.label("rid")]
        for i, key in enumerate(questions):
            this = Answer.question_key == key
            pivot += [
                func.count().filter(this).label(f"n{i}"),
                func.max(_bytewise(dialect, Answer.label)).filter(this).label(f"l{i}"),
                func.max(_bytewise(dialect, Answer.raw)).filter(this).label(f"r{i}"),
            ]
        answers = (
            select(*pivot)
            .where(Answer.recipient_id.between(low, high))
            .group_by(Answer.recipient_id)
            .subquery("ans")
        )
        stmt = stmt.outerjoin(answers, answers.c.rid == Recipient.id)
        ranked, ranked_attempt = aliased(Answer, name="ranked"), aliased(CallAttempt, name="of")
        for i, key in enumerate(questions):
            preferred = (
                select(_pair(dialect, ranked.label, ranked.raw))
                .join(ranked_attempt, ranked_attempt.id == ranked.attempt_id)
                .where(ranked.recipient_id == Recipient.id, ranked.question_key == key)
                .order_by(ranked.valid.desc(), ranked_attempt.attempt_no.desc(), ranked.id.desc())
                .limit(1)
                .scalar_subquery()
            )
            n = answers.c[f"n{i}"]
            inner += [
                n.label(f"n{i}"),
                answers.c[f"l{i}"].label(f"l{i}"),
                answers.c[f"r{i}"].label(f"r{i}"),
                case((n > 1, preferred)).label(f"p{i}"),
            ]
    raw = (
        stmt.add_columns(*inner)
        .where(Recipient.campaign_id == campaign_id, Recipient.id.between(low, high))
        .order_by(Recipient.id)
        .offset(0)
        .subquery("raw")
    )
    columns: list[Any] = [
        phone_cell(dialect, raw.c.phone),
        safe_cell(raw.c.name),
        *(safe_cell(raw.c[f"a{i}"]) for i in range(len(attributes))),
        raw.c.status,
        raw.c.outcome,
        raw.c.attempts,
        safe_cell(raw.c.amd),
        iso_utc(dialect, raw.c.first_at),
        iso_utc(dialect, raw.c.last_at),
    ]
    for i in range(len(questions)):
        several, pair = raw.c[f"n{i}"] > 1, raw.c[f"p{i}"]
        for part, single in enumerate((raw.c[f"l{i}"], raw.c[f"r{i}"])):
            columns.append(
                safe_cell(case((several, _pair_item(dialect, pair, part)), else_=single))
            )
    return select(*columns).order_by(raw.c.id)


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
