"""The campaign report: SQL aggregates in, one frozen `Report` out, rendered three ways.

`load_report` runs the GROUP BY queries of `campaigns.store.reports`; everything after that
is pure: `build_report` assembles the figures (shares, funnel, per-question distributions),
`report_to_json` gives the stable JSON of `campaign report --json` (docs/report-json.md),
`render_terminal` the rich tables and `render_html` a single self-contained HTML page whose
charts are inline SVG drawn here (no script, no network).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import Connection

from campaigns.definition import (
    DAY_NAMES,
    CampaignDefinition,
    Question,
    definition_from_json,
    format_duration,
)
from campaigns.models import Recipient
from campaigns.store import reports as store

REPORT_VERSION = 1
OPEN = "open"  # the outcome key of an attempt that has not ended yet
NONE = "none"  # the AMD key of an answered attempt without an AMD verdict
# Bucket widths for the outcomes-over-time chart; the smallest giving <= MAX_BUCKETS wins.
BUCKET_LADDER = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)
MAX_BUCKETS = 48
OUTCOME_ORDER = (
    "completed",
    "partial",
    "voicemail",
    "machine",
    "opted_out",
    "no_answer",
    "busy",
    "rejected",
    "failed",
    "invalid_number",
    "cancelled",
    "unknown",
    "dnc",
    "no_window",
    OPEN,
)
OUTCOME_COLOURS = {
    "completed": "#2e7d32",
    "partial": "#81c784",
    "voicemail": "#6a1b9a",
    "machine": "#ba68c8",
    "opted_out": "#455a64",
    "no_answer": "#ffb300",
    "busy": "#fb8c00",
    "rejected": "#e53935",
    "failed": "#b71c1c",
    "invalid_number": "#795548",
    "cancelled": "#9e9e9e",
    "unknown": "#bdbdbd",
    "dnc": "#37474f",
    "no_window": "#8d6e63",
    OPEN: "#90caf9",
}


# --------------------------------------------------------------------------- the figures


@dataclass(frozen=True)
class Stage:
    key: str
    label: str
    count: int
    parent: str | None  # the stage this one is a share of (None: of the recipients)
    share_of_recipients: float | None
    share_of_parent: float | None


@dataclass(frozen=True)
class AnswerCount:
    label: str
    count: int
    share: float | None  # of the recipients asked the question


@dataclass(frozen=True)
class QuestionStats:
    key: str
    kind: str
    text: str | None
    asked: int  # recipients with an answer row (valid, invalid or silence)
    valid: int
    invalid: int
    no_answer: int
    answers: tuple[AnswerCount, ...]  # every choice label, zero counts included


@dataclass(frozen=True)
class AttemptRow:
    attempt_no: int
    total: int
    outcomes: Mapping[str, int]


@dataclass(frozen=True)
class Timeline:
    bucket_seconds: int
    buckets: tuple[tuple[datetime, Mapping[str, int]], ...]


@dataclass(frozen=True)
class CampaignInfo:
    id: int
    name: str
    status: str
    list_name: str
    caller_id: str
    recipients_total: int
    created_at: datetime
    started_at: datetime | None
    paused_at: datetime | None
    ended_at: datetime | None


@dataclass(frozen=True)
class Report:
    generated_at: datetime
    campaign: CampaignInfo
    settings: Mapping[str, Any]
    first_attempt_at: datetime | None
    last_attempt_ended_at: datetime | None
    funnel: tuple[Stage, ...]
    by_status: Mapping[str, int]
    final_outcomes: Mapping[str, int]
    attempts_total: int
    attempts_open: int
    by_attempt: tuple[AttemptRow, ...]
    amd: Mapping[str, int]
    questions: tuple[QuestionStats, ...]
    timeline: Timeline = field(default_factory=lambda: Timeline(3600, ()))


# --------------------------------------------------------------------------- pure assembly


def share(part: int, whole: int) -> float | None:
    """part / whole, or None when there is nothing to divide by."""
    return part / whole if whole else None


def funnel(c: store.FunnelCounts, *, has_poll: bool) -> tuple[Stage, ...]:
    """The funnel stages in order; the poll stages only when the campaign has a poll."""
    spec: list[tuple[str, str, int, str | None]] = [
        ("recipients", "Recipients", c.recipients, None),
        ("dialled", "Dialled", c.dialled, "recipients"),
        ("answered", "Answered", c.answered, "dialled"),
        ("human", "Human", c.human, "answered"),
        ("machine", "Machine only", c.machine, "answered"),
    ]
    if has_poll:
        spec += [
            ("poll_started", "Poll started", c.poll_started, "human"),
            ("poll_complete", "Poll complete", c.poll_complete, "poll_started"),
        ]
    spec += [
        ("suppressed", "Suppressed (DNC)", c.suppressed, "recipients"),
        ("failed", "Failed", c.failed, "recipients"),
    ]
    counts = {key: n for key, _, n, _ in spec}
    return tuple(
        Stage(
            key,
            label,
            n,
            parent,
            share(n, c.recipients),
            share(n, counts[parent]) if parent else None,
        )
        for key, label, n, parent in spec
    )


def choice_labels(question: Question) -> list[str]:
    """The distinct labels of a question's choices, ordered by their keys (keypad digits,
    phrases alphabetically): PostgreSQL's JSONB does not keep the file's key order, so
    this is the order both backends agree on."""
    return list(dict.fromkeys(question.choices[key] for key in sorted(question.choices)))


def question_stats(
    questions: Sequence[Question], rows: Iterable[tuple[str, bool, str, str | None, int]]
) -> tuple[QuestionStats, ...]:
    """Per question: each label's count and share of those asked, invalid and silent."""
    per: dict[str, list[tuple[bool, str, str | None, int]]] = {}
    for key, valid, kind, label, n in rows:
        per.setdefault(key, []).append((valid, kind, label, n))
    result = []
    for q in questions:
        labels: dict[str, int] = dict.fromkeys(choice_labels(q), 0)
        invalid = no_answer = 0
        for valid, kind, label, n in per.get(q.key, []):
            if valid and label is not None:
                labels[label] = labels.get(label, 0) + n
            elif kind == "none":
                no_answer += n
            else:
                invalid += n
        valid_total = sum(labels.values())
        asked = valid_total + invalid + no_answer
        result.append(
            QuestionStats(
                key=q.key,
                kind=q.kind,
                text=q.prompt.text or q.prompt.prompt_name,
                asked=asked,
                valid=valid_total,
                invalid=invalid,
                no_answer=no_answer,
                answers=tuple(AnswerCount(lab, n, share(n, asked)) for lab, n in labels.items()),
            )
        )
    return tuple(result)


def by_attempt(rows: Iterable[tuple[int, str | None, int]]) -> tuple[AttemptRow, ...]:
    grouped: dict[int, dict[str, int]] = {}
    for attempt_no, outcome, n in rows:
        outcomes = grouped.setdefault(attempt_no, {})
        key = outcome or OPEN
        outcomes[key] = outcomes.get(key, 0) + n
    return tuple(
        AttemptRow(no, sum(o.values()), dict(sorted(o.items(), key=_outcome_rank)))
        for no, o in sorted(grouped.items())
    )


def _outcome_rank(item: tuple[str, int]) -> tuple[int, str]:
    key = item[0]
    return (OUTCOME_ORDER.index(key) if key in OUTCOME_ORDER else len(OUTCOME_ORDER), key)


def bucket_width(first: datetime | None, last: datetime | None) -> int:
    """Seconds per bucket: the smallest width giving fewer than MAX_BUCKETS spans in
    first..last (one more bucket when the span straddles a bucket edge)."""
    if first is None or last is None:
        return BUCKET_LADDER[4]
    span = max((last - first).total_seconds(), 0)
    for width in BUCKET_LADDER:
        if span / width < MAX_BUCKETS:
            return width
    return BUCKET_LADDER[-1]


def timeline(bucket_seconds: int, rows: Iterable[tuple[int, str | None, int]]) -> Timeline:
    grouped: dict[int, dict[str, int]] = {}
    for start, outcome, n in rows:
        bucket = grouped.setdefault(start, {})
        key = outcome or OPEN
        bucket[key] = bucket.get(key, 0) + n
    if grouped:  # fill the empty buckets so the chart's time axis is linear
        for start in range(min(grouped), max(grouped) + 1, bucket_seconds):
            grouped.setdefault(start, {})
    buckets = tuple(
        (datetime.fromtimestamp(start, UTC), dict(sorted(o.items(), key=_outcome_rank)))
        for start, o in sorted(grouped.items())
    )
    return Timeline(bucket_seconds, buckets)


def settings_of(d: CampaignDefinition) -> dict[str, Any]:
    """The campaign settings a reader of the report needs, JSON-ready."""
    days = sorted(d.window.days)
    return {
        "pacing": {
            "calls_per_second": d.pacing.calls_per_second,
            "max_concurrent": d.pacing.max_concurrent,
            "batch_size": d.pacing.batch_size,
        },
        "retry": {
            "max_attempts": d.retry.max_attempts,
            "delays": [format_duration(delay) for delay in d.retry.delays],
            "retry_on": sorted(d.retry.retry_on),
            "retry_incomplete_poll": bool(d.poll and d.poll.retry_incomplete),
        },
        "window": {
            "days": [DAY_NAMES[day] for day in days],
            "start": d.window.start.strftime("%H:%M"),
            "end": d.window.end.strftime("%H:%M"),
            "timezone": d.window.timezone,
        },
        "amd": d.amd.behaviour,
        "start_date": d.start_date.isoformat() if d.start_date else None,
        "end_date": d.end_date.isoformat() if d.end_date else None,
        "questions": [q.key for q in d.poll.questions] if d.poll else [],
    }


def build_report(
    *,
    now: datetime,
    campaign: store.CampaignRow,
    funnel_counts: store.FunnelCounts,
    by_status: Mapping[str | None, int],
    final_outcomes: Mapping[str | None, int],
    attempt_rows: Sequence[tuple[int, str | None, int]],
    amd: Mapping[str | None, int],
    answer_rows: Sequence[tuple[str, bool, str, str | None, int]],
    span: tuple[datetime | None, datetime | None],
    timeline_rows: Sequence[tuple[int, str | None, int]],
    bucket_seconds: int,
) -> Report:
    definition = definition_from_json(campaign.definition)
    questions = definition.poll.questions if definition.poll else ()
    rows = by_attempt(attempt_rows)
    return Report(
        generated_at=now,
        campaign=CampaignInfo(
            campaign.id,
            campaign.name,
            campaign.status,
            campaign.list_name,
            campaign.caller_id,
            campaign.recipients_total,
            campaign.created_at,
            campaign.started_at,
            campaign.paused_at,
            campaign.ended_at,
        ),
        settings=settings_of(definition),
        first_attempt_at=span[0],
        last_attempt_ended_at=span[1],
        funnel=funnel(funnel_counts, has_poll=definition.poll is not None),
        by_status={str(k): n for k, n in sorted(by_status.items(), key=lambda i: str(i[0]))},
        final_outcomes=dict(
            sorted(
                ((str(k), n) for k, n in final_outcomes.items() if k is not None), key=_outcome_rank
            )
        ),
        attempts_total=sum(r.total for r in rows),
        attempts_open=sum(r.outcomes.get(OPEN, 0) for r in rows),
        by_attempt=rows,
        amd={(k or NONE): n for k, n in sorted(amd.items(), key=lambda i: i[0] or "~")},
        questions=question_stats(questions, answer_rows),
        timeline=timeline(bucket_seconds, timeline_rows),
    )


def load_report(conn: Connection, campaign_id: int, now: datetime) -> Report:
    """Run the report's queries on `conn` (read only) and assemble the report."""
    campaign = store.campaign_row(conn, campaign_id)
    span = store.attempt_span(conn, campaign_id)
    width = bucket_width(*span)
    return build_report(
        now=now,
        campaign=campaign,
        funnel_counts=store.funnel_counts(conn, campaign_id),
        by_status=store.count_by(conn, Recipient.status, campaign_id),
        final_outcomes=store.count_by(conn, Recipient.final_outcome, campaign_id),
        attempt_rows=store.outcomes_by_attempt(conn, campaign_id),
        amd=store.amd_split(conn, campaign_id),
        answer_rows=store.answer_distribution(conn, campaign_id),
        span=span,
        timeline_rows=store.ended_timeline(conn, campaign_id, width),
        bucket_seconds=width,
    )


# --------------------------------------------------------------------------- JSON


def iso(value: datetime | None) -> str | None:
    """ISO-8601 UTC to the second with a Z: 2024-10-01T14:03:07Z."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ratio(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def report_to_json(r: Report) -> dict[str, Any]:
    """The stable JSON form (documented key by key in docs/report-json.md)."""
    c = r.campaign
    return {
        "report_version": REPORT_VERSION,
        "generated_at": iso(r.generated_at),
        "campaign": {
            "id": c.id,
            "name": c.name,
            "status": c.status,
            "list": c.list_name,
            "caller_id": c.caller_id,
            "recipients_total": c.recipients_total,
            "created_at": iso(c.created_at),
            "started_at": iso(c.started_at),
            "paused_at": iso(c.paused_at),
            "ended_at": iso(c.ended_at),
            "first_attempt_at": iso(r.first_attempt_at),
            "last_attempt_ended_at": iso(r.last_attempt_ended_at),
        },
        "settings": r.settings,
        "funnel": [
            {
                "stage": s.key,
                "label": s.label,
                "count": s.count,
                "of": s.parent,
                "share_of_recipients": _ratio(s.share_of_recipients),
                "share_of_parent": _ratio(s.share_of_parent),
            }
            for s in r.funnel
        ],
        "recipients_by_status": dict(r.by_status),
        "final_outcomes": dict(r.final_outcomes),
        "attempts": {
            "total": r.attempts_total,
            "open": r.attempts_open,
            "by_attempt_no": [
                {"attempt_no": a.attempt_no, "total": a.total, "outcomes": dict(a.outcomes)}
                for a in r.by_attempt
            ],
        },
        "amd": dict(r.amd),
        "questions": [
            {
                "key": q.key,
                "kind": q.kind,
                "text": q.text,
                "asked": q.asked,
                "valid": q.valid,
                "invalid": q.invalid,
                "no_answer": q.no_answer,
                "invalid_share": _ratio(share(q.invalid, q.asked)),
                "no_answer_share": _ratio(share(q.no_answer, q.asked)),
                "answers": [
                    {"label": a.label, "count": a.count, "share": _ratio(a.share)}
                    for a in q.answers
                ],
            }
            for q in r.questions
        ],
        "timeline": {
            "bucket_seconds": r.timeline.bucket_seconds,
            "buckets": [
                {"start": iso(start), "outcomes": dict(o)} for start, o in r.timeline.buckets
            ],
        },
    }


# --------------------------------------------------------------------------- terminal


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def _kv_table(title: str, rows: Iterable[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, "–" if value is None or value == "" else str(value))
    return table


def _settings_rows(r: Report) -> list[tuple[str, Any]]:
    s = r.settings
    return [
        (
            "pacing",
            f"{s['pacing']['calls_per_second']:g} calls/s, at most "
            f"{s['pacing']['max_concurrent']} live, {s['pacing']['batch_size']} per batch",
        ),
        (
            "retry",
            f"{s['retry']['max_attempts']} attempts, after "
            f"{', '.join(s['retry']['delays'])}, on {', '.join(s['retry']['retry_on'])}",
        ),
        (
            "window",
            f"{','.join(s['window']['days'])} {s['window']['start']}-"
            f"{s['window']['end']} ({s['window']['timezone']} time)",
        ),
        ("answering machines", s["amd"]),
        ("dates", f"{s['start_date'] or '…'} to {s['end_date'] or '…'}"),
    ]


def _campaign_rows(r: Report) -> list[tuple[str, Any]]:
    c = r.campaign
    return [
        ("status", c.status),
        ("list", c.list_name),
        ("caller id", c.caller_id),
        ("created", iso(c.created_at)),
        ("started", iso(c.started_at)),
        ("ended", iso(c.ended_at)),
        ("first attempt", iso(r.first_attempt_at)),
        ("last attempt ended", iso(r.last_attempt_ended_at)),
        ("report generated", iso(r.generated_at)),
    ]


def _counts_table(title: str, key_name: str, counts: Mapping[str, int], total: int) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(key_name)
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    for key, n in counts.items():
        table.add_row(key, f"{n:,}", pct(share(n, total)))
    return table


def render_terminal(r: Report, console: Console) -> None:
    """The report as rich tables."""
    console.print(f"[bold]Campaign {r.campaign.id}: {r.campaign.name}[/bold]")
    console.print(_kv_table("Campaign", _campaign_rows(r)))
    console.print(_kv_table("Settings", _settings_rows(r)))

    table = Table(title="Funnel", title_justify="left")
    for name in ("stage", "recipients", "% of recipients", "% of previous"):
        table.add_column(name, justify="left" if name == "stage" else "right")
    for s in r.funnel:
        previous = f"{pct(s.share_of_parent)} of {s.parent}" if s.parent else ""
        table.add_row(s.label, f"{s.count:,}", pct(s.share_of_recipients), previous)
    console.print(table)

    recipients = r.funnel[0].count
    console.print(_counts_table("Recipients by status", "status", r.by_status, recipients))
    console.print(_counts_table("Final outcomes", "outcome", r.final_outcomes, recipients))

    outcomes = list(dict.fromkeys(o for a in r.by_attempt for o in a.outcomes))
    table = Table(
        title=f"Outcomes by attempt ({r.attempts_total:,} attempts)", title_justify="left"
    )
    table.add_column("attempt", justify="right")
    table.add_column("total", justify="right")
    for o in outcomes:
        table.add_column(o, justify="right")
    for a in r.by_attempt:
        table.add_row(
            str(a.attempt_no), f"{a.total:,}", *(f"{a.outcomes.get(o, 0):,}" for o in outcomes)
        )
    console.print(table)

    console.print(
        _counts_table(
            "Answering-machine detection (answered attempts)", "AMD", r.amd, sum(r.amd.values())
        )
    )
    for q in r.questions:
        table = Table(title=f"Question {q.key} ({q.kind}): {q.text or ''}", title_justify="left")
        table.add_column("answer")
        table.add_column("recipients", justify="right")
        table.add_column("share", justify="right")
        for answer in q.answers:
            table.add_row(answer.label, f"{answer.count:,}", pct(answer.share))
        table.add_row("[dim]invalid[/dim]", f"{q.invalid:,}", pct(share(q.invalid, q.asked)))
        table.add_row("[dim]no answer[/dim]", f"{q.no_answer:,}", pct(share(q.no_answer, q.asked)))
        table.add_row("[bold]asked[/bold]", f"{q.asked:,}", "")
        console.print(table)


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
margin:24px auto;max-width:1100px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.sub{color:#666;margin-bottom:16px}.grid{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
table.kv td,table.kv th{text-align:left}
table{border-collapse:collapse;margin:6px 0 12px}th,td{padding:3px 10px;border-bottom:1px solid #eee;
text-align:right}th:first-child,td:first-child{text-align:left}th{background:#f5f5f5}
svg text{font:12px system-ui,sans-serif;fill:#333}.legend span{display:inline-block;margin-right:12px}
.sw{display:inline-block;width:10px;height:10px;margin-right:4px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], css: str = "") -> str:
    out = [f'<table class="{css}"><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def svg_bars(
    items: Sequence[tuple[str, int, str]], total: int, *, css: str, width: int = 760
) -> str:
    """Horizontal bars: (label, value, colour); bar lengths relative to `total`."""
    label_w, bar_w, row_h = 190, width - 190 - 130, 26
    height = row_h * len(items) + 8
    parts = [
        f'<svg class="{css}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img">'
    ]
    for i, (label, value, colour) in enumerate(items):
        y = 4 + i * row_h
        length = 0.0 if not total else bar_w * value / total
        parts.append(f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">{_e(label)}</text>')
        parts.append(
            f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{length:.1f}" '
            f'height="{row_h - 8}" fill="{colour}"><title>{_e(label)}: {value}</title>'
            "</rect>"
        )
        parts.append(
            f'<text x="{label_w + length + 6:.1f}" y="{y + 17}">{value:,} '
            f"({pct(share(value, total))})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def svg_timeline(t: Timeline, *, width: int = 1000, height: int = 280) -> str:
    """Stacked bars of ended attempts per time bucket, coloured by outcome."""
    if not t.buckets:
        return '<p class="empty">No attempt has ended yet.</p>'
    left, bottom, top = 48, 36, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max(sum(o.values()) for _, o in t.buckets) or 1
    slot = plot_w / len(t.buckets)
    parts = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img">'
    ]
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        parts.append(
            f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{round(peak * frac):,}</text>'
        )
    one_day = t.buckets[0][0].date() == t.buckets[-1][0].date()
    fmt = "%m-%d" if t.bucket_seconds >= 86400 else "%H:%M" if one_day else "%m-%d %H:%M"
    label_every = max(1, math.ceil((12 + 7 * len(fmt)) / slot))  # labels never overlap
    for i, (start, outcomes) in enumerate(t.buckets):
        x = left + i * slot
        y = top + plot_h
        for outcome, n in outcomes.items():
            h = plot_h * n / peak
            y -= h
            parts.append(
                f'<rect class="bar" x="{x + 1:.1f}" y="{y:.1f}" '
                f'width="{max(slot - 2, 1):.1f}" height="{h:.1f}" '
                f'fill="{OUTCOME_COLOURS.get(outcome, "#607d8b")}"><title>'
                f"{_e(iso(start))} {_e(outcome)}: {n}</title></rect>"
            )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{height - bottom + 16}" '
                f'text-anchor="middle">{_e(start.strftime(fmt))}</text>'
            )
    parts.append("</svg>")
    seen = list(dict.fromkeys(o for _, outcomes in t.buckets for o in outcomes))
    legend = "".join(
        f'<span><i class="sw" style="background:'
        f'{OUTCOME_COLOURS.get(o, "#607d8b")}"></i>{_e(o)}</span>'
        for o in seen
    )
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def render_html(r: Report) -> str:
    """One self-contained HTML page: the report's tables and inline SVG charts."""
    c = r.campaign
    recipients = r.funnel[0].count
    funnel_colours = {"suppressed": "#37474f", "failed": "#b71c1c", "machine": "#ba68c8"}
    body = [
        f"<h1>Campaign {c.id}: {_e(c.name)}</h1>",
        f'<div class="sub">{_e(c.status)} · list {_e(c.list_name)} · report generated '
        f"{_e(iso(r.generated_at))}</div>",
        '<div class="grid">',
        _table(("campaign", ""), _campaign_rows(r), "kv campaign"),
        _table(("settings", ""), _settings_rows(r), "kv settings"),
        "</div><h2>Funnel</h2>",
        svg_bars(
            [(s.label, s.count, funnel_colours.get(s.key, "#1565c0")) for s in r.funnel],
            recipients,
            css="funnel",
        ),
        _table(
            ("stage", "recipients", "% of recipients", "% of previous"),
            [
                (
                    s.label,
                    f"{s.count:,}",
                    pct(s.share_of_recipients),
                    f"{pct(s.share_of_parent)} of {s.parent}" if s.parent else "",
                )
                for s in r.funnel
            ],
            "funnel",
        ),
        "<h2>Outcomes over time</h2>",
        f'<div class="sub">Attempts by the time they ended, per '
        f"{_e(format_duration_seconds(r.timeline.bucket_seconds))} (UTC"
        f"{_e(_timeline_day(r.timeline))})</div>",
        svg_timeline(r.timeline),
        '<h2>Outcomes by attempt</h2><div class="grid">',
    ]
    outcomes = list(dict.fromkeys(o for a in r.by_attempt for o in a.outcomes))
    body.append(
        _table(
            ("attempt", "total", *outcomes),
            [
                (a.attempt_no, f"{a.total:,}", *(f"{a.outcomes.get(o, 0):,}" for o in outcomes))
                for a in r.by_attempt
            ],
            "attempts",
        )
    )
    amd_total = sum(r.amd.values())
    body.append(
        _table(
            ("AMD (answered attempts)", "count", "share"),
            [(k, f"{n:,}", pct(share(n, amd_total))) for k, n in r.amd.items()],
            "amd",
        )
    )
    body.append(
        _table(
            ("final outcome", "recipients", "share"),
            [(k, f"{n:,}", pct(share(n, recipients))) for k, n in r.final_outcomes.items()],
            "outcomes",
        )
    )
    body.append(
        _table(
            ("status", "recipients", "share"),
            [(k, f"{n:,}", pct(share(n, recipients))) for k, n in r.by_status.items()],
            "status",
        )
    )
    body.append("</div>")
    for q in r.questions:
        items = [(a.label, a.count, "#1565c0") for a in q.answers]
        items += [("invalid", q.invalid, "#e53935"), ("no answer", q.no_answer, "#9e9e9e")]
        body.append(
            f"<h2>Question {_e(q.key)} <small>({_e(q.kind)})</small></h2>"
            f'<div class="sub">{_e(q.text)} · {q.asked:,} asked</div>'
        )
        body.append(svg_bars(items, q.asked, css=f"question question-{_e(q.key)}"))
        body.append(
            _table(
                ("answer", "recipients", "share"),
                [(label, f"{n:,}", pct(share(n, q.asked))) for label, n, _ in items],
                "question",
            )
        )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Campaign {c.id} report: {_e(c.name)}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )


def _timeline_day(t: Timeline) -> str:
    if not t.buckets or t.buckets[0][0].date() != t.buckets[-1][0].date():
        return ""
    return f", {t.buckets[0][0].date().isoformat()}"


def format_duration_seconds(seconds: int) -> str:
    return format_duration(timedelta(seconds=seconds))
