"""Import benchmark: `campaign import` vs the pandas + phonenumbers + to_sql baseline.

Generates a realistic 1,000,000-row CSV and a 100,000-row .xlsx (mixed number formats,
~2 % invalid, ~3 % duplicates written another way, a name and two attribute columns), then
measures, each in a fresh process (for its own peak RSS), this importer and the baseline
into PostgreSQL and SQLite, and writes its section of docs/benchmarks.md.

    python bench/import_bench.py                      # full run (a few minutes)
    python bench/import_bench.py --csv-rows 200000 --xlsx-rows 20000 --no-doc   # quick look

PostgreSQL: TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test); a scratch
database is created and dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchdoc import machine, scratch_postgres, write_section

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "import"
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
CITIES = ["New York", "Chicago", "Denver", "Phoenix", "Seattle", "Boston", "Miami", "Austin"]
PLANS = ["gold", "silver", "bronze"]
INVALID = ["12345", "n/a", "555-0100", "123 456 7890", "+1 212", "unknown", "0000000000"]


# -- data ----------------------------------------------------------------------------------


def _area_codes() -> list[str]:
    from campaigns.phones import PhoneResult, normalise

    return [
        str(npa)
        for npa in range(201, 990)
        if isinstance(normalise(f"+1{npa}2345678", "US", fast=False), PhoneResult)
    ]


def _phone(rng: random.Random, areas: list[str]) -> tuple[str, str]:
    """(digits key, written form) of one valid number, in one of the usual shapes."""
    if rng.random() < 0.05:
        first, line = rng.choice("378"), f"{rng.randrange(10**7):07d}"
        return "4420" + first + line, f"+44 20 {first}{line[:3]} {line[3:]}"
    area = rng.choice(areas)
    exchange = rng.randrange(200, 1000)
    line = rng.randrange(10000)
    return f"1{area}{exchange}{line:04d}", _written(rng, area, exchange, line)


def _written(rng: random.Random, area: str, exchange: int, line: int) -> str:
    shape = rng.randrange(6)
    if shape == 0:
        return f"+1{area}{exchange}{line:04d}"
    if shape == 1:
        return f"({area}) {exchange}-{line:04d}"
    if shape == 2:
        return f"{area}.{exchange}.{line:04d}"
    if shape == 3:
        return f"1-{area}-{exchange}-{line:04d}"
    if shape == 4:
        return f"+1 {area} {exchange} {line:04d}"
    return f"{area}{exchange}{line:04d}"


def _rows(count: int, seed: int) -> list[tuple[str, str, str, str]]:
    rng = random.Random(seed)
    areas = _area_codes()
    earlier: list[str] = []
    rows: list[tuple[str, str, str, str]] = []
    for i in range(count):
        roll = rng.random()
        if roll < 0.02:
            phone = rng.choice(INVALID)
        elif roll < 0.05 and earlier:
            digits = rng.choice(earlier)  # the same number written another way
            phone = (
                _written(rng, digits[1:4], int(digits[4:7]), int(digits[7:]))
                if digits.startswith("1")
                else "+" + digits
            )
        else:
            key, phone = _phone(rng, areas)
            if len(earlier) < 50_000:
                earlier.append(key)
        rows.append((f"Person {i}", phone, rng.choice(CITIES), rng.choice(PLANS)))
    return rows


def make_csv(path: Path, count: int) -> None:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "phone", "city", "plan"])
        writer.writerows(_rows(count, seed=1))


def make_xlsx(path: Path, count: int) -> None:
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    sheet = book.create_sheet("Contacts")
    sheet.append(["name", "phone", "city", "plan"])
    for name, phone, city, plan in _rows(count, seed=2):
        digits = phone.lstrip("+")
        # Like a real sheet: most numbers typed as numbers, the rest as text.
        value: object = int(digits) if digits.isdigit() and len(digits) >= 10 else phone
        sheet.append([name, value, city, plan])
    book.save(path)


# -- one measured run (in its own process) ---------------------------------------------------


def _ours(database_url: str, path: str, region: str) -> dict[str, Any]:
    from campaigns.db import make_engine
    from campaigns.importing import ImportOptions, import_file

    engine = make_engine(database_url)
    started, cpu_started = time.perf_counter(), time.process_time()
    with engine.begin() as conn:
        summary = import_file(
            conn, path, f"bench-{uuid.uuid4().hex[:8]}", ImportOptions(default_region=region)
        )
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {
        "rows": summary.rows,
        "imported": summary.imported,
        "seconds": seconds,
        "client_cpu_seconds": time.process_time() - cpu_started,
        "peak_rss_mb": _peak_rss_mb(),
    }
    if engine.dialect.name == "postgresql":
        result["copy_alone_rows_per_s"] = _copy_alone(engine, summary.list_id)
    engine.dispose()
    return result


def _copy_alone(engine: Any, list_id: int) -> float:
    """The floor set by the server: the same contact rows, already rendered, COPY'd into a
    fresh list of the same table (then rolled back), in contact rows/s."""
    import io

    from sqlalchemy import text

    columns = "phone, name, attributes, region, time_zones, source_row"
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        buffer = io.BytesIO()
        with (
            driver.cursor() as cursor,
            cursor.copy(
                f"COPY (SELECT 0, {columns} FROM contact WHERE list_id = {list_id}) TO STDOUT"
            ) as copy,
        ):
            for block in copy:
                buffer.write(block)
        other = conn.execute(
            text(
                "INSERT INTO contact_list (name, created_at, updated_at, rows_total, imported, "
                "duplicates, invalid, suppressed_dnc) VALUES (:name, now(), now(), 0, 0, 0, 0, 0) "
                "RETURNING id"
            ),
            {"name": f"copy-{uuid.uuid4().hex[:8]}"},
        ).scalar_one()
        data = buffer.getvalue().replace(b"0\t", f"{other}\t".encode(), 1)
        data = data.replace(b"\n0\t", f"\n{other}\t".encode())
        rows = data.count(b"\n")
        started = time.perf_counter()
        with (
            driver.cursor() as cursor,
            cursor.copy(f"COPY contact (list_id, {columns}) FROM STDIN") as copy,
        ):
            copy.write(data)
        seconds = time.perf_counter() - started
        conn.rollback()
    return rows / seconds


def _baseline(database_url: str, path: str, region: str, limit: int | None) -> dict[str, Any]:
    import pandas as pd
    import phonenumbers
    from sqlalchemy import text

    from campaigns.db import make_engine

    started = time.perf_counter()
    if path.endswith(".xlsx"):
        frame = pd.read_excel(path, dtype=str, engine="openpyxl", nrows=limit)
    else:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, nrows=limit)
    e164: list[str | None] = []
    for raw in frame["phone"]:
        try:
            number = phonenumbers.parse(str(raw), region)
        except phonenumbers.NumberParseException:
            e164.append(None)
            continue
        if phonenumbers.is_valid_number(number):
            e164.append(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
        else:
            e164.append(None)
    frame["e164"] = e164
    frame = frame.dropna(subset=["e164"]).drop_duplicates(subset=["e164"])
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS baseline_contact"))
    frame.to_sql(
        "baseline_contact", engine, if_exists="append", index=False, method="multi", chunksize=1000
    )
    seconds = time.perf_counter() - started
    engine.dispose()
    return {"rows": len(e164), "imported": len(frame), "seconds": seconds}


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it does not inherit the parent's
    peak across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one(kind: str, database_url: str, path: str, limit: int | None) -> None:
    result = (
        _ours(database_url, path, "US")
        if kind == "ours"
        else _baseline(database_url, path, "US", limit)
    )
    result.setdefault("peak_rss_mb", _peak_rss_mb())
    print(json.dumps(result))


def measure(kind: str, database_url: str, path: Path, limit: int | None = None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--one", kind, database_url, str(path)]
    if limit is not None:
        command.append(str(limit))
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["rows_per_s"] = result["rows"] / result["seconds"]
    return result


# -- databases -----------------------------------------------------------------------------


def _sqlite(directory: Path) -> str:
    from campaigns import migrate

    url = f"sqlite:///{directory / 'bench.db'}"
    migrate.upgrade(url)
    return url


# -- report --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv-rows", type=int, default=1_000_000)
    parser.add_argument("--xlsx-rows", type=int, default=100_000)
    parser.add_argument("--baseline-rows", type=int, default=100_000)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        csv_path, xlsx_path = directory / "contacts.csv", directory / "contacts.xlsx"
        print(f"generating {args.csv_rows:,} CSV rows and {args.xlsx_rows:,} xlsx rows ...")
        make_csv(csv_path, args.csv_rows)
        make_xlsx(xlsx_path, args.xlsx_rows)
        load_before = os.getloadavg()
        pg_url, drop = scratch_postgres(POSTGRES_URL, "bench_import")
        results: list[tuple[str, str, str, dict[str, Any]]] = []
        try:
            for backend, url in (("PostgreSQL", pg_url), ("SQLite", _sqlite(directory))):
                for label, path, limit in (
                    (f"{args.csv_rows:,}-row CSV", csv_path, args.baseline_rows),
                    (f"{args.xlsx_rows:,}-row .xlsx", xlsx_path, None),
                ):
                    for kind in ("ours", "baseline"):
                        result = measure(kind, url, path, limit)
                        results.append((backend, label, kind, result))
                        print(backend, label, kind, json.dumps(result))
        finally:
            drop()
        load_after = os.getloadavg()

    lines = [
        "## Contact import (`campaign import`)",
        "",
        f"Machine: {machine()}. Load average (1 min) {load_before[0]:.1f} before the run and",
        f"{load_after[0]:.1f} after it (the benchmark's own work counts); the importer and the",
        "baseline ran under the same conditions.",
        "",
        "Command: `python bench/import_bench.py` (generated lists: US numbers in six written",
        "forms plus 5 % UK numbers, ~2 % invalid, ~3 % duplicates written another way; a name",
        "and two attribute columns; the .xlsx holds most numbers as numeric cells).",
        "Each figure is one run in a fresh process; rows/s is end to end (read, validate,",
        "deduplicate, write, commit). The baseline (`pandas.read_csv`/`read_excel(engine=",
        '"openpyxl")` + `phonenumbers` parse/validate/format per row + `to_sql(method="multi")`)',
        f"reads the first {args.baseline_rows:,} CSV rows only, to keep the run short; its",
        "rows/s is for those rows. The baseline stores only the E.164 number and columns: no",
        "region, time zone, rejects or DNC check, so it does less work than the importer.",
        "",
        "How the importer gets there: pyarrow reads the CSV (calamine the workbook) into",
        "columns; each distinct phone text is normalised once, column-wise, with",
        "phonenumbers' own answer (shape check and punctuation removal on the bytes with",
        "numpy, the fast path's rules and a memo of phonenumbers' verdicts per decisive prefix",
        "as pyarrow kernels; only memo misses and other shapes go one by one); duplicates,",
        "names and the attributes JSON are found and built column-wise; into a list that is",
        "empty at the start, rows are COPY'd (CSV) straight into `contact` by a writer thread",
        "while the next block is validated, each block sorted by phone (so that the unique",
        "index takes them in key order) with ids given in the file's order (a list that",
        "already holds contacts goes through a",
        "staging table and INSERT ... ON CONFLICT DO NOTHING). `contact.list_id` is checked by",
        "a statement-level trigger (migration 0002) instead of a per-row foreign key. A file the",
        "columnar reader would read differently from the csv module (ragged rows, unterminated",
        "quotes, undecodable bytes) is read again row by row.",
        "",
        '"COPY alone" is the server\'s floor on this machine: the same contact rows, already',
        "rendered, COPY'd in the same order into a fresh list of the same table (the list",
        "trigger, primary key, unique (list_id, phone), jsonb), in imported rows/s.",
        "",
        "| backend | file | importer rows/s | importer peak RSS | COPY alone | baseline rows/s | baseline peak RSS | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(b, f, k): r for b, f, k, r in results}
    for backend, label, kind, result in results:
        if kind != "ours":
            continue
        base = by_key[(backend, label, "baseline")]
        floor = result.get("copy_alone_rows_per_s")
        lines.append(
            f"| {backend} | {label} | {result['rows_per_s']:,.0f} | "
            f"{result['peak_rss_mb']:,.0f} MB | "
            f"{'—' if floor is None else f'{floor:,.0f}'} | {base['rows_per_s']:,.0f} "
            f"({base['rows']:,} rows) | {base['peak_rss_mb']:,.0f} MB | "
            f"{result['rows_per_s'] / base['rows_per_s']:.1f}x |"
        )
    text = "\n".join(lines)
    print(text)
    if not args.no_doc:
        write_section(SECTION, text)


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "--one":
        _one(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else None)
    else:
        main()
