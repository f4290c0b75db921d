"""The results CSV of `campaign export`: streamed, constant memory, safe in a spreadsheet.

Three forms: one row per recipient (default), per attempt, or per answer (long format); the
queries are in `campaigns.store.reports`. Rows are never held in memory: on PostgreSQL the
server writes the CSV itself (`COPY (SELECT ...) TO STDOUT WITH (FORMAT csv)` through
psycopg 3) and the bytes are copied to the output as they come; on SQLite a streaming cursor
feeds `csv.writer` in partitions.

A large recipient export on PostgreSQL runs as several COPY streams at once, one per core,
each over its own range of recipient ids, on connections that share the export's snapshot
(`pg_export_snapshot`): the first range goes straight to the output, the others to temporary
files appended in range order, so the file is the same as one stream's, in the same order.

Formula injection (design.md §5 rule 8) is neutralised in SQL, so the rows need no work in
Python: a text cell that starts with = + - @ TAB or CR gets a leading apostrophe. The one
exception is an E.164 number in the phone column, which keeps its '+' and every digit
(`neutralise` and `phone_cell` below are the same rules in Python, used for the header and
as the reference the tests check the SQL against).
"""

from __future__ import annotations

import csv
import io
import os
import re
import select
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, Literal, cast

import psycopg
from psycopg import pq, sql
from psycopg.abc import Buffer
from psycopg.pq.abc import PGconn
from sqlalchemy import Connection, Engine, Select
from sqlalchemy.engine import Dialect

from campaigns.definition import definition_from_json
from campaigns.importing import detect_columns
from campaigns.store import reports as store

Kind = Literal["recipients", "attempts", "answers"]
UTF8_BOM = b"\xef\xbb\xbf"
PARTITION = 10_000
# A recipient export this large on PostgreSQL is split into parallel COPY streams.
STREAM_MIN_ROWS = 50_000
MAX_STREAMS = 4
COPY_BLOCK_BYTES = 1 << 18
# Planner settings for the recipient export's transaction (see `recipients_export`): its
# plan merges ordered index scans; a hash join or a sort of a million rows would spill to
# disk at the default work_mem, and JIT compiling the wide projection costs seconds.
# DateStyle ISO: timestamps are formatted from their text form (`store.iso_utc`).
RECIPIENT_SETTINGS = (
    ("DateStyle", "ISO"),
    ("jit", "off"),
    ("enable_hashjoin", "off"),
    ("enable_hashagg", "off"),
    ("enable_sort", "off"),
    ("max_parallel_workers_per_gather", "0"),
)
OTHER_SETTINGS = (("DateStyle", "ISO"), ("jit", "off"))

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
    # The same rows as consecutive parts (by recipient id), for parallel streams; or empty.
    parts: tuple[Select[Any], ...] = ()


def default_streams() -> int:
    """One COPY stream per core, up to MAX_STREAMS."""
    return max(1, min(MAX_STREAMS, os.cpu_count() or 1))


def split_ids(first: int, last: int, parts: int) -> list[tuple[int, int]]:
    """[first, last] as `parts` consecutive inclusive ranges of (nearly) equal width."""
    width = last - first + 1
    parts = max(1, min(parts, width))
    bounds = [first + width * k // parts for k in range(parts + 1)]
    return [(bounds[k], bounds[k + 1] - 1) for k in range(parts)]


def plan_export(
    conn: Connection, campaign_id: int, kind: Kind, *, streams: int | None = None
) -> ExportPlan:
    """The header, the query and the row count of one export.

    `streams`: how many parallel COPY streams a PostgreSQL recipient export may use
    (default: one per core, for exports of at least STREAM_MIN_ROWS rows).
    """
    campaign = store.campaign_row(conn, campaign_id)
    dialect = conn.dialect
    if kind == "attempts":
        header = list(ATTEMPT_HEADER)
        statement = store.attempts_export(dialect, campaign_id)
        return ExportPlan(kind, header, statement, store.count_rows(conn, campaign_id, kind))
    if kind == "answers":
        header = list(ANSWER_HEADER)
        statement = store.answers_export(dialect, campaign_id)
        return ExportPlan(kind, header, statement, store.count_rows(conn, campaign_id, kind))
    definition = definition_from_json(campaign.definition)
    questions = [q.key for q in definition.poll.questions] if definition.poll else []
    attributes, name = list_attributes(conn, campaign.list_id)
    attributes = [key for key in attributes if key != name]
    header = recipient_header(attributes, questions)
    span = store.recipient_span(conn, campaign_id)
    ids = (span.first_id, span.last_id)

    def query(id_range: tuple[int, int]) -> Select[Any]:
        return store.recipients_export(dialect, campaign_id, attributes, questions, id_range)

    if streams is None:
        streams = default_streams() if span.count >= STREAM_MIN_ROWS else 1
    parts: tuple[Select[Any], ...] = ()
    if dialect.name == "postgresql" and streams > 1:
        parts = tuple(query(r) for r in split_ids(*ids, streams))
    return ExportPlan(kind, header, query(ids), span.count, parts)


def list_attributes(conn: Connection, list_id: int) -> tuple[list[str], str | None]:
    """The attribute keys of a list's contacts (as its import recorded them, else read from
    the contacts), and the one that repeats the name (see `name_attribute`)."""
    attributes = store.recorded_attribute_keys(conn, list_id)
    if attributes is None:
        attributes = store.attribute_keys(conn, list_id)
    return attributes, name_attribute(conn, list_id, attributes)


def name_attribute(conn: Connection, list_id: int, attributes: Sequence[str]) -> str | None:
    """The attribute that repeats the contact's name, if one does (it is left out of the
    export, which has the name in its `name` column).

    The import keeps every column but the phone as an attribute, so the name column is one
    too. The candidate is the column the import would have taken for the name; it is left
    out only if it holds every contact's name, so a list imported with `--name-column`
    pointing elsewhere keeps both.
    """
    _, index = detect_columns(list(attributes), None, None)
    if index is None:
        return None
    key = attributes[index]
    return key if store.attribute_is_name(conn, list_id, key) else None


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
    settings = RECIPIENT_SETTINGS if plan.kind == "recipients" else OTHER_SETTINGS
    driver = cast(psycopg.Connection[Any], conn.connection.dbapi_connection)
    with driver.cursor() as cursor:
        isolation = cursor.execute("SHOW transaction_isolation").fetchone()
        shared = isolation is not None and isolation[0] in ("repeatable read", "serializable")
        with _local_settings(cursor, settings):
            if len(plan.parts) > 1 and shared:
                _copy_parts(conn, cursor, plan.parts, settings, out, progress)
            else:
                for chunk in _copy(cursor, conn.dialect, plan.statement):
                    out.write(chunk)
                    if progress is not None:
                        progress(chunk.count(b"\n"))
    return plan.total


def _copy(
    cursor: psycopg.Cursor[Any], dialect: Dialect, statement: Select[Any]
) -> Iterator[bytearray]:
    """The CSV bytes of one COPY of `statement`, as the server sends them."""
    compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    query = f"COPY ({compiled}) TO STDOUT WITH (FORMAT csv, ENCODING 'UTF8')"
    with cursor.copy(query, compiled.params) as copy:
        # The server sends a message per row: gathered into blocks, the output is written
        # (and the progress counted) once per block, not once per row.
        block = bytearray()
        for row in _copy_rows(copy, cursor.connection):
            block += row
            if len(block) >= COPY_BLOCK_BYTES:
                yield block
                block = bytearray()
        if block:
            yield block


def _copy_rows(copy: psycopg.Copy, connection: psycopg.Connection[Any]) -> Iterator[Buffer]:
    """The rows of a COPY TO as the server sends them, like iterating over `copy` but at a
    third of the client's CPU (0.4 s instead of 1.0 s per million rows here): rows libpq
    already holds are taken straight from it; only when it holds none does psycopg wait for
    the next (without the GIL, so that parallel streams go on). At the end of the data the
    COPY's final result is read here (psycopg would ask libpq for more data and fail), and
    an error the server reported instead of the rest of the rows is raised as psycopg would
    raise it."""
    pgconn = connection.pgconn
    while True:
        nbytes, data = pgconn.get_copy_data(1)
        if nbytes > 0:
            yield data
        elif nbytes == 0:  # nothing received yet
            waited = copy.read()
            if not waited:
                return
            yield waited
        elif nbytes == -1:  # the end of the data: then the COPY's own result(s)
            _finish_copy_out(pgconn, connection.info.encoding)
            return
        else:
            raise psycopg.OperationalError(
                f"reading COPY data failed: {pgconn.get_error_message()}"
            )


def _finish_copy_out(pgconn: PGconn, encoding: str) -> None:
    """Read the results that follow a COPY TO's data; raise the first failed one."""
    failed: psycopg.Error | None = None
    while True:
        while pgconn.is_busy():
            select.select([pgconn.socket], [], [])
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            break
        if result.status != pq.ExecStatus.COMMAND_OK and failed is None:
            failed = psycopg.errors.error_from_result(result, encoding=encoding)
    if failed is not None:
        raise failed


@contextmanager
def _local_settings(
    cursor: psycopg.Cursor[Any], settings: Sequence[tuple[str, str]]
) -> Iterator[None]:
    """Planner settings for the rest of the transaction, put back as they were after."""
    before = []
    for name, value in settings:
        row = cursor.execute("SELECT current_setting(%s)", (name,)).fetchone()
        before.append((name, str(row[0]) if row else value))
        cursor.execute("SELECT set_config(%s, %s, true)", (name, value))
    yield
    for name, value in before:
        cursor.execute("SELECT set_config(%s, %s, true)", (name, value))


def _copy_parts(
    conn: Connection,
    cursor: psycopg.Cursor[Any],
    parts: Sequence[Select[Any]],
    settings: Sequence[tuple[str, str]],
    out: BinaryIO,
    progress: Callable[[int], None] | None,
) -> None:
    """The parts at once, each on its own connection in this transaction's snapshot: the
    first straight to `out`, the others spooled to temporary files and appended in order."""
    row = cursor.execute("SELECT pg_export_snapshot()").fetchone()
    assert row is not None
    snapshot = str(row[0])
    with ThreadPoolExecutor(max_workers=len(parts) - 1) as pool:
        spools: list[Future[IO[bytes]]] = [
            pool.submit(_spool, conn.engine, conn.dialect, snapshot, settings, part)
            for part in parts[1:]
        ]
        try:
            for chunk in _copy(cursor, conn.dialect, parts[0]):
                out.write(chunk)
                if progress is not None:
                    progress(chunk.count(b"\n"))
            for future in spools:
                with future.result() as spool:
                    while block := spool.read(1 << 20):
                        out.write(block)
                        if progress is not None:
                            progress(block.count(b"\n"))
        finally:
            for future in spools:
                if not future.cancel() and future.exception() is None:
                    future.result().close()


def _spool(
    engine: Engine,
    dialect: Dialect,
    snapshot: str,
    settings: Sequence[tuple[str, str]],
    part: Select[Any],
) -> IO[bytes]:
    """One part's CSV in a temporary file, read in the snapshot `snapshot`."""
    spool = tempfile.TemporaryFile()  # noqa: SIM115 (handed to the caller, who closes it)
    pooled = engine.raw_connection()
    try:
        driver = cast(psycopg.Connection[Any], pooled.driver_connection)
        with driver.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cursor.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            for name, value in settings:
                cursor.execute("SELECT set_config(%s, %s, true)", (name, value))
            for chunk in _copy(cursor, dialect, part):
                spool.write(chunk)
        driver.rollback()
    except BaseException:
        spool.close()
        raise
    finally:
        pooled.close()
    spool.seek(0)
    return spool


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
