"""`campaign demo`, the README's first command, run as a user runs it: a real process.

On the SQLite run of the suite it uses its embedded defaults (a fresh SQLite file in the
working directory, a private redis-server); on the PostgreSQL run, DATABASE_URL points it
at the test database. Either way it must finish the campaign, write its two files, and
leave nothing running.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import BACKEND


def private_redis_servers() -> list[str]:
    found = subprocess.run(
        ["pgrep", "-f", "campaigns-redis-"], capture_output=True, text=True, check=False
    )
    return found.stdout.split()


def test_the_demo_runs_a_poll_campaign_end_to_end(database_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    if BACKEND == "postgresql":
        env["DATABASE_URL"] = database_url
    env["COLUMNS"] = "160"
    before = private_redis_servers()
    done = subprocess.run(
        [sys.executable, "-m", "campaigns.cli", "demo", "--speed", "20", "--out-dir", "out"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "demo complete" in out
    for stage in ("Recipients", "Answered", "Poll started", "Poll complete", "Suppressed"):
        assert stage in out

    with (tmp_path / "out" / "demo-results.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 240  # one row per recipient of sample_lists/demo.csv
    assert {r["phone"] for r in rows} >= {"+12125550100", "+13125550101"}
    suppressed = [r for r in rows if r["phone"] == "+13125550101"]
    assert suppressed[0]["status"] == "suppressed"
    assert int(suppressed[0]["attempts"]) == 0
    finals = {r["status"] for r in rows}
    assert finals <= {"done", "failed", "suppressed"}  # the campaign ran to its end
    assert any(r["rating_label"] for r in rows)  # poll answers were recorded
    assert any(r["amd_result"] == "machine" for r in rows)
    assert max(int(r["attempts"]) for r in rows) <= 3  # max_attempts of demo_poll.toml

    html = (tmp_path / "out" / "demo-report.html").read_text(encoding="utf-8")
    assert "Demo satisfaction poll" in html
    assert "<svg" in html
    if BACKEND == "sqlite":
        assert (tmp_path / "campaigns-demo.db").exists()
    assert private_redis_servers() == before  # its private Redis is gone
