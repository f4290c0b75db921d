"""`campaign report` and `campaign export`: the figures of a campaign and its results CSV."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sqlalchemy import Connection, Engine

from campaigns import migrate
from campaigns.db import make_engine
from campaigns.errors import InputFileError
from campaigns.export import Kind, plan_export, write_export
from campaigns.models import utcnow
from campaigns.reporting import load_report, render_html, render_terminal, report_to_json

# Exports smaller than this finish before a progress bar would be worth drawing.
PROGRESS_MIN_ROWS = 20_000


def register(main: click.Group) -> None:
    """Add this module's commands to the `campaign` group."""
    main.add_command(report)
    main.add_command(export)


@contextlib.contextmanager
def _snapshot(database_url: str) -> Iterator[Connection]:
    """A read-only connection whose queries all see one snapshot (REPEATABLE READ on
    PostgreSQL; one read transaction on SQLite)."""
    migrate.ensure_schema(database_url)
    engine: Engine = make_engine(database_url)
    try:
        options = {"isolation_level": "REPEATABLE READ"} if engine.dialect.name != "sqlite" else {}
        with engine.connect().execution_options(**options) as conn, conn.begin():
            yield conn
    finally:
        engine.dispose()


@click.command()
@click.argument("campaign_id", type=int)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (docs/report-json.md)."
)
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a self-contained HTML report with charts to this file.",
)
def report(campaign_id: int, as_json: bool, html_file: Path | None) -> None:
    """Show a campaign's figures: funnel, outcomes by attempt, AMD split, poll answers.

    \b
    Examples:
      campaign report 1
      campaign report 1 --json > report.json
      campaign report 1 --html report.html
    """
    from campaigns.cli import load_settings

    settings = load_settings()
    with _snapshot(settings.database_url) as conn:
        result = load_report(conn, campaign_id, utcnow())
    if html_file is not None:
        try:
            html_file.write_text(render_html(result), encoding="utf-8")
        except OSError as exc:
            raise InputFileError(str(html_file), exc.strerror or "cannot be written") from exc
    if as_json:
        click.echo(json.dumps(report_to_json(result), indent=2, ensure_ascii=False))
    else:
        render_terminal(result, Console())
    if html_file is not None:
        click.echo(f"HTML report written to {html_file}", err=True)


@click.command()
@click.argument("campaign_id", type=int)
@click.option(
    "-o",
    "--output",
    required=True,
    help="The CSV file to write, or - for standard output.",
)
@click.option("--attempts", "form", flag_value="attempts", help="One row per call attempt.")
@click.option("--answers", "form", flag_value="answers", help="One row per poll answer.")
@click.option(
    "--excel", is_flag=True, help="Start the file with a UTF-8 BOM (Excel then reads UTF-8)."
)
def export(campaign_id: int, output: str, form: str | None, excel: bool) -> None:
    """Write a campaign's results as CSV: one row per recipient (default), per attempt
    (--attempts) or per answer (--answers).

    Cells a spreadsheet would run as a formula (starting with = + - @ TAB or CR) get a
    leading apostrophe, except E.164 phone numbers in the phone column, which keep their +.
    To keep the + and every digit when opening in Excel, import the file (Data > From
    Text/CSV) and set the phone column's type to Text; in LibreOffice tick "Format quoted
    field as text" or set the column to Text in the import dialog.

    \b
    Examples:
      campaign export 1 -o results.csv
      campaign export 1 -o attempts.csv --attempts --excel
      campaign export 1 -o - --answers | head
    """
    from campaigns.cli import load_settings

    kinds: dict[str | None, Kind] = {"attempts": "attempts", "answers": "answers"}
    kind = kinds.get(form, "recipients")
    settings = load_settings()
    err = Console(stderr=True)
    started = time.perf_counter()
    with _snapshot(settings.database_url) as conn:
        plan = plan_export(conn, campaign_id, kind)
        with _open_output(output) as out, _progress(err, plan.total) as advance:
            rows = write_export(conn, plan, out, excel=excel, progress=advance)
    seconds = time.perf_counter() - started
    where = "standard output" if output == "-" else output
    rate = f", {rows / seconds:,.0f} rows/s" if seconds > 0 and rows else ""
    click.echo(f"exported {rows:,} {kind} rows to {where} in {seconds:.2f} s{rate}", err=True)


@contextlib.contextmanager
def _open_output(output: str) -> Iterator[BinaryIO]:
    """Standard output, or a file written beside its final name and renamed when complete
    (a failed export never leaves a truncated results file behind)."""
    if output == "-":
        sys.stdout.flush()
        stream = sys.stdout.buffer
        yield stream
        stream.flush()
        return
    path = Path(output)
    if path.is_dir():  # checked first: the partial file would go beside it, the rename fail
        raise InputFileError(output, "is a directory: name the CSV file to write")
    partial = path.with_name(f".{path.name}.partial")
    try:
        handle = partial.open("wb")
    except OSError as exc:
        raise InputFileError(output, exc.strerror or "cannot be written") from exc
    try:
        with handle:
            yield handle
        try:
            os.replace(partial, path)
        except OSError as exc:
            raise InputFileError(output, exc.strerror or "cannot be written") from exc
    finally:
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def _progress(console: Console, total: int) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr for large exports on a terminal; a no-op otherwise."""
    if total < PROGRESS_MIN_ROWS or not console.is_terminal:
        yield None
        return
    with Progress(
        TextColumn("exporting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("export", total=total)

        def advance(rows: int) -> None:
            bar.advance(task, rows)

        yield advance
