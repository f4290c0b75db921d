"""`campaign import FILE` and `campaign dnc ...`: contact lists and the do-not-call list."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table as RichTable
from sqlalchemy import Connection

from campaigns.cli import load_settings
from campaigns.config import Settings
from campaigns.db import make_engine
from campaigns.errors import CampaignError, InputFileError
from campaigns.importing import (
    ImportOptions,
    ImportSummary,
    Reject,
    import_file,
    list_name_for,
    read_numbers,
)
from campaigns.migrate import ensure_schema
from campaigns.models import LIST_NAME_MAX
from campaigns.phones import PhoneResult, normalise
from campaigns.store import contacts as store

PROGRESS_MIN_BYTES = 2_000_000
REJECTS_SHOWN = 20  # rejected rows `campaign dnc import` lists on stderr
PROGRESS_MIN_ROWS = 20_000


def _country(value: str | None, settings: Settings) -> str:
    country = (value or settings.default_country).upper()
    if len(country) != 2 or not country.isalpha():
        raise click.BadParameter(
            f"{value!r} is not a two-letter region code", param_hint="--country"
        )
    return country


@contextmanager
def _transaction(database_url: str, *, commit: bool = True) -> Iterator[Connection]:
    """One transaction: committed at the end (or rolled back: `commit=False`, or an error)."""
    ensure_schema(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            if commit:
                conn.commit()
            else:
                conn.rollback()
    finally:
        engine.dispose()


def _safe_cell(value: str) -> str:
    """Neutralise cells a spreadsheet would run as a formula (phone-like '+1...' kept)."""
    if value.startswith(("=", "@", "\t", "\r")):
        return "'" + value
    if value.startswith(("+", "-")) and not all(c in "+-0123456789 ().x" for c in value):
        return "'" + value
    return value


def _write_rejects(path: str, rejects: list[Reject]) -> None:
    try:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["row", "value", "reason"])
            for reject in rejects:
                writer.writerow([reject.row_number, _safe_cell(reject.raw_value), reject.reason])
    except OSError as exc:
        raise InputFileError(path, f"cannot write the rejects file: {exc.strerror}") from exc


def _summary_table(summary: ImportSummary, path: str) -> RichTable:
    verb = "Dry run: would import" if summary.dry_run else "Imported"
    table = RichTable(
        title=f"{verb} {Path(path).name} into list {summary.list_name!r} (id {summary.list_id})",
        title_justify="left",
        min_width=60,
    )
    table.add_column("")
    table.add_column("rows", justify="right")
    for label, value in (
        ("rows read", summary.rows),
        ("imported" + (" (would be)" if summary.dry_run else ""), summary.imported),
        ("duplicates in file", summary.duplicates),
        ("invalid (rejected)", summary.invalid),
        ("on the do-not-call list", summary.suppressed_dnc),
        ("already in the list", summary.already_present),
        ("extensions dropped", summary.extensions_dropped),
    ):
        table.add_row(label, f"{value:,}")
    table.caption = f"{summary.seconds:.2f} s"
    return table


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
@click.option("--list", "list_name", help="List to import into (default: the file name).")
@click.option(
    "--country", help="Region for numbers without a country code (default: DEFAULT_COUNTRY)."
)
@click.option("--phone-column", help="Column holding the numbers (default: detected).")
@click.option("--name-column", help="Column holding the names (default: detected).")
@click.option("--sheet", help="Excel sheet to read (default: the first).")
@click.option("--encoding", help="Text encoding of a CSV (default: detected).")
@click.option("--rejects", "rejects_path", help="Write the rejected rows to this CSV.")
@click.option("--dry-run", is_flag=True, help="Validate and report; write nothing to the database.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def import_command(
    file: str,
    list_name: str | None,
    country: str | None,
    phone_column: str | None,
    name_column: str | None,
    sheet: str | None,
    encoding: str | None,
    rejects_path: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Import a contact list (CSV/TSV/TXT/XLSX/XLS, optionally .gz) into SQL.

    Numbers are normalised to E.164; invalid rows are rejected with their row number and
    reason; duplicates and numbers on the do-not-call list are counted, not stored.

    \b
    Example:
      campaign import sample_lists/messy.csv --country US --rejects rejects.csv
      campaign import leads.xlsx --sheet March --list march-leads --json
    """
    settings = load_settings()
    options = ImportOptions(
        default_region=_country(country, settings),
        phone_column=phone_column,
        name_column=name_column,
        sheet=sheet,
        encoding=encoding,
    )
    name = _list_name(list_name, file)
    console = Console(stderr=False)
    show_progress = not as_json and sys.stdout.isatty() and _is_large(file)
    with (
        _transaction(settings.database_url, commit=not dry_run) as conn,
        _progress(console, show_progress) as tick,
    ):
        summary = import_file(conn, file, name, options, progress=tick, dry_run=dry_run)
        if rejects_path:  # before the commit: a path that cannot be written keeps nothing
            _write_rejects(rejects_path, summary.rejects)
    if as_json:
        click.echo(json.dumps(summary.as_json()))
    else:
        console.print(_summary_table(summary, file))


def _list_name(given: str | None, path: str) -> str:
    """--list as given (spaces around it dropped), else the file's name: non-empty and
    short enough for the database, or a usage error naming what is wrong."""
    name = list_name_for(path) if given is None else given.strip()
    origin = "--list" if given is not None else f"the list name taken from {Path(path).name!r}"
    if not name:
        raise click.BadParameter("the list name is empty", param_hint=origin)
    if len(name) > LIST_NAME_MAX:
        raise click.BadParameter(
            f"the list name is {len(name)} characters long; at most {LIST_NAME_MAX}"
            + ("" if given is not None else ": name the list with --list"),
            param_hint=origin,
        )
    return name


def _is_large(path: str) -> bool:
    try:
        return Path(path).stat().st_size >= PROGRESS_MIN_BYTES
    except OSError:
        return False


@contextmanager
def _progress(console: Console, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("importing"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("import", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield tick


@click.group("dnc")
def dnc() -> None:
    """The global do-not-call list (numbers on it are never imported or called)."""


def _normalised(numbers: tuple[str, ...], region: str) -> list[str]:
    out: list[str] = []
    bad: list[str] = []
    for raw in numbers:
        result = normalise(raw, region)
        if isinstance(result, PhoneResult):
            out.append(result.e164)
        else:
            bad.append(f"{raw!r} ({result.reason})")
    if bad:
        raise CampaignError("not valid phone numbers: " + ", ".join(bad))
    return out


@dnc.command("add")
@click.argument("numbers", nargs=-1, required=True)
@click.option("--country", help="Region for numbers without a country code.")
@click.option("--reason", help="Why they must not be called.")
def dnc_add(numbers: tuple[str, ...], country: str | None, reason: str | None) -> None:
    """Add numbers to the do-not-call list.

    \b
    Example:
      campaign dnc add "+1 415 555 0100" "(212) 555-0199" --reason "asked by phone"
    """
    settings = load_settings()
    phones = _normalised(numbers, _country(country, settings))
    with _transaction(settings.database_url) as conn:
        added = store.add_dnc(conn, phones, source="manual", reason=reason)
    click.echo(
        f"added {added} number(s) to the do-not-call list ({len(phones) - added} already there)"
    )


@dnc.command("remove")
@click.argument("numbers", nargs=-1, required=True)
@click.option("--country", help="Region for numbers without a country code.")
def dnc_remove(numbers: tuple[str, ...], country: str | None) -> None:
    """Remove numbers from the do-not-call list.

    \b
    Example:
      campaign dnc remove +14155550100
    """
    settings = load_settings()
    phones = _normalised(numbers, _country(country, settings))
    with _transaction(settings.database_url) as conn:
        removed = store.remove_dnc(conn, phones)
    click.echo(f"removed {removed} number(s) from the do-not-call list")


@dnc.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
@click.option("--country", help="Region for numbers without a country code.")
@click.option(
    "--phone-column", help="Column holding the numbers (default: detected, else the first)."
)
@click.option("--sheet", help="Excel sheet to read (default: the first).")
@click.option("--encoding", help="Text encoding of a CSV (default: detected).")
@click.option("--reason", help="Why they must not be called.")
@click.option("--rejects", "rejects_path", help="Write the rejected rows to this CSV.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def dnc_import(
    file: str,
    country: str | None,
    phone_column: str | None,
    sheet: str | None,
    encoding: str | None,
    reason: str | None,
    rejects_path: str | None,
    as_json: bool,
) -> None:
    """Add every number of a file to the do-not-call list.

    Rejected rows (not a valid phone number) are listed on stderr, the first 20 of
    them; --rejects writes them all to a CSV (row, value, reason).

    \b
    Example:
      campaign dnc import sample_lists/dnc.csv --country US
      campaign dnc import national-registry.csv.gz --country US --rejects bad.csv
    """
    settings = load_settings()
    options = ImportOptions(
        default_region=_country(country, settings),
        phone_column=phone_column,
        sheet=sheet,
        encoding=encoding,
    )
    console = Console(stderr=False)
    show_progress = not as_json and sys.stdout.isatty() and _is_large(file)
    with _progress(console, show_progress) as tick:
        phones, rejects = read_numbers(file, options, progress=tick)
    if rejects_path:  # first: a path that cannot be written stops the command before it adds
        _write_rejects(rejects_path, rejects)
    with _transaction(settings.database_url) as conn:
        added = store.add_dnc(conn, phones, source=f"file:{Path(file).name}", reason=reason)
    result = {"numbers": len(phones), "added": added, "invalid": len(rejects)}
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(
        f"{file}: {len(phones)} number(s), {added} added to the do-not-call list, "
        f"{len(rejects)} invalid"
    )
    for reject in rejects[:REJECTS_SHOWN]:
        click.echo(f"  row {reject.row_number}: {reject.raw_value!r}: {reject.reason}", err=True)
    if len(rejects) > REJECTS_SHOWN:
        more = len(rejects) - REJECTS_SHOWN
        hint = f"all in {rejects_path}" if rejects_path else "--rejects FILE writes them all"
        click.echo(f"  ... and {more} more ({hint})", err=True)


@dnc.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def dnc_list(as_json: bool) -> None:
    """Show the do-not-call list.

    \b
    Example:
      campaign dnc list --json
    """
    settings = load_settings()
    with _transaction(settings.database_url) as conn:
        rows = store.list_dnc(conn)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {"phone": p, "source": s, "reason": r, "added_at": a.isoformat()}
                    for p, s, r, a in rows
                ]
            )
        )
        return
    table = RichTable(title=f"Do-not-call list ({len(rows)} numbers)")
    for column in ("phone", "source", "reason", "added"):
        table.add_column(column)
    for phone, source, reason, added_at in rows:
        table.add_row(phone, source, reason or "", added_at.strftime("%Y-%m-%d %H:%M"))
    Console().print(table)


def register(main: click.Group) -> None:
    """Add this module's commands to the `campaign` group."""
    main.add_command(import_command)
    main.add_command(dnc)
