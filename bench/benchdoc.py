"""What the benchmarks share: what each writes into docs/benchmarks.md (the machine, the
load, the commit, its own section between `<!-- section:NAME -->` markers, the rest left as
it is), and a scratch PostgreSQL database to measure in."""

from __future__ import annotations

import os
import platform
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"


def machine() -> str:
    """Cores, CPU model, RAM and Python version of this machine."""
    cpu = platform.processor() or "unknown CPU"
    ram = "RAM unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        ram = f"{mem_kb / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {ram}, Python {platform.python_version()}"


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average at the end {one:.1f} (1 min), {five:.1f} (5 min)"


def code_version() -> str:
    """The commit the measured code is at (and whether the work tree differs from it)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "campaigns", "workers"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"`{head}`" + (" (with uncommitted changes in campaigns/ or workers/)" if dirty else "")


def publish(section: str, body: str, *, no_doc: bool) -> None:
    """Print a benchmark's section, and write it into docs/benchmarks.md unless `no_doc`."""
    print(body)
    if not no_doc:
        write_section(section, body)


def write_section(section: str, body: str) -> None:
    """Replace only this section of docs/benchmarks.md (re-read right before writing)."""
    start, end = f"<!-- section:{section} -->", f"<!-- /section:{section} -->"
    block = f"{start}\n{body.rstrip()}\n{end}\n"
    current = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
    if start in current and end in current:
        before, rest = current.split(start, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        current = before + block + ("\n" + after if after else "")
    else:
        current = current.rstrip() + "\n\n" + block
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(current)


def scratch_postgres(server_url: str, prefix: str) -> tuple[str, Callable[[], None]]:
    """A new database on `server_url`, migrated to head: (its URL, a function that drops it)."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from campaigns import migrate
    from campaigns.db import make_engine

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = make_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop
