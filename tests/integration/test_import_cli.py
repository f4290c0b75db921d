"""`campaign import` and `campaign dnc` through the real CLI against a real database."""

from __future__ import annotations

import csv
import gzip
import json
import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from campaigns.cli import main
from campaigns.db import make_engine
from campaigns.errors import InputFileError
from campaigns.local_redis import free_port
from campaigns.models import Contact, ContactList, DncNumber, ImportReject, Recipient

SAMPLES = Path(__file__).resolve().parents[2] / "sample_lists"
JSON_KEYS = {
    "list_id",
    "list_name",
    "rows",
    "imported",
    "duplicates",
    "invalid",
    "suppressed_dnc",
    "already_present",
    "seconds",
}


def run(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"DATABASE_URL": database_url})


def imported(database_url: str, *args: str) -> dict[str, Any]:
    result = run(database_url, "import", *args, "--json")
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def table_counts(database_url: str) -> dict[str, int]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return {
                model.__tablename__: conn.execute(
                    select(func.count()).select_from(model)
                ).scalar_one()
                for model in (ContactList, Contact, ImportReject, DncNumber)
            }
    finally:
        engine.dispose()


def contacts(database_url: str, list_id: int) -> list[Contact]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Contact).where(Contact.list_id == list_id).order_by(Contact.source_row)
            )
            return [Contact(**row._mapping) for row in rows]
    finally:
        engine.dispose()


def rejects(database_url: str, list_id: int) -> list[tuple[int, str | None, str]]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(ImportReject.row_number, ImportReject.raw_value, ImportReject.reason)
                .where(ImportReject.list_id == list_id)
                .order_by(ImportReject.row_number)
            )
            return [(r[0], r[1], r[2]) for r in rows]
    finally:
        engine.dispose()


def test_clean_list(database_url: str) -> None:
    summary = imported(database_url, str(SAMPLES / "clean.csv"), "--country", "US")
    assert set(summary) >= JSON_KEYS
    assert summary["list_name"] == "clean"
    assert (summary["rows"], summary["imported"], summary["invalid"]) == (20, 20, 0)
    stored = contacts(database_url, summary["list_id"])
    assert len(stored) == 20
    first = stored[0]
    assert (first.phone, first.name, first.region, first.time_zones, first.source_row) == (
        "+12125550101",
        "Alice Moreno",
        "US",
        "America/New_York",
        2,
    )
    assert first.attributes == {"name": "Alice Moreno", "city": "New York"}
    assert {c.time_zones for c in stored} >= {"America/Denver", "America/Phoenix"}


def test_messy_list_with_dnc_and_rejects_file(database_url: str, tmp_path: Path) -> None:
    dnc = run(database_url, "dnc", "import", str(SAMPLES / "dnc.csv"), "--country", "US")
    assert dnc.exit_code == 0, dnc.output
    rejects_csv = tmp_path / "rejects.csv"
    summary = imported(
        database_url,
        str(SAMPLES / "messy.csv"),
        "--country",
        "US",
        "--list",
        "spring",
        "--rejects",
        str(rejects_csv),
    )
    assert summary["list_name"] == "spring"
    assert {k: summary[k] for k in JSON_KEYS - {"list_id", "list_name", "seconds"}} == {
        "rows": 15,
        "imported": 8,
        "duplicates": 2,
        "invalid": 4,
        "suppressed_dnc": 1,
        "already_present": 0,
    }
    expected = [
        (9, "555-0146", "invalid for region US"),
        (10, "call me maybe", "not a number"),
        (11, "", "empty"),
        (15, "123 456 7890", "invalid for region US"),
    ]
    assert rejects(database_url, summary["list_id"]) == expected
    with rejects_csv.open(newline="") as handle:
        written = list(csv.reader(handle))
    assert written[0] == ["row", "value", "reason"]
    assert [(int(r[0]), r[1], r[2]) for r in written[1:]] == expected
    phones = [c.phone for c in contacts(database_url, summary["list_id"])]
    assert "+13035550148" not in phones  # on the DNC list
    assert phones.count("+12125550142") == 1  # written two ways, stored once
    assert "+13125550145" in phones  # the extension was dropped
    assert "+442079460959" in phones  # 00 44 ... in a US list


def test_numeric_xlsx(database_url: str) -> None:
    summary = imported(database_url, str(SAMPLES / "numeric_phones.xlsx"))
    assert (summary["rows"], summary["imported"], summary["duplicates"], summary["invalid"]) == (
        7,
        4,
        1,
        2,
    )
    phones = [c.phone for c in contacts(database_url, summary["list_id"])]
    assert phones == ["+12125550131", "+12125550132", "+13125550133", "+14155550134"]
    reasons = {row: reason for row, _, reason in rejects(database_url, summary["list_id"])}
    assert reasons == {6: "stored in scientific notation: digits lost", 8: "too short"}


def test_european_cp1252_semicolon(database_url: str) -> None:
    summary = imported(database_url, str(SAMPLES / "european_semicolon.csv"), "--country", "DE")
    assert (summary["rows"], summary["imported"], summary["duplicates"], summary["invalid"]) == (
        9,
        7,
        1,
        1,
    )
    stored = {c.phone: c for c in contacts(database_url, summary["list_id"])}
    assert stored["+493012345678"].name == "Jürgen Müller"
    assert stored["+49891234567"].attributes["Stadt"] == "München"
    assert stored["+33491123456"].name == "Jérôme Bœuf"
    assert stored["+33612345678"].region == "FR"


def test_reimport_adds_nothing(database_url: str) -> None:
    first = imported(database_url, str(SAMPLES / "clean.csv"))
    again = imported(database_url, str(SAMPLES / "clean.csv"))
    assert again["list_id"] == first["list_id"]
    assert (again["imported"], again["already_present"]) == (0, 20)
    assert table_counts(database_url)["contact"] == 20


def test_dry_run_writes_nothing(database_url: str, tmp_path: Path) -> None:
    rejects_csv = tmp_path / "r.csv"
    summary = imported(
        database_url, str(SAMPLES / "messy.csv"), "--dry-run", "--rejects", str(rejects_csv)
    )
    assert (summary["imported"], summary["invalid"]) == (9, 4)
    assert table_counts(database_url) == {
        "contact_list": 0,
        "contact": 0,
        "import_reject": 0,
        "dnc_number": 0,
    }
    assert len(rejects_csv.read_text().splitlines()) == 5


def test_table_output(database_url: str) -> None:
    result = run(database_url, "import", str(SAMPLES / "clean.csv"))
    assert result.exit_code == 0, result.output
    assert "Imported clean.csv into list 'clean'" in result.stdout
    assert "rows read" in result.stdout


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "empty.csv").write_bytes(b"")
    (tmp / "nophone.csv").write_text("who,where\nAnn,Paris\n")
    (tmp / "junk.csv").write_bytes(bytes(range(256)) * 50)
    (tmp / "latin.csv").write_bytes("name,phone\nJürgen,+4930123456\n".encode("latin-1"))
    return [
        ([str(tmp / "missing.csv")], "no such file"),
        ([str(tmp / "empty.csv")], "empty file"),
        ([str(tmp / "nophone.csv")], "no phone column found (columns: 'who', 'where')"),
        ([str(SAMPLES / "numeric_phones.xlsx"), "--sheet", "March"], "sheets: Contacts, Notes"),
        ([str(tmp / "latin.csv"), "--encoding", "utf-8"], "cannot be decoded as utf-8"),
        ([str(tmp / "latin.csv"), "--encoding", "klingon"], "unknown encoding"),
        ([str(tmp / "junk.csv")], "binary data"),
        ([str(SAMPLES / "clean.csv"), "--phone-column", "fax"], "no column named 'fax'"),
    ]


def test_bad_inputs_exit_1_with_one_line_and_change_nothing(
    database_url: str, tmp_path: Path
) -> None:
    before = table_counts(database_url)
    for args, reason in _bad_inputs(tmp_path):
        result = run(database_url, "import", *args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert args[0] in lines[0]
        assert reason in lines[0]
        assert table_counts(database_url) == before


def test_failure_mid_file_keeps_nothing(database_url: str, tmp_path: Path) -> None:
    lines = ["name,phone"] + [f"n{i},+1212555{i % 10000:04d}" for i in range(45_000)]
    body = "\n".join(lines).encode() + b"\nZo\xeb,+14155550199\n"
    path = tmp_path / "broken.csv.gz"
    path.write_bytes(gzip.compress(body))
    result = run(database_url, "import", str(path), "--encoding", "utf-8")
    assert result.exit_code == 1
    assert "cannot be decoded as utf-8" in result.stderr
    assert table_counts(database_url)["contact"] == 0
    assert table_counts(database_url)["contact_list"] == 0


def test_dnc_commands(database_url: str) -> None:
    added = run(database_url, "dnc", "add", "(212) 555-0142", "+44 20 7946 0958", "--reason", "x")
    assert added.exit_code == 0, added.output
    assert "added 2" in added.stdout
    again = run(database_url, "dnc", "add", "+1 212 555 0142")
    assert "added 0" in again.stdout
    bad = run(database_url, "dnc", "add", "not a phone")
    assert bad.exit_code == 1
    assert "not valid phone numbers" in bad.stderr
    listed = run(database_url, "dnc", "list", "--json")
    assert [row["phone"] for row in json.loads(listed.stdout)] == [
        "+12125550142",
        "+442079460958",
    ]
    summary = imported(database_url, str(SAMPLES / "messy.csv"))
    assert summary["suppressed_dnc"] == 2  # Ann (written two ways) and Ed
    removed = run(database_url, "dnc", "remove", "+12125550142")
    assert "removed 1" in removed.stdout
    assert table_counts(database_url)["dnc_number"] == 1
    table = run(database_url, "dnc", "list")
    assert "+442079460958" in table.stdout


@pytest.mark.parametrize("name", ["clean.csv", "european_semicolon.csv"])
def test_gzipped_samples_import_the_same(database_url: str, tmp_path: Path, name: str) -> None:
    plain = imported(database_url, str(SAMPLES / name), "--country", "DE", "--dry-run")
    packed = tmp_path / (name + ".gz")
    packed.write_bytes(gzip.compress((SAMPLES / name).read_bytes()))
    zipped = imported(database_url, str(packed), "--country", "DE", "--dry-run")
    assert {k: zipped[k] for k in ("rows", "imported", "invalid", "duplicates")} == {
        k: plain[k] for k in ("rows", "imported", "invalid", "duplicates")
    }


def _big_list(path: Path, rows: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "phone", "city"])
        for i in range(rows):
            phone = f"+1 212 555 {i % 9000:04d}" if i % 3 else f"(415) 555-{i % 7000:04d}"
            if i % 97 == 0:
                phone = "n/a"
            writer.writerow([f'Person "{i}"', phone, "Zürich\\" if i % 5 else ""])


def _stored(database_url: str, list_id: int) -> list[tuple[object, ...]]:
    return [
        (c.phone, c.name, c.attributes, c.region, c.time_zones, c.source_row)
        for c in contacts(database_url, list_id)
    ]


def _import(database_url: str, path: Path, name: str, *, columnar: bool) -> dict[str, Any]:
    from campaigns.importing import ImportOptions, import_file

    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            summary = import_file(
                conn, str(path), name, ImportOptions(default_region="US"), columnar=columnar
            )
    finally:
        engine.dispose()
    data = summary.as_json()
    data["rejects"] = [(r.row_number, r.raw_value, r.reason) for r in summary.rejects]
    return data


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    ignore = {"list_id", "list_name", "seconds"}
    return {k: v for k, v in a.items() if k not in ignore} == {
        k: v for k, v in b.items() if k not in ignore
    }


def test_columnar_import_stores_what_the_row_import_stores(
    database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "big.csv"
    _big_list(path, 60_000)  # several columnar chunks
    dnc = run(database_url, "dnc", "add", "+1 212 555 0001", "(415) 555-0003")
    assert dnc.exit_code == 0, dnc.output
    fast = _import(database_url, path, "fast", columnar=True)
    slow = _import(database_url, path, "slow", columnar=False)
    assert _same(fast, slow)
    assert fast["suppressed_dnc"] == 2
    assert fast["duplicates"] > 0
    assert fast["invalid"] > 0
    assert _stored(database_url, fast["list_id"]) == _stored(database_url, slow["list_id"])
    again = _import(database_url, path, "fast", columnar=True)  # staged: the list is not empty
    assert (again["imported"], again["already_present"]) == (0, fast["imported"])


def test_ragged_file_falls_back_to_the_row_reader(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    _big_list(path, 30_000)
    with path.open("a", encoding="utf-8") as handle:
        handle.write("Late,+1 303 555 0148,Denver,extra cell\n\nLast,+1 303 555 0149\n")
    fast = _import(database_url, path, "fast", columnar=True)
    slow = _import(database_url, path, "slow", columnar=False)
    assert _same(fast, slow)
    stored = _stored(database_url, fast["list_id"])
    assert stored == _stored(database_url, slow["list_id"])
    assert stored[-1][0] == "+13035550149"
    assert stored[-1][5] == 30_004


async def test_a_campaign_calls_an_imported_list_in_the_file_s_order(
    database_url: str, tmp_path: Path
) -> None:
    """A campaign calls (and exports) an imported list's numbers in the file's row order,
    whatever the order of the numbers themselves: on PostgreSQL the rows reach the table
    sorted by phone chunk by chunk (several here), with ids given in the file's order."""
    from tests.integration.factories import campaign_toml, create_campaign

    count = 80_000  # a few columnar chunks (1 MB each)
    path = tmp_path / "shuffled.csv"
    rng = random.Random(5)
    lines = rng.sample(range(count), count)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "phone"])
        for i in lines:
            writer.writerow([f"P{i}", f"+1 212 {200 + i // 10_000}{i % 10_000:04d}"[:20]])
    imported = _import(database_url, path, "shuffled", columnar=True)
    assert imported["imported"] == count
    await create_campaign(database_url, campaign_toml(list_name="shuffled"))
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Contact.source_row, Contact.phone)
                .join(Recipient, Recipient.contact_id == Contact.id)
                .order_by(Recipient.id)
            ).all()
    finally:
        engine.dispose()
    assert [row for row, _ in rows] == list(range(2, count + 2))
    assert rows[0][1] == f"+1212{200 + lines[0] // 10_000}{lines[0] % 10_000:04d}"


@pytest.mark.parametrize("collector_on", [True, False])
def test_an_import_leaves_the_garbage_collector_as_it_found_it(
    database_url: str, tmp_path: Path, collector_on: bool
) -> None:
    """The import pauses Python's cyclic collector while it runs; a process that imports
    a list (the demo, a long-lived service) must get it back, after a failure too."""
    import gc

    from campaigns.importing import ImportOptions, import_file

    bad = tmp_path / "bad.csv"
    bad.write_text("name,city\nAda,London\n", encoding="utf-8")
    was = gc.isenabled()
    engine = make_engine(database_url)
    try:
        (gc.enable if collector_on else gc.disable)()
        with engine.begin() as conn:
            import_file(conn, str(SAMPLES / "clean.csv"), "gc", ImportOptions("US"))
        assert gc.isenabled() is collector_on
        with pytest.raises(InputFileError), engine.begin() as conn:
            import_file(conn, str(bad), "gc-bad", ImportOptions("US"))
        assert gc.isenabled() is collector_on
    finally:
        (gc.enable if was else gc.disable)()
        engine.dispose()


def test_dnc_import_counts_new_numbers_keeps_old_ones_and_lists_few_rejects(
    database_url: str, tmp_path: Path
) -> None:
    """A large do-not-call file: each number once, the ones already on the list keep
    their source and reason, stderr lists the first rejects and --rejects writes all."""
    manual = run(database_url, "dnc", "add", "+1 212 555 0007", "--reason", "asked in person")
    assert "added 1" in manual.stdout
    path = tmp_path / "registry.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "listed"])
        for i in range(3000):
            writer.writerow([f"(212) 555-{i % 2000:04d}", "2026"])  # 2,000 numbers, twice some
            if i % 100 == 0:
                writer.writerow([f"bad-{i}", "2026"])  # 30 rejects
    rejects_file = tmp_path / "bad.csv"
    first = run(
        database_url, "dnc", "import", str(path), "--country", "US", "--rejects", str(rejects_file)
    )
    assert first.exit_code == 0, first.output
    assert "2000 number(s), 1999 added" in first.stdout  # +1 212 555 0007 was there
    assert "30 invalid" in first.stdout
    listed = [line for line in first.stderr.splitlines() if line.startswith("  row ")]
    assert len(listed) == 20
    assert "... and 10 more (all in" in first.stderr
    with rejects_file.open(newline="") as handle:
        written = list(csv.reader(handle))
    assert written[0] == ["row", "value", "reason"]
    assert [row[1] for row in written[1:]] == [f"bad-{i}" for i in range(0, 3000, 100)]
    assert written[1][0] == "3"  # the header is row 1, the first number row 2
    again = run(database_url, "dnc", "import", str(path), "--country", "US", "--json")
    assert json.loads(again.stdout) == {"numbers": 2000, "added": 0, "invalid": 30}
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            kept = conn.execute(
                select(DncNumber.source, DncNumber.reason).where(DncNumber.phone == "+12125550007")
            ).one()
            total = conn.execute(select(func.count()).select_from(DncNumber)).scalar_one()
    finally:
        engine.dispose()
    assert tuple(kept) == ("manual", "asked in person")
    assert total == 2000


def test_adding_to_the_dnc_list_in_blocks_counts_each_new_number_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from campaigns.store import contacts as store

    monkeypatch.setattr(store, "DNC_ADD_BLOCK", 3)
    numbers = [f"+1212555{i:04d}" for i in range(10)]
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            assert store.add_dnc(conn, numbers[:4], source="a") == 4
        with engine.begin() as conn:  # 6 new, 4 known, one written twice
            assert store.add_dnc(conn, [*numbers, numbers[7]], source="b") == 6
        with engine.connect() as conn:
            rows = conn.execute(select(DncNumber.phone, DncNumber.source)).all()
            sources = {str(row[0]): str(row[1]) for row in rows}
    finally:
        engine.dispose()
    assert sources == {n: "a" if i < 4 else "b" for i, n in enumerate(numbers)}


def test_dnc_import_with_a_rejects_path_it_cannot_write_adds_nothing(
    database_url: str, tmp_path: Path
) -> None:
    result = run(
        database_url,
        "dnc",
        "import",
        str(SAMPLES / "dnc.csv"),
        "--country",
        "US",
        "--rejects",
        str(tmp_path / "no-such-directory" / "bad.csv"),
    )
    assert result.exit_code == 1
    assert "cannot write the rejects file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert table_counts(database_url)["dnc_number"] == 0


def test_an_unreachable_database_is_one_line_naming_the_failure() -> None:
    """psycopg's message has hint lines and SQLAlchemy adds a link: the user gets one."""
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/campaigns"
    result = run(url, "import", str(SAMPLES / "clean.csv"))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot reach the database: OperationalError: ")
    assert "Connection refused" in lines[0]


def test_a_rejects_file_that_cannot_be_written_keeps_the_import_out(
    database_url: str, tmp_path: Path
) -> None:
    """The error says the import failed: then nothing may have been imported."""
    before = table_counts(database_url)
    result = run(
        database_url,
        "import",
        str(SAMPLES / "messy.csv"),
        "--rejects",
        str(tmp_path / "no-such-dir" / "rejects.csv"),
    )
    assert result.exit_code == 1
    assert "cannot write the rejects file" in result.stderr
    assert table_counts(database_url) == before


def test_a_list_name_is_trimmed_and_must_fit(database_url: str, tmp_path: Path) -> None:
    """Checked before anything is read or written (PostgreSQL refused a name over 200
    characters mid-import with a traceback; SQLite stored it, and an empty one)."""
    before = table_counts(database_url)
    too_long = run(database_url, "import", str(SAMPLES / "clean.csv"), "--list", "x" * 201)
    assert too_long.exit_code == 2
    assert "the list name is 201 characters long; at most 200" in too_long.stderr
    empty = run(database_url, "import", str(SAMPLES / "clean.csv"), "--list", "   ")
    assert empty.exit_code == 2
    assert "Invalid value for --list: the list name is empty" in empty.stderr
    long_file = tmp_path / ("n" * 210 + ".csv")
    long_file.write_bytes((SAMPLES / "clean.csv").read_bytes())
    from_file = run(database_url, "import", str(long_file))
    assert from_file.exit_code == 2
    assert "at most 200: name the list with --list" in from_file.stderr
    assert table_counts(database_url) == before
    assert (
        imported(database_url, str(SAMPLES / "clean.csv"), "--list", "  march  ")["list_name"]
        == "march"
    )
