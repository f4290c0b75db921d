"""`campaign report` and `campaign export` through the real CLI on a hand-built campaign.

The factory writes a small but complete campaign with plain SQL inserts into the migrated
schema: recipients in every status, attempts with every kind of outcome and AMD result, and
valid, invalid and silent answers, with contact data built to try formula injection. The
expected figures below are worked out by hand from that data.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import insert

from campaigns.cli import main
from campaigns.db import make_engine
from campaigns.definition import definition_to_json, parse_definition
from campaigns.models import (
    Answer,
    Batch,
    CallAttempt,
    Campaign,
    Contact,
    ContactList,
    Recipient,
)

ROOT = Path(__file__).resolve().parents[2]
BASE = datetime(2024, 10, 1, 10, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return BASE + timedelta(minutes=minutes)


def z(minutes: float) -> str:
    return at(minutes).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Person:
    phone: str
    name: str
    attributes: dict[str, str]
    status: str
    attempts: int
    last_outcome: str | None
    final_outcome: str | None


# (phone, name, attributes, status, attempts, last outcome, final outcome)
PEOPLE = [
    Person(
        "+12025550101",
        "Ada Lovelace",
        {"city": "London", "plan": "gold"},
        "done",
        1,
        "completed",
        "completed",
    ),
    Person(
        "+12025550102",
        '=HYPERLINK("http://evil.example","click")',
        {"city": "+cmd|' /C calc'!A0", "plan": "-5"},
        "done",
        2,
        "completed",
        "completed",
    ),
    Person(
        "+12025550103",
        "@SUM(A1)",
        {"city": "\tTabbed", "plan": "\rCarriage"},
        "done",
        2,
        "partial",
        "partial",
    ),
    Person(
        "+12025550104",
        "Zoë Ünicode",
        {"city": "Zürich", "plan": "silver", "notes": "first with notes"},
        "done",
        1,
        "voicemail",
        "voicemail",
    ),
    Person(
        "+12025550105",
        "Person 5",
        {"city": "a=b+c", "plan": "basic"},
        "waiting_retry",
        1,
        "busy",
        None,
    ),
    Person(
        "+12025550106",
        "Person 6",
        {"city": "Springfield", "plan": "basic"},
        "failed",
        1,
        "invalid_number",
        "invalid_number",
    ),
    Person(
        "+12025550107",
        "Person 7",
        {"city": "Springfield", "plan": "basic"},
        "suppressed",
        0,
        None,
        "dnc",
    ),
    Person(
        "+12025550108",
        "Person 8",
        {"city": "Springfield", "plan": "basic"},
        "pending",
        0,
        None,
        None,
    ),
    Person(
        "+12025550109",
        "Person 9",
        {"city": "Springfield", "plan": "basic"},
        "in_flight",
        1,
        None,
        None,
    ),
    Person(
        "+12025550110",
        "Person 10",
        {"city": "Springfield", "plan": "basic"},
        "done",
        1,
        "opted_out",
        "opted_out",
    ),
    Person(
        "+12025550111",
        "Person 11",
        {"city": "Springfield", "plan": "basic"},
        "cancelled",
        0,
        None,
        "cancelled",
    ),
    Person(
        "+12025550112",
        'O\'Brien, "Pat"',
        {"city": "Springfield", "plan": "basic", "notes": "two\nlines"},
        "done",
        1,
        "completed",
        "completed",
    ),
    Person(
        "+12025550113",
        "Person 13",
        {"city": "Springfield", "plan": "basic"},
        "failed",
        0,
        None,
        "no_window",
    ),
    Person(
        "+1 202 555 0199",
        "Person 14",
        {"city": "Springfield", "plan": "basic"},
        "pending",
        0,
        None,
        None,
    ),
]

# (person index, attempt_no, voice_id, started, answered, ended (minutes after BASE),
#  amd_result, disconnect_reason, outcome, state)
ATTEMPTS: list[
    tuple[int, int, str, float, float | None, float | None, str | None, str | None, str | None, str]
] = [
    (0, 1, "v-1-1", 0, 0.5, 2, "human", "normal", "completed", "ended"),
    (1, 1, "v-2-1", 1, None, 2, None, "no_answer", "no_answer", "ended"),
    (1, 2, "v-2-2", 60, 60.5, 63, "human", "normal", "completed", "ended"),
    (2, 1, "v-3-1", 2, 2.5, 4, "human", "normal", "partial", "ended"),
    (2, 2, "v-3-2", 62, 62.5, 64, "human", "normal", "partial", "ended"),
    (3, 1, "v-4-1", 3, 3.5, 4, "machine", "normal", "voicemail", "ended"),
    (4, 1, "v-5-1", 5, None, 6, None, "busy", "busy", "ended"),
    (5, 1, "v-6-1", 6, None, 6, None, "invalid_number", "invalid_number", "ended"),
    (8, 1, "=evil-voice", 100, None, None, None, None, None, "ringing"),
    (9, 1, "v-10-1", 10, 10.5, 11, "human", "normal", "opted_out", "ended"),
    (11, 1, "v-12-1", 20, 20.5, 23, None, "normal", "completed", "ended"),
]

# (person index, attempt_no, question, input_kind, raw, confidence, label, valid, received)
ANSWERS: list[tuple[int, int, str, str, str | None, float | None, str | None, bool, float]] = [
    (0, 1, "rating", "dtmf", "5", None, "excellent", True, 1),
    (0, 1, "recommend", "asr", "yeah", 0.91, "yes", True, 1.5),
    (1, 2, "rating", "dtmf", "4", None, "good", True, 61),
    (1, 2, "recommend", "asr", "no", 0.88, "no", True, 62),
    (2, 1, "rating", "dtmf", "3", None, "fair", True, 3),
    (2, 2, "rating", "dtmf", "7", None, None, False, 63),
    (2, 2, "recommend", "none", None, None, None, False, 63.5),
    (11, 1, "rating", "dtmf", "5", None, "excellent", True, 21),
    (11, 1, "recommend", "asr", "=1+1", 0.4, None, False, 22),
]


def build_campaign(database_url: str) -> int:
    """The campaign above, written with plain SQL inserts; returns its id."""
    text = (ROOT / "sample_lists" / "poll.toml").read_text(encoding="utf-8")
    definition = definition_to_json(parse_definition(text, source="poll.toml"))
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            list_id = conn.execute(
                insert(ContactList)
                .values(
                    name="clean",
                    rows_total=len(PEOPLE),
                    imported=len(PEOPLE),
                    created_at=BASE,
                    updated_at=BASE,
                )
                .returning(ContactList.id)
            ).scalar_one()
            campaign_id = conn.execute(
                insert(Campaign)
                .values(
                    name="Clinic satisfaction poll",
                    status="running",
                    list_id=list_id,
                    caller_id="+12025550100",
                    definition=definition,
                    recipients_total=len(PEOPLE),
                    created_at=BASE - timedelta(hours=1),
                    started_at=BASE - timedelta(minutes=5),
                    updated_at=BASE,
                )
                .returning(Campaign.id)
            ).scalar_one()
            conn.execute(
                insert(Batch).values(
                    id="batch-1",
                    campaign_id=campaign_id,
                    size=9,
                    state="submitted",
                    created_at=BASE,
                )
            )
            recipient_ids = []
            for i, p in enumerate(PEOPLE):
                contact_id = conn.execute(
                    insert(Contact)
                    .values(
                        list_id=list_id,
                        phone=p.phone,
                        name=p.name,
                        attributes=p.attributes,
                        region="US",
                        time_zones="America/New_York",
                        source_row=i + 2,
                    )
                    .returning(Contact.id)
                ).scalar_one()
                recipient_ids.append(
                    conn.execute(
                        insert(Recipient)
                        .values(
                            campaign_id=campaign_id,
                            contact_id=contact_id,
                            phone=p.phone,
                            time_zones="America/New_York",
                            name=p.name,
                            attributes=p.attributes,
                            status=p.status,
                            attempts=p.attempts,
                            last_outcome=p.last_outcome,
                            final_outcome=p.final_outcome,
                            updated_at=BASE,
                        )
                        .returning(Recipient.id)
                    ).scalar_one()
                )
            attempt_ids: dict[tuple[int, int], int] = {}
            for who, no, voice, start, answered, ended, amd, reason, outcome, state in ATTEMPTS:
                attempt_ids[who, no] = conn.execute(
                    insert(CallAttempt)
                    .values(
                        recipient_id=recipient_ids[who],
                        campaign_id=campaign_id,
                        batch_id="batch-1",
                        attempt_no=no,
                        phone=PEOPLE[who].phone,
                        voice_id=voice,
                        state=state,
                        amd_result=amd,
                        disconnect_reason=reason,
                        outcome=outcome,
                        created_at=at(start),
                        started_at=at(start),
                        answered_at=None if answered is None else at(answered),
                        ended_at=None if ended is None else at(ended),
                        settled_at=None if ended is None else at(ended),
                    )
                    .returning(CallAttempt.id)
                ).scalar_one()
            for who, no, key, kind, raw, conf, label, valid, received in ANSWERS:
                conn.execute(
                    insert(Answer).values(
                        attempt_id=attempt_ids[who, no],
                        recipient_id=recipient_ids[who],
                        question_key=key,
                        input_kind=kind,
                        raw=raw,
                        confidence=conf,
                        label=label,
                        valid=valid,
                        received_at=at(received),
                    )
                )
        return int(campaign_id)
    finally:
        engine.dispose()


@pytest.fixture
def campaign(database_url: str) -> int:
    return build_campaign(database_url)


def run(database_url: str, *args: str) -> Result:
    runner = CliRunner()
    result = runner.invoke(
        main, list(args), env={"DATABASE_URL": database_url}, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output + result.stderr
    return result


# --------------------------------------------------------------------------- report


def test_report_json_has_exact_figures(database_url: str, campaign: int) -> None:
    data = json.loads(run(database_url, "report", str(campaign), "--json").stdout)

    assert data["report_version"] == 1
    assert data["campaign"] | {} == data["campaign"]
    assert data["campaign"]["name"] == "Clinic satisfaction poll"
    assert data["campaign"]["list"] == "clean"
    assert data["campaign"]["started_at"] == z(-5)
    assert data["campaign"]["first_attempt_at"] == z(0)
    assert data["campaign"]["last_attempt_ended_at"] == z(64)
    funnel = {s["stage"]: (s["count"], s["of"], s["share_of_parent"]) for s in data["funnel"]}
    assert funnel == {
        "recipients": (14, None, None),
        "dialled": (9, "recipients", round(9 / 14, 4)),
        "answered": (6, "dialled", round(6 / 9, 4)),
        "human": (5, "answered", round(5 / 6, 4)),
        "machine": (1, "answered", round(1 / 6, 4)),
        "poll_started": (4, "human", 0.8),
        "poll_complete": (3, "poll_started", 0.75),
        "suppressed": (1, "recipients", round(1 / 14, 4)),
        "failed": (2, "recipients", round(2 / 14, 4)),
    }
    assert [s["stage"] for s in data["funnel"]][:3] == ["recipients", "dialled", "answered"]
    assert data["recipients_by_status"] == {
        "cancelled": 1,
        "done": 6,
        "failed": 2,
        "in_flight": 1,
        "pending": 2,
        "suppressed": 1,
        "waiting_retry": 1,
    }
    assert data["final_outcomes"] == {
        "completed": 3,
        "partial": 1,
        "voicemail": 1,
        "opted_out": 1,
        "invalid_number": 1,
        "cancelled": 1,
        "dnc": 1,
        "no_window": 1,
    }
    assert data["attempts"] == {
        "total": 11,
        "open": 1,
        "by_attempt_no": [
            {
                "attempt_no": 1,
                "total": 9,
                "outcomes": {
                    "completed": 2,
                    "partial": 1,
                    "voicemail": 1,
                    "opted_out": 1,
                    "no_answer": 1,
                    "busy": 1,
                    "invalid_number": 1,
                    "open": 1,
                },
            },
            {"attempt_no": 2, "total": 2, "outcomes": {"completed": 1, "partial": 1}},
        ],
    }
    assert data["amd"] == {"human": 5, "machine": 1, "none": 1}
    rating, recommend = data["questions"]
    assert rating["key"] == "rating"
    assert (rating["asked"], rating["valid"], rating["invalid"], rating["no_answer"]) == (
        4,
        4,
        0,
        0,
    )
    # Recipient 3 answered "fair" in attempt 1 and gave an invalid key in attempt 2: the
    # valid answer counts.
    assert [(a["label"], a["count"], a["share"]) for a in rating["answers"]] == [
        ("very poor", 0, 0.0),
        ("poor", 0, 0.0),
        ("fair", 1, 0.25),
        ("good", 1, 0.25),
        ("excellent", 2, 0.5),
    ]
    assert recommend["kind"] == "asr"
    assert (recommend["asked"], recommend["invalid"], recommend["no_answer"]) == (4, 1, 1)
    assert recommend["invalid_share"] == 0.25
    assert [(a["label"], a["count"]) for a in recommend["answers"]] == [("no", 1), ("yes", 1)]
    assert data["settings"]["pacing"] == {
        "calls_per_second": 10.0,
        "max_concurrent": 100,
        "batch_size": 50,
    }
    assert data["settings"]["retry"]["delays"] == ["30m", "4h"]
    assert data["settings"]["retry"]["max_attempts"] == 3
    assert data["settings"]["window"] == {
        "days": ["mon", "tue", "wed", "thu", "fri", "sat"],
        "start": "10:00",
        "end": "19:30",
        "timezone": "recipient",
    }
    timeline = data["timeline"]
    assert timeline["bucket_seconds"] == 300
    assert timeline["buckets"][0]["start"] == z(0)
    assert timeline["buckets"][-1]["start"] == z(60)
    assert len(timeline["buckets"]) == 13  # 10:00 .. 11:00, empty buckets included
    ended = sum(sum(b["outcomes"].values()) for b in timeline["buckets"])
    assert ended == 10
    assert timeline["buckets"][0]["outcomes"] == {
        "completed": 1,
        "partial": 1,
        "voicemail": 1,
        "no_answer": 1,
    }


def test_report_terminal_tables(database_url: str, campaign: int) -> None:
    out = run(database_url, "report", str(campaign)).stdout
    assert "Clinic satisfaction poll" in out
    assert re.search(r"Poll complete\s*│\s*3\s*│\s*21\.4%\s*│\s*75\.0% of poll_started", out)
    assert re.search(r"excellent\s*│\s*2\s*│\s*50\.0%", out)
    assert "10 calls/s" in out
    assert "30m, 4h" in out
    assert "mon,tue,wed,thu,fri,sat 10:00-19:30" in out


def test_report_of_a_missing_campaign_is_one_clear_error(database_url: str) -> None:
    result = CliRunner().invoke(main, ["report", "999"], env={"DATABASE_URL": database_url})
    assert result.exit_code == 1
    assert "campaign 999 does not exist" in result.stderr


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_args(profile: str) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1200,2000",
    ]


@pytest.fixture
def browser() -> str:
    found = chromium()
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (CI=true): apt-get install -y chromium")
        pytest.skip("chromium is not installed: apt-get install -y chromium to run this test")
    return found


def test_report_html_renders_in_a_real_browser(
    database_url: str, campaign: int, tmp_path: Path, browser: str
) -> None:
    page = tmp_path / "report.html"
    run(database_url, "report", str(campaign), "--html", str(page))
    source = page.read_text(encoding="utf-8")
    assert "http://" not in source.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script" not in source
    # Contact-provided text never reaches the page unescaped (names are not in the report,
    # but the campaign and question texts are).
    assert "Clinic satisfaction poll" in source

    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [browser, *browser_args(profile), "--dump-dom", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=90,
            check=True,
        ).stdout
    assert dom.count("<svg") == 4  # funnel, timeline, two questions
    assert 'class="funnel"' in dom
    assert 'class="timeline"' in dom
    assert 'class="question question-rating"' in dom
    assert "Poll complete" in dom
    assert "75.0% of poll_started" in dom
    assert re.search(r"<title>excellent: 2</title>", dom)
    bars = re.findall(r'<rect class="bar"[^>]* width="([0-9.]+)"', dom)
    assert len(bars) > 20
    assert any(float(w) > 100 for w in bars)

    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>", encoding="utf-8")
    shots = {}
    for name, target in (("report", page), ("blank", blank)):
        shot = tmp_path / f"{name}.png"
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [browser, *browser_args(profile), f"--screenshot={shot}", target.as_uri()],
                capture_output=True,
                timeout=90,
                check=True,
            )
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        shots[name] = shot.stat().st_size
    assert shots["report"] > 5 * shots["blank"], shots
    keep = os.environ.get("REPORT_SCREENSHOT")
    if keep:
        shutil.copyfile(tmp_path / "report.png", keep)


# --------------------------------------------------------------------------- export


def read_csv(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def export(database_url: str, campaign: int, tmp_path: Path, *flags: str) -> list[list[str]]:
    target = tmp_path / "out.csv"
    result = run(database_url, "export", str(campaign), "-o", str(target), *flags)
    assert re.fullmatch(r"exported \d+ \w+ rows to .* in [0-9.]+ s.*\n", result.stderr)
    return read_csv(target.read_bytes())


RECIPIENT_HEADER = [
    "phone",
    "name",
    "city",
    "plan",
    "notes",
    "status",
    "outcome",
    "attempts",
    "amd_result",
    "first_attempt_at",
    "last_attempt_at",
    "rating_label",
    "rating_raw",
    "recommend_label",
    "recommend_raw",
]


def test_export_one_row_per_recipient(database_url: str, campaign: int, tmp_path: Path) -> None:
    rows = export(database_url, campaign, tmp_path)
    assert rows[0] == RECIPIENT_HEADER
    plain = ["Springfield", "basic", ""]
    assert rows[1:] == [
        [
            "+12025550101",
            "Ada Lovelace",
            "London",
            "gold",
            "",
            "done",
            "completed",
            "1",
            "human",
            z(0),
            z(2),
            "excellent",
            "5",
            "yes",
            "yeah",
        ],
        [
            "+12025550102",
            '\'=HYPERLINK("http://evil.example","click")',
            "'+cmd|' /C calc'!A0",
            "'-5",
            "",
            "done",
            "completed",
            "2",
            "human",
            z(1),
            z(63),
            "good",
            "4",
            "no",
            "no",
        ],
        [
            "+12025550103",
            "'@SUM(A1)",
            "'\tTabbed",
            "'\rCarriage",
            "",
            "done",
            "partial",
            "2",
            "human",
            z(2),
            z(64),
            "fair",
            "3",
            "",
            "",
        ],
        [
            "+12025550104",
            "Zoë Ünicode",
            "Zürich",
            "silver",
            "first with notes",
            "done",
            "voicemail",
            "1",
            "machine",
            z(3),
            z(4),
            "",
            "",
            "",
            "",
        ],
        [
            "+12025550105",
            "Person 5",
            "a=b+c",
            "basic",
            "",
            "waiting_retry",
            "busy",
            "1",
            "",
            z(5),
            z(6),
            "",
            "",
            "",
            "",
        ],
        [
            "+12025550106",
            "Person 6",
            *plain,
            "failed",
            "invalid_number",
            "1",
            "",
            z(6),
            z(6),
            "",
            "",
            "",
            "",
        ],
        ["+12025550107", "Person 7", *plain, "suppressed", "dnc", "0", "", "", "", "", "", "", ""],
        ["+12025550108", "Person 8", *plain, "pending", "", "0", "", "", "", "", "", "", ""],
        [
            "+12025550109",
            "Person 9",
            *plain,
            "in_flight",
            "",
            "1",
            "",
            z(100),
            z(100),
            "",
            "",
            "",
            "",
        ],
        [
            "+12025550110",
            "Person 10",
            *plain,
            "done",
            "opted_out",
            "1",
            "human",
            z(10),
            z(11),
            "",
            "",
            "",
            "",
        ],
        [
            "+12025550111",
            "Person 11",
            *plain,
            "cancelled",
            "cancelled",
            "0",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
        ],
        [
            "+12025550112",
            'O\'Brien, "Pat"',
            "Springfield",
            "basic",
            "two\nlines",
            "done",
            "completed",
            "1",
            "",
            z(20),
            z(23),
            "excellent",
            "5",
            "",
            "'=1+1",
        ],
        [
            "+12025550113",
            "Person 13",
            *plain,
            "failed",
            "no_window",
            "0",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
        ],
        ["'+1 202 555 0199", "Person 14", *plain, "pending", "", "0", "", "", "", "", "", "", ""],
    ]


def test_export_attempts(database_url: str, campaign: int, tmp_path: Path) -> None:
    rows = export(database_url, campaign, tmp_path, "--attempts")
    assert rows[0] == [
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
    ]
    assert len(rows) == 1 + len(ATTEMPTS)
    assert rows[1] == [
        "+12025550101",
        "1",
        "v-1-1",
        "batch-1",
        "ended",
        "human",
        "normal",
        "completed",
        z(0),
        z(0.5),
        z(2),
    ]
    assert rows[2][:3] == ["+12025550102", "1", "v-2-1"]
    assert rows[2][5:] == ["", "no_answer", "no_answer", z(1), "", z(2)]
    open_attempt = next(r for r in rows if r[0] == "+12025550109")
    assert open_attempt == [
        "+12025550109",
        "1",
        "'=evil-voice",
        "batch-1",
        "ringing",
        "",
        "",
        "",
        z(100),
        "",
        "",
    ]


def test_export_answers_long_format(database_url: str, campaign: int, tmp_path: Path) -> None:
    rows = export(database_url, campaign, tmp_path, "--answers")
    assert rows == [
        [
            "phone",
            "attempt_no",
            "question_key",
            "input_kind",
            "raw",
            "confidence",
            "label",
            "valid",
            "received_at",
        ],
        ["+12025550101", "1", "rating", "dtmf", "5", "", "excellent", "true", z(1)],
        ["+12025550101", "1", "recommend", "asr", "yeah", "0.91", "yes", "true", z(1.5)],
        ["+12025550102", "2", "rating", "dtmf", "4", "", "good", "true", z(61)],
        ["+12025550102", "2", "recommend", "asr", "no", "0.88", "no", "true", z(62)],
        ["+12025550103", "1", "rating", "dtmf", "3", "", "fair", "true", z(3)],
        ["+12025550103", "2", "rating", "dtmf", "7", "", "", "false", z(63)],
        ["+12025550103", "2", "recommend", "none", "", "", "", "false", z(63.5)],
        ["+12025550112", "1", "rating", "dtmf", "5", "", "excellent", "true", z(21)],
        ["+12025550112", "1", "recommend", "asr", "'=1+1", "0.4", "", "false", z(22)],
    ]


def test_export_excel_starts_with_a_bom_and_plain_does_not(
    database_url: str, campaign: int, tmp_path: Path
) -> None:
    excel, plain = tmp_path / "excel.csv", tmp_path / "plain.csv"
    run(database_url, "export", str(campaign), "-o", str(excel), "--excel")
    run(database_url, "export", str(campaign), "-o", str(plain))
    assert excel.read_bytes().startswith(b"\xef\xbb\xbfphone,name,")
    assert plain.read_bytes().startswith(b"phone,name,")
    assert excel.read_bytes()[3:] == plain.read_bytes()
    assert "Zürich" in plain.read_text(encoding="utf-8")


def test_export_to_stdout(database_url: str, campaign: int) -> None:
    result = run(database_url, "export", str(campaign), "-o", "-", "--answers")
    rows = read_csv(result.stdout_bytes)
    assert len(rows) == 1 + len(ANSWERS)
    assert rows[1][0] == "+12025550101"
    assert "exported 9 answers rows to standard output" in result.stderr


def test_export_of_a_missing_campaign_writes_no_file(database_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(
        main, ["export", "42", "-o", str(out / "results.csv")], env={"DATABASE_URL": database_url}
    )
    assert result.exit_code == 1
    assert "campaign 42 does not exist" in result.stderr
    assert list(out.iterdir()) == []


def test_export_to_a_directory_is_one_line_and_writes_nothing(
    database_url: str, empty_campaign: int, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    before = sorted(tmp_path.iterdir())
    result = CliRunner().invoke(
        main, ["export", str(empty_campaign), "-o", str(out)], env={"DATABASE_URL": database_url}
    )
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: {out}: is a directory: name the CSV file to write"
    ]
    assert sorted(tmp_path.iterdir()) == before  # no partial file beside it
    assert list(out.iterdir()) == []


@pytest.fixture
def empty_campaign(database_url: str) -> Iterator[int]:
    """A campaign with a list but no recipients yet (a draft)."""
    text = (ROOT / "sample_lists" / "reminder.toml").read_text(encoding="utf-8")
    definition: dict[str, Any] = definition_to_json(parse_definition(text))
    engine = make_engine(database_url)
    with engine.begin() as conn:
        list_id = conn.execute(
            insert(ContactList).values(name=definition["list_name"]).returning(ContactList.id)
        ).scalar_one()
        campaign_id = conn.execute(
            insert(Campaign)
            .values(
                name="draft",
                status="draft",
                list_id=list_id,
                caller_id="+12025550100",
                definition=definition,
            )
            .returning(Campaign.id)
        ).scalar_one()
    engine.dispose()
    return int(campaign_id)


def test_report_and_export_of_a_campaign_without_calls(
    database_url: str, empty_campaign: int, tmp_path: Path
) -> None:
    data = json.loads(run(database_url, "report", str(empty_campaign), "--json").stdout)
    assert [s["stage"] for s in data["funnel"]] == [
        "recipients",
        "dialled",
        "answered",
        "human",
        "machine",
        "suppressed",
        "failed",
    ]
    assert all(s["count"] == 0 and s["share_of_recipients"] is None for s in data["funnel"])
    assert data["questions"] == []
    assert data["timeline"]["buckets"] == []
    rows = export(database_url, empty_campaign, tmp_path)
    assert rows == [
        [
            "phone",
            "name",
            "status",
            "outcome",
            "attempts",
            "amd_result",
            "first_attempt_at",
            "last_attempt_at",
        ]
    ]
    page = tmp_path / "r.html"
    run(database_url, "report", str(empty_campaign), "--html", str(page))
    assert "No attempt has ended yet." in page.read_text(encoding="utf-8")
