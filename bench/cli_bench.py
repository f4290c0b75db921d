"""Command benchmark: `campaign import` timed whole, from process start to exit.

What a user waits for at the prompt: the interpreter's start, the modules the command
loads, the schema check, the import, the summary. Each command runs in a fresh process,
`--runs` times, alternating with the baseline a user would otherwise run: a script doing
`pandas.read_csv`/`read_excel(engine="openpyxl")` + `phonenumbers` + `to_sql`
(`bench/import_bench.py --one baseline`, the same code as that benchmark's baseline, timed
here as a whole process too). Figures are the median and the range of the runs.

    python bench/cli_bench.py                 # writes its section of docs/benchmarks.md
    python bench/cli_bench.py --runs 3 --no-doc

Files: sample_lists/clean.csv (20 rows) into a new SQLite file, and a generated
100,000-row .xlsx (bench/import_bench.py's generator) into a scratch PostgreSQL database
(TEST_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchdoc import code_version, load_note, machine, scratch_postgres, write_section
from import_bench import make_xlsx

ROOT = Path(__file__).resolve().parent.parent
SECTION = "cli"
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _timed(command: list[str], database_url: str) -> float:
    env = {**os.environ, "DATABASE_URL": database_url}
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)
    return time.perf_counter() - started


def _ours(path: Path, list_name: str) -> list[str]:
    return [sys.executable, "-m", "campaigns.cli", "import", str(path), "--list", list_name]


def _baseline(path: Path, database_url: str) -> list[str]:
    script = str(ROOT / "bench" / "import_bench.py")
    return [sys.executable, script, "--one", "baseline", database_url, str(path)]


def _summary(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} ({min(times):.2f}-{max(times):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--xlsx-rows", type=int, default=100_000)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()

    rows: list[tuple[str, str, list[float], list[float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        xlsx = directory / "contacts.xlsx"
        make_xlsx(xlsx, args.xlsx_rows)
        sqlite_url = f"sqlite:///{directory / 'cli.db'}"
        pg_url, drop = scratch_postgres(POSTGRES_URL, "bench_cli")
        help_times: list[float] = []
        try:
            subprocess.run(
                [sys.executable, "-m", "campaigns.cli", "db", "upgrade"],
                check=True,
                capture_output=True,
                env={**os.environ, "DATABASE_URL": sqlite_url},
            )
            for label, backend, path, url in (
                (
                    "sample_lists/clean.csv (20 rows)",
                    "SQLite",
                    ROOT / "sample_lists/clean.csv",
                    sqlite_url,
                ),
                (f"{args.xlsx_rows:,}-row .xlsx", "PostgreSQL", xlsx, pg_url),
            ):
                ours: list[float] = []
                base: list[float] = []
                for run in range(args.runs):
                    ours.append(_timed(_ours(path, f"cli-{len(rows)}-{run}"), url))
                    base.append(_timed(_baseline(path, url), url))
                    print(label, f"ours {ours[-1]:.2f} s, baseline {base[-1]:.2f} s", flush=True)
                rows.append((label, backend, ours, base))
            for _ in range(args.runs):
                help_times.append(
                    _timed([sys.executable, "-m", "campaigns.cli", "--help"], sqlite_url)
                )
        finally:
            drop()

    lines = [
        "## Commands timed whole: `campaign import` from process start to exit",
        "",
        f"Machine: {machine()}; {load_note()}. Code: {code_version()}.",
        "",
        f"Command: `python bench/cli_bench.py` ({args.runs} runs of each, alternating with the"
        " baseline; median and range, in seconds). `campaign import FILE --list NAME`",
        "run as `python -m campaigns.cli` (what the `campaign` script runs); the baseline is",
        "the import benchmark's pandas + phonenumbers + `to_sql` script, also timed as a",
        "whole process (it stores less: no region, time zones, rejects or DNC check).",
        "",
        "| file | database | `campaign import`, s | baseline script, s |",
        "|---|---|---:|---:|",
    ]
    for label, backend, ours, base in rows:
        lines.append(f"| {label} | {backend} | {_summary(ours)} | {_summary(base)} |")
    lines += ["", f"`campaign --help`: {_summary(help_times)} s."]
    text = "\n".join(lines)
    print(text)
    if not args.no_doc:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
