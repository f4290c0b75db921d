"""`campaign export` rows that depend on choices inside the query: which answer and which
AMD result count when a recipient has several, the name column met again as an attribute,
and a PostgreSQL export split into parallel streams (same file as one stream).
"""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import Select, insert, literal_column, select, text, update
from sqlalchemy.engine import Dialect, make_url

from campaigns import export
from campaigns.cli import main
from campaigns.db import make_engine
from campaigns.export import plan_export, write_export
from campaigns.models import Answer, Batch, CallAttempt, ContactList, Recipient
from tests.integration.factories import campaign_toml, create_campaign, make_list
from tests.integration.test_report_export import build_campaign

BASE = datetime(2024, 10, 1, 10, 0, tzinfo=UTC)
POLL = """
[poll]
[[poll.questions]]
key = "rating"
kind = "dtmf"
text = "Rate us from 1 to 5."
choices = { "1" = "poor", "5" = "great" }
"""


def export_rows(database_url: str, campaign_id: int, tmp_path: Path) -> list[list[str]]:
    target = tmp_path / "out.csv"
    result = CliRunner().invoke(
        main,
        ["export", str(campaign_id), "-o", str(target)],
        env={"DATABASE_URL": database_url},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output + result.stderr
    return list(csv.reader(io.StringIO(target.read_bytes().decode("utf-8"), newline="")))


# (attempt_no, answered, amd_result)
Attempt = tuple[int, bool, str | None]
# (attempt_no, raw, label, valid), in the order the rows are inserted (answer id order)
Given = tuple[int, str, str | None, bool]


def add_calls(
    database_url: str, campaign_id: int, calls: dict[str, tuple[list[Attempt], list[Given]]]
) -> None:
    """Attempts and `rating` answers for the recipients with the given phones."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(Batch).values(id="b-1", campaign_id=campaign_id, size=1, state="completed")
            )
            ids = dict(
                conn.execute(
                    Recipient.__table__.select()
                    .with_only_columns(Recipient.phone, Recipient.id)
                    .where(Recipient.campaign_id == campaign_id)
                ).all()
            )
            for phone, (attempts, answers) in calls.items():
                attempt_ids = {}
                for no, answered, amd in attempts:
                    start = BASE + timedelta(hours=no)
                    attempt_ids[no] = conn.execute(
                        insert(CallAttempt)
                        .values(
                            recipient_id=ids[phone],
                            campaign_id=campaign_id,
                            batch_id="b-1",
                            attempt_no=no,
                            phone=phone,
                            voice_id=f"v-{phone}-{no}",
                            state="ended",
                            amd_result=amd,
                            outcome="partial" if answered else "no_answer",
                            started_at=start,
                            answered_at=start + timedelta(seconds=5) if answered else None,
                            ended_at=start + timedelta(minutes=1),
                        )
                        .returning(CallAttempt.id)
                    ).scalar_one()
                for no, raw, label, valid in answers:
                    conn.execute(
                        insert(Answer).values(
                            attempt_id=attempt_ids[no],
                            recipient_id=ids[phone],
                            question_key="rating",
                            input_kind="dtmf",
                            raw=raw,
                            label=label,
                            valid=valid,
                            received_at=BASE,
                        )
                    )
    finally:
        engine.dispose()


def test_the_answer_and_amd_that_count_when_there_are_several(
    database_url: str, tmp_path: Path
) -> None:
    phones = [f"+1202555{n:04d}" for n in range(1, 6)]
    make_list(database_url, phones)
    campaign_id = asyncio.run(create_campaign(database_url, campaign_toml(poll=POLL)))
    add_calls(
        database_url,
        campaign_id,
        {
            # Both valid: the later attempt wins, though its answer row was written first.
            phones[0]: (
                [(1, True, "machine"), (2, True, "human")],
                [(2, "5", "great", True), (1, "1", "poor", True)],
            ),
            # A valid answer beats a later invalid one.
            phones[1]: (
                [(1, True, "human"), (2, True, None)],
                [(1, "1", "poor", True), (2, "7", None, False)],
            ),
            # Only invalid answers: the latest attempt's; AMD of the latest answered attempt.
            phones[2]: (
                [(1, True, "human"), (2, True, "=odd"), (3, False, None)],
                [(2, "8", None, False), (1, "9", None, False)],
            ),
            # One attempt, one answer: no ranking needed.
            phones[3]: ([(1, True, "human")], [(1, "5", "great", True)]),
        },
    )
    rows = export_rows(database_url, campaign_id, tmp_path)
    header = rows[0]
    picked = {row[0]: (row[header.index("amd_result")], row[-2], row[-1]) for row in rows[1:]}
    assert header[-2:] == ["rating_label", "rating_raw"]
    assert picked == {
        phones[0]: ("human", "great", "5"),
        phones[1]: ("", "poor", "1"),
        phones[2]: ("'=odd", "", "8"),
        phones[3]: ("human", "great", "5"),
        phones[4]: ("", "", ""),
    }


def test_the_name_column_is_not_written_again_as_an_attribute(
    database_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "people.csv"
    source.write_text(
        "Phone,Name,City\n+12025550101, Ada Lovelace ,London\n+12025550102,,Paris\n"
        "+12025550103,=Evil,Rome\n",
        encoding="utf-8",
    )
    env = {"DATABASE_URL": database_url, "DEFAULT_COUNTRY": "US"}
    imported = CliRunner().invoke(main, ["import", str(source), "--list", "test-list"], env=env)
    assert imported.exit_code == 0, imported.output + imported.stderr
    campaign_id = asyncio.run(create_campaign(database_url, campaign_toml()))
    rows = export_rows(database_url, campaign_id, tmp_path)
    assert rows[0][:3] == ["phone", "name", "City"]
    assert "attr_name" not in rows[0]
    assert [row[:3] for row in rows[1:]] == [
        ["+12025550101", "Ada Lovelace", "London"],
        ["+12025550102", "", "Paris"],
        ["+12025550103", "'=Evil", "Rome"],
    ]


def test_a_name_like_attribute_that_is_not_the_name_is_kept(
    database_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "people.csv"
    source.write_text(
        "phone,name,nickname\n+12025550101,Ada Lovelace,Ada\n+12025550102,Alan Turing,Alan\n",
        encoding="utf-8",
    )
    env = {"DATABASE_URL": database_url, "DEFAULT_COUNTRY": "US"}
    imported = CliRunner().invoke(
        main, ["import", str(source), "--list", "test-list", "--name-column", "nickname"], env=env
    )
    assert imported.exit_code == 0, imported.output + imported.stderr
    campaign_id = asyncio.run(create_campaign(database_url, campaign_toml()))
    rows = export_rows(database_url, campaign_id, tmp_path)
    assert rows[0][:4] == ["phone", "name", "attr_name", "nickname"]
    assert rows[1][:4] == ["+12025550101", "Ada", "Ada Lovelace", "Ada"]


def test_an_export_in_parallel_streams_is_the_same_file(database_url: str) -> None:
    campaign_id = build_campaign(database_url)
    engine = make_engine(database_url)
    outputs: dict[tuple[str, int], bytes] = {}
    try:
        for isolation in ("REPEATABLE READ", "READ COMMITTED"):
            options = {"isolation_level": isolation} if engine.dialect.name != "sqlite" else {}
            for streams in (1, 3):
                with engine.connect().execution_options(**options) as conn, conn.begin():
                    plan = plan_export(conn, campaign_id, "recipients", streams=streams)
                    if engine.dialect.name == "postgresql":
                        assert len(plan.parts) == (3 if streams == 3 else 0)
                    out = io.BytesIO()
                    assert write_export(conn, plan, out) == 14
                    outputs[isolation, streams] = out.getvalue()
                    if engine.dialect.name == "postgresql":
                        # The planner settings of the export do not outlive it.
                        show = conn.exec_driver_sql("SHOW enable_hashjoin").scalar_one()
                        assert show == "on"
    finally:
        engine.dispose()
    one = outputs["REPEATABLE READ", 1]
    assert one.count(b"\n") >= 15
    assert all(data == one for data in outputs.values())


IMPORTS = {
    "a name with spaces": [
        ("Phone,Name,City\n+12025550101, Ada Lovelace ,London\n+12025550102,,Paris\n", ()),
    ],
    "a name with a tab": [("phone,name,city\n+12025550101,\tAda,London\n", ())],
    "--name-column elsewhere": [
        ("phone,name,nickname\n+12025550101,Ada Lovelace,Ada\n", ("--name-column", "nickname")),
    ],
    "--name-column equal to name": [
        ("phone,name,nickname\n+12025550101,Ada,Ada\n", ("--name-column", "nickname")),
    ],
    "the name header twice": [("phone,name,name\n+12025550101,Ada,Lovelace\n", ())],
    "keys of one length": [("phone,cc,bb,a\n+12025550101,1,2,3\n", ())],
    "phone only": [("phone\n+12025550101\n+12025550102\n", ())],
    "two imports with other columns": [
        ("phone,name,city\n+12025550101,Ada,London\n+12025550102,Alan,Paris\n", ()),
        ("phone,name,zip,plan\n+12025550102,Alan,75001,gold\n+12025550103,Grace,1,b\n", ()),
        ("phone,full_name\n+12025550104,Edsger\n", ()),
    ],
    "a second import without the name": [
        ("phone,name,city\n+12025550101,Ada,London\n", ()),
        ("phone,city\n+12025550102,Paris\n", ()),
    ],
    "a re-import that adds nothing": [
        ("phone,name,city\n+12025550101,Ada,London\n", ()),
        ("phone,name,zip\n+12025550101,Ada,75001\n", ()),
    ],
}


@pytest.mark.parametrize("case", list(IMPORTS))
def test_the_attributes_an_import_records_give_the_export_it_would_read(
    database_url: str, tmp_path: Path, case: str
) -> None:
    """The export takes a list's attribute columns from what its import recorded, when one
    import made all its contacts (else it reads them from the contacts); reading them from
    every contact instead gives the same file."""
    env = {"DATABASE_URL": database_url, "DEFAULT_COUNTRY": "US"}
    for number, (content, flags) in enumerate(IMPORTS[case]):
        source = tmp_path / f"part{number}.csv"
        source.write_text(content, encoding="utf-8")
        imported = CliRunner().invoke(
            main, ["import", str(source), "--list", "test-list", *flags], env=env
        )
        assert imported.exit_code == 0, imported.output + imported.stderr
    campaign_id = asyncio.run(create_campaign(database_url, campaign_toml()))
    recorded = export_rows(database_url, campaign_id, tmp_path)
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            keys = conn.execute(select(ContactList.attribute_keys)).scalar_one()
            conn.execute(update(ContactList).values(attribute_keys=None))
    finally:
        engine.dispose()
    # recorded when one import made all the contacts (the re-import adds none)
    one_import = len(IMPORTS[case]) == 1 or case == "a re-import that adds nothing"
    assert (keys is not None) == one_import, keys
    assert export_rows(database_url, campaign_id, tmp_path) == recorded


def _copy_bytes(database_url: str, statement: Select[Any], *, psycopg_own: bool) -> bytes:
    """The CSV of `statement` as the export reads a COPY, or as psycopg's own iteration
    over the same COPY reads it."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            driver = cast(psycopg.Connection[Any], conn.connection.dbapi_connection)
            with driver.cursor() as cursor:
                if not psycopg_own:
                    return b"".join(export._copy(cursor, conn.dialect, statement))
                compiled = statement.compile(dialect=conn.dialect)
                query = f"COPY ({compiled}) TO STDOUT WITH (FORMAT csv)"
                with cursor.copy(query, compiled.params) as copy:
                    return b"".join(bytes(row) for row in copy)
    finally:
        engine.dispose()


def _series(rows: int, value: str) -> Select[Any]:
    return select(literal_column(value)).select_from(text(f"generate_series(1, {rows}) AS g"))


def test_the_exports_copy_reader_reads_what_psycopg_reads(database_url: str) -> None:
    """The export reads COPY rows from libpq itself (`export._copy_rows`): every byte of a
    COPY larger than any buffer, as psycopg's own iteration gets it."""
    if make_url(database_url).get_backend_name() != "postgresql":
        pytest.skip("COPY is PostgreSQL's")
    statement = _series(300_000, "g, repeat('é,\"', mod(g, 7)), g * 1.5")
    ours = _copy_bytes(database_url, statement, psycopg_own=False)
    assert ours.count(b"\n") == 300_000
    assert ours == _copy_bytes(database_url, statement, psycopg_own=True)


def test_an_error_in_the_middle_of_a_copy_is_raised_and_the_connection_goes_on(
    database_url: str,
) -> None:
    if make_url(database_url).get_backend_name() != "postgresql":
        pytest.skip("COPY is PostgreSQL's")
    engine = make_engine(database_url)
    rows = 0

    def read(cursor: psycopg.Cursor[Any], dialect: Dialect) -> None:
        nonlocal rows
        for block in export._copy(cursor, dialect, _series(200_000, "1 / (150000 - g)")):
            rows += block.count(b"\n")

    try:
        with engine.connect() as conn:
            driver = cast(psycopg.Connection[Any], conn.connection.dbapi_connection)
            with driver.cursor() as cursor, pytest.raises(psycopg.errors.DivisionByZero):
                read(cursor, conn.dialect)
            assert 0 < rows < 150_000
            driver.rollback()
            assert driver.execute("SELECT 42").fetchone() == (42,)
    finally:
        engine.dispose()
