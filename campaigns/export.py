"""The results CSV of `campaign export`: streamed, constant memory, safe in a spreadsheet.

Three forms: one row per recipient (default), per attempt, or per answer (long format); the
queries are in `campaigns.store.reports`. Rows are never held in memory: on PostgreSQL the
server writes the CSV itself (`COPY (SELECT ...) TO STDOUT WITH (FORMAT csv)` through
psycopg 3) and the bytes are copied to the output as they come; on SQLite a streaming cursor
feeds `csv.writer` in partitions.

Formula injection (design.md §5 rule 8) is neutralised in SQL, so the rows need no work in
Python: a text cell that starts with = + - @ TAB or CR gets a leading apostrophe. The one
exception is an E.164 number in the phone column, which keeps its '+' and every digit
(`neutralise` and `phone_cell` below are the same rules in Python, used for the header and
as the reference the tests check the SQL against).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, cast

import psycopg
from sqlalchemy import Connection, Select

from campaigns.definition import definition_from_json
from campaigns.store import reports as store

Kind = Literal["recipients", "attempts", "answers"]
UTF8_BOM = b"\xef\xbb\xbf"
PARTITION = 10_000

FORMULA_STARTS = store.FORMULA_STARTS
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")

ATTEMPT_HEADER = (
    "phone",
    "attempt_no",
    "voice_id",
    "batch_id",
    "state",
    "amd_result",
    "disconnect_reason",
    "outcome",
    "started_at",
    "answered_at",
    "ended_at",
)
ANSWER_HEADER = (
    "phone",
    "attempt_no",
    "question_key",
    "input_kind",
    "raw",
    "confidence",
    "label",
    "valid",
    "received_at",
)
RECIPIENT_FIXED = ("phone", "name")
RECIPIENT_TRAILER = (
    "status",
    "outcome",
    "attempts",
    "amd_result",
    "first_attempt_at",
    "last_attempt_at",
)


def neutralise(cell: str | None) -> str | None:
    """A leading apostrophe on a cell a spreadsheet would read as a formula."""
    if cell and cell[0] in FORMULA_STARTS:
        return "'" + cell
    return cell


def phone_cell(phone: str | None) -> str | None:
    """E.164 numbers are kept as they are (+ and digits); anything else is neutralised."""
    if phone is not None and _E164.fullmatch(phone):
        return phone
    return neutralise(phone)


def recipient_header(attributes: Sequence[str], questions: Sequence[str]) -> list[str]:
    """phone, name, the attribute columns, status..., then `<key>_label`, `<key>_raw`.

    An attribute whose name is taken by another column is written as `attr_<name>`.
    """
    taken = {*RECIPIENT_FIXED, *RECIPIENT_TRAILER}
    taken.update(f"{q}_{part}" for q in questions for part in ("label", "raw"))
    columns = list(RECIPIENT_FIXED)
    for key in attributes:
        name = key
        while name in taken:
            name = f"attr_{name}"
        taken.add(name)
        columns.append(name)
    columns += RECIPIENT_TRAILER
    for q in questions:
        columns += [f"{q}_label", f"{q}_raw"]
    return columns


@dataclass(frozen=True)
class ExportPlan:
    kind: Kind
    header: list[str]
    statement: Select[Any]
    total: int  # rows the export will write (same snapshot on PostgreSQL)


def plan_export(conn: Connection, campaign_id: int, kind: Kind) -> ExportPlan:
    """The header, the query and the row count of one export."""
    campaign = store.campaign_row(conn, campaign_id)
    dialect = conn.dialect
    if kind == "recipients":
        definition = definition_from_json(campaign.definition)
        questions = [q.key for q in definition.poll.questions] if definition.poll else []
        attributes = store.attribute_keys(conn, campaign.list_id)
        header = recipient_header(attributes, questions)
        statement = store.recipients_export(dialect, campaign_id, attributes, questions)
    elif kind == "attempts":
        header = list(ATTEMPT_HEADER)
        statement = store.attempts_export(dialect, campaign_id)
    else:
        header = list(ANSWER_HEADER)
        statement = store.answers_export(dialect, campaign_id)
    return ExportPlan(kind, header, statement, store.count_rows(conn, campaign_id, kind))


def _header_bytes(header: Sequence[str], lineterminator: str) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=lineterminator).writerow(
        [neutralise(name) for name in header]
    )
    return buffer.getvalue().encode("utf-8")


def write_export(
    conn: Connection,
    plan: ExportPlan,
    out: BinaryIO,
    *,
    excel: bool = False,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Stream the export's CSV (UTF-8, a BOM first when `excel`) to `out`; return the rows.

    `progress` is called with the number of rows just written, now and then.
    """
    if excel:
        out.write(UTF8_BOM)
    if conn.dialect.name == "postgresql":
        return _copy_out(conn, plan, out, progress)
    return _write_rows(conn, plan, out, progress)


def _copy_out(
    conn: Connection, plan: ExportPlan, out: BinaryIO, progress: Callable[[int], None] | None
) -> int:
    """PostgreSQL: the server renders the CSV (LF line ends); psycopg binds client-side."""
    out.write(_header_bytes(plan.header, "\n"))
    compiled = plan.statement.compile(
        dialect=conn.dialect, compile_kwargs={"render_postcompile": True}
    )
    sql = f"COPY ({compiled}) TO STDOUT WITH (FORMAT csv, ENCODING 'UTF8')"
    driver = cast(psycopg.Connection[Any], conn.connection.dbapi_connection)
    with driver.cursor() as cursor, cursor.copy(sql, compiled.params) as copy:
        for chunk in copy:
            out.write(chunk)
            if progress is not None:
                progress(bytes(chunk).count(b"\n"))
    return plan.total


def _write_rows(
    conn: Connection, plan: ExportPlan, out: BinaryIO, progress: Callable[[int], None] | None
) -> int:
    """Other backends: a streaming cursor into `csv.writer` (CRLF line ends, RFC 4180)."""
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=False)
    try:
        writer = csv.writer(text, lineterminator="\r\n")
        writer.writerow([neutralise(name) for name in plan.header])
        rows = 0
        result = conn.execution_options(yield_per=PARTITION).execute(plan.statement)
        for part in result.partitions():
            writer.writerows(part)
            rows += len(part)
            if progress is not None:
                progress(len(part))
        text.flush()
    finally:
        text.detach()
    return rows
