"""Pure parts of the report and the export: funnel math, shares, distributions, CSV cells."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from campaigns.definition import Message, Question, definition_to_json, parse_definition
from campaigns.export import neutralise, phone_cell, recipient_header
from campaigns.reporting import (
    bucket_width,
    build_report,
    by_attempt,
    funnel,
    question_stats,
    render_html,
    report_to_json,
    share,
    timeline,
)
from campaigns.store.reports import CampaignRow, FunnelCounts

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2024, 10, 1, 10, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- CSV cells


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("=1+1", "'=1+1"),
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+cmd", "'+cmd"),
        ("-5", "'-5"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tTab", "'\tTab"),
        ("\rCR", "'\rCR"),
        ("Ada", "Ada"),
        ("a=b", "a=b"),
        (" =1", " =1"),  # only the first character counts
        ("'=already", "'=already"),
        ("", ""),
        (None, None),
        ("Zürich", "Zürich"),
    ],
)
def test_neutralise(cell: str | None, expected: str | None) -> None:
    assert neutralise(cell) == expected


@pytest.mark.parametrize(
    ("phone", "expected"),
    [
        ("+12025550101", "+12025550101"),  # E.164 keeps its + and every digit
        ("+442071838750", "+442071838750"),
        ("+123456789012345", "+123456789012345"),  # 15 digits
        ("+1234567890123456", "'+1234567890123456"),  # 16 digits: not E.164
        ("+1 202 555 0101", "'+1 202 555 0101"),
        ("+0123456", "'+0123456"),
        ("+1", "'+1"),
        ("+1202555010=", "'+1202555010="),
        ("=12025550101", "'=12025550101"),
        ("-12025550101", "'-12025550101"),
        ("0012025550101", "0012025550101"),  # leading zeros are kept as text
        (None, None),
    ],
)
def test_phone_cell(phone: str | None, expected: str | None) -> None:
    assert phone_cell(phone) == expected


def test_recipient_header_renames_clashing_attributes() -> None:
    header = recipient_header(["city", "name", "status", "rating_label"], ["rating"])
    assert header == [
        "phone",
        "name",
        "city",
        "attr_name",
        "attr_status",
        "attr_rating_label",
        "status",
        "outcome",
        "attempts",
        "amd_result",
        "first_attempt_at",
        "last_attempt_at",
        "rating_label",
        "rating_raw",
    ]


# --------------------------------------------------------------------------- funnel


def counts(**overrides: int) -> FunnelCounts:
    values = {
        "recipients": 200,
        "dialled": 150,
        "answered": 100,
        "human": 80,
        "machine": 20,
        "poll_started": 60,
        "poll_complete": 45,
        "suppressed": 10,
        "failed": 5,
    }
    values.update(overrides)
    return FunnelCounts(**values)


def test_funnel_shares_of_recipients_and_of_the_previous_stage() -> None:
    stages = {s.key: s for s in funnel(counts(), has_poll=True)}
    assert list(stages) == [
        "recipients",
        "dialled",
        "answered",
        "human",
        "machine",
        "poll_started",
        "poll_complete",
        "suppressed",
        "failed",
    ]
    assert stages["dialled"].share_of_recipients == 0.75
    assert stages["answered"].share_of_parent == pytest.approx(100 / 150)
    assert stages["human"].share_of_parent == 0.8
    assert stages["machine"].parent == "answered"
    assert stages["poll_started"].share_of_parent == 0.75  # of the humans
    assert stages["poll_complete"].share_of_parent == 0.75
    assert stages["poll_complete"].share_of_recipients == 0.225
    assert stages["suppressed"].share_of_parent == 0.05
    assert stages["recipients"].share_of_parent is None


def test_funnel_without_poll_and_without_recipients() -> None:
    stages = funnel(counts(recipients=0, dialled=0, answered=0, human=0, machine=0), has_poll=False)
    assert [s.key for s in stages] == [
        "recipients",
        "dialled",
        "answered",
        "human",
        "machine",
        "suppressed",
        "failed",
    ]
    assert all(s.share_of_recipients is None for s in stages)
    assert share(3, 0) is None
    assert share(0, 4) == 0.0


# --------------------------------------------------------------------------- questions


def question(key: str, kind: str, choices: dict[str, str]) -> Question:
    return Question(
        key=key,
        kind=kind,
        prompt=Message(text=f"{key}?"),  # type: ignore[arg-type]
        choices=choices,
    )


def test_question_stats_counts_labels_invalid_and_silence() -> None:
    rating = question("rating", "dtmf", {"3": "bad", "1": "good", "2": "ok"})
    recommend = question("recommend", "asr", {"yes": "yes", "yeah": "yes", "no": "no"})
    rows = [
        ("rating", True, "dtmf", "good", 6),
        ("rating", True, "dtmf", "bad", 2),
        ("rating", False, "dtmf", None, 1),
        ("rating", False, "none", None, 1),
        ("recommend", True, "asr", "yes", 3),
        ("other", True, "dtmf", "x", 99),  # a question no longer in the script
    ]
    r, c = question_stats([rating, recommend], rows)
    assert (r.asked, r.valid, r.invalid, r.no_answer) == (10, 8, 1, 1)
    # Labels in the order of their keys, zero counts included.
    assert [(a.label, a.count, a.share) for a in r.answers] == [
        ("good", 6, 0.6),
        ("ok", 0, 0.0),
        ("bad", 2, 0.2),
    ]
    assert [(a.label, a.count) for a in c.answers] == [("no", 0), ("yes", 3)]
    assert c.asked == 3


def test_by_attempt_groups_outcomes_and_names_open_attempts() -> None:
    rows = by_attempt([(2, "busy", 1), (1, "no_answer", 4), (1, "completed", 5), (1, None, 2)])
    assert [(a.attempt_no, a.total, list(a.outcomes.items())) for a in rows] == [
        (1, 11, [("completed", 5), ("no_answer", 4), ("open", 2)]),
        (2, 1, [("busy", 1)]),
    ]


# --------------------------------------------------------------------------- timeline


@pytest.mark.parametrize(
    ("span", "width"),
    [
        (timedelta(0), 60),
        (timedelta(minutes=47), 60),
        (timedelta(minutes=48), 300),
        (timedelta(hours=3), 300),
        (timedelta(hours=5), 900),
        (timedelta(hours=23), 1800),
        (timedelta(days=1), 3600),
        (timedelta(days=10), 6 * 3600),
        (timedelta(days=400), 7 * 86400),
    ],
)
def test_bucket_width_keeps_about_48_buckets(span: timedelta, width: int) -> None:
    assert bucket_width(T0, T0 + span) == width


def test_timeline_fills_empty_buckets() -> None:
    start = int(T0.timestamp())
    t = timeline(300, [(start, "completed", 2), (start + 900, "busy", 1), (start, None, 1)])
    assert [(b.isoformat(), dict(o)) for b, o in t.buckets] == [
        ("2024-10-01T10:00:00+00:00", {"completed": 2, "open": 1}),
        ("2024-10-01T10:05:00+00:00", {}),
        ("2024-10-01T10:10:00+00:00", {}),
        ("2024-10-01T10:15:00+00:00", {"busy": 1}),
    ]


# --------------------------------------------------------------------------- rendering


def sample_report(name: str = "Poll <b>&</b>") -> dict[str, object]:
    text = (ROOT / "sample_lists" / "poll.toml").read_text(encoding="utf-8")
    row = CampaignRow(
        id=7,
        name=name,
        status="completed",
        list_id=1,
        list_name="clean",
        caller_id="+12025550100",
        definition=definition_to_json(parse_definition(text)),
        recipients_total=200,
        created_at=T0,
        started_at=T0,
        paused_at=None,
        ended_at=None,
    )
    report = build_report(
        now=T0 + timedelta(days=1),
        campaign=row,
        funnel_counts=counts(),
        by_status={"done": 150, "suppressed": 10, "failed": 5, "pending": 35},
        final_outcomes={"completed": 45, None: 35},
        attempt_rows=[(1, "completed", 45)],
        amd={"human": 80, None: 1},
        answer_rows=[("rating", True, "dtmf", "excellent", 30)],
        span=(T0, T0 + timedelta(hours=1)),
        timeline_rows=[(int(T0.timestamp()), "completed", 45)],
        bucket_seconds=300,
    )
    return {"report": report, "json": report_to_json(report), "html": render_html(report)}


def test_report_json_shape() -> None:
    data = sample_report()["json"]
    assert isinstance(data, dict)
    assert list(data) == [
        "report_version",
        "generated_at",
        "campaign",
        "settings",
        "funnel",
        "recipients_by_status",
        "final_outcomes",
        "attempts",
        "amd",
        "questions",
        "timeline",
    ]
    assert data["final_outcomes"] == {"completed": 45}
    assert data["amd"] == {"human": 80, "none": 1}
    assert data["generated_at"] == "2024-10-02T10:00:00Z"
    assert data["settings"]["retry"]["delays"] == ["30m", "4h"]


def test_html_escapes_text_and_is_self_contained() -> None:
    page = sample_report(name='Poll <script>alert("x")</script>')["html"]
    assert isinstance(page, str)
    assert "<script" not in page
    assert "Poll &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert page.count("<svg") == 4
    assert "src=" not in page
    assert "<link" not in page
