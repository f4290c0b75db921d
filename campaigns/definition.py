"""The campaign file: TOML in, validated frozen dataclasses out (pure, no I/O but `load`).

`parse_definition` checks the whole file and raises one `DefinitionError` listing every
problem with its path (``poll.questions[1].choices``), unknown keys included, so an operator
fixes a file in one go. `definition_to_json` / `definition_from_json` freeze a parsed
definition into `campaign.definition` and back, exactly.

The file layout (see `sample_lists/reminder.toml` and `sample_lists/poll.toml`)::

    name = "Flu shot reminder"           # required
    list = "clinic-patients"             # required: the imported contact list's name
    caller_id = "+12025550100"           # required: 8-15 digits, optional leading +
    start_date = 2024-10-01              # optional, first calling day (TOML date or "YYYY-MM-DD")
    end_date = 2024-10-31                # optional, last calling day, inclusive
    platform_retries = false             # let EnableX redial instead of the workers

    [message]                            # text = "..." (TTS, {column} personalisation)
    text = "Hello {name}, ..."           # or prompt_name = "recorded-prompt"
    voice = "female"                     # male | female; also the default of every message
    language = "en-US"                   # below that does not set its own

    [poll]                               # optional
    opt_out_digit = "9"
    opt_out_message = "..."              # a message: a string (TTS text) or a table
    closing_message = "..."              #   {text | prompt_name, voice, language}
    retry_incomplete = false

    [[poll.questions]]
    key = "rating"                       # identifier: letters, digits, _ (<= 64 chars)
    kind = "dtmf"                        # dtmf | asr
    text = "..."                         # or prompt_name; voice / language optional
    choices = { "1" = "poor", "5" = "excellent" }
    max_tries = 2                        # times asked in total on invalid input or silence
    invalid_message = "..."
    timeout_seconds = 8

    [amd]     behaviour = "hangup_and_retry" | "leave_message" | "ignore"; message = "..."
    [retry]   interval = "30m" | schedule = "15m,2h,1d"; max_attempts = 3; retry_on = [...]
    [pacing]  calls_per_second = 5; max_concurrent = 50; batch_size = 100
    [window]  days = "mon-fri"; start = "09:00"; end = "20:00"; timezone = "recipient"

Limits: calls_per_second in (0, 1000]; max_concurrent 1..10000; batch_size 1..1000 (numbers
per broadcast request); max_attempts 1..20; retry delays 1 minute..30 days; max_tries 1..10;
timeout_seconds 1..60. `retry_on` may hold no_answer, busy, failed, machine, unknown:
a rejected call (the callee declined it) and a wrong number are never redialled, and a poll
left half-way is retried by `poll.retry_incomplete`, not by `retry_on`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, time, timedelta
from pathlib import Path
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from campaigns.errors import DefinitionError, InputFileError

__all__ = [
    "DAY_NAMES",
    "RETRYABLE_OUTCOMES",
    "Amd",
    "CampaignDefinition",
    "Message",
    "Pacing",
    "Poll",
    "Question",
    "Retry",
    "Window",
    "definition_from_json",
    "definition_to_json",
    "duration",
    "format_duration",
    "load_definition",
    "parse_definition",
    "placeholders",
    "render",
]

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
WEEKDAYS = frozenset(range(5))
DTMF_KEYS = frozenset("0123456789*#")
VOICES = frozenset({"male", "female"})
AMD_BEHAVIOURS = ("hangup_and_retry", "leave_message", "ignore")
# Outcomes a campaign may choose to redial (values of `campaigns.scheduling.Outcome`).
RETRYABLE_OUTCOMES = frozenset({"no_answer", "busy", "failed", "machine", "unknown"})
DEFAULT_RETRY_ON = RETRYABLE_OUTCOMES

MAX_CALLS_PER_SECOND = 1000.0
MAX_CONCURRENT = 10_000
MAX_BATCH_SIZE = 1000
MAX_ATTEMPTS = 20
MIN_RETRY_DELAY = timedelta(minutes=1)
MAX_RETRY_DELAY = timedelta(days=30)
DEFAULT_RETRY_DELAY = timedelta(minutes=30)

_CALLER_ID = re.compile(r"\+?[0-9]{8,15}")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_LANGUAGE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*")
_HHMM = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_TEMPLATE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True, slots=True)
class Message:
    """What is played: TTS `text` (with `{column}` personalisation) or a recorded prompt."""

    text: str | None = None
    prompt_name: str | None = None
    voice: str = "female"
    language: str = "en-US"


@dataclass(frozen=True, slots=True)
class Question:
    """One poll question. dtmf: `choices` maps a digit to a label; asr: a lower-case phrase.

    `max_tries` is how many times the question is asked in total (first ask + re-asks) when
    the answer is invalid or silent.
    """

    key: str
    kind: Literal["dtmf", "asr"]
    prompt: Message
    choices: Mapping[str, str]
    max_tries: int = 2
    invalid_message: Message | None = None
    timeout_seconds: int = 8


@dataclass(frozen=True, slots=True)
class Poll:
    questions: tuple[Question, ...]
    opt_out_digit: str | None = None
    opt_out_message: Message | None = None
    closing_message: Message | None = None
    retry_incomplete: bool = False


@dataclass(frozen=True, slots=True)
class Amd:
    """Answering-machine handling; `message` is what `leave_message` leaves."""

    behaviour: Literal["hangup_and_retry", "leave_message", "ignore"] = "hangup_and_retry"
    message: Message | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """The delay after attempt n is `delays[min(n - 1, len(delays) - 1)]`."""

    delays: tuple[timedelta, ...]
    max_attempts: int = 3
    retry_on: frozenset[str] = DEFAULT_RETRY_ON


@dataclass(frozen=True, slots=True)
class Pacing:
    calls_per_second: float = 5.0
    max_concurrent: int = 50
    batch_size: int = 100


@dataclass(frozen=True, slots=True)
class Window:
    """Calling hours. `days` are 0=Mon..6=Sun; `end < start` crosses midnight (the day test
    applies to the day the window starts); `timezone` is "recipient" or an IANA name."""

    days: frozenset[int] = WEEKDAYS
    start: time = time(9, 0)
    end: time = time(20, 0)
    timezone: str = "recipient"


@dataclass(frozen=True, slots=True)
class CampaignDefinition:
    name: str
    list_name: str
    caller_id: str
    message: Message
    poll: Poll | None
    amd: Amd
    retry: Retry
    pacing: Pacing
    window: Window
    start_date: date | None = None
    end_date: date | None = None
    platform_retries: bool = False


# --------------------------------------------------------------------------- small helpers


def duration(text: str) -> timedelta:
    """Parse "30s", "15m", "2h", "1d", "1h30m" (units d, h, m, s in that order).

    Raises ValueError with a readable reason.
    """
    compact = "".join(text.split()).lower()
    match = _DURATION.fullmatch(compact)
    if not compact or match is None or not any(match.groups()):
        raise ValueError(f"{text!r} is not a duration like 30s, 15m, 2h, 1d or 1h30m")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The inverse of `duration` for whole seconds: 5400 s -> "1h30m"."""
    total = int(delta.total_seconds())
    if total <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def render(text: str, attributes: Mapping[str, Any]) -> str:
    """Fill `{column}` placeholders from a contact's attributes.

    Never raises: an unknown column (or a None value) renders as "", `{{` / `}}` are literal
    braces, an unmatched brace is kept as is. Column names are matched exactly, then without
    regard to case and surrounding spaces.
    """
    lowered: dict[str, Any] | None = None

    def substitute(match: re.Match[str]) -> str:
        nonlocal lowered
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        column = match.group(1)
        value = attributes.get(column)
        if value is None:
            if lowered is None:
                lowered = {str(k).strip().lower(): v for k, v in attributes.items()}
            value = lowered.get(column.strip().lower())
        return "" if value is None else str(value)

    return _TEMPLATE.sub(substitute, text)


def placeholders(text: str) -> tuple[str, ...]:
    """The column names a message text uses, in order of first use (for checks vs a list)."""
    seen: dict[str, None] = {}
    for match in _TEMPLATE.finditer(text):
        if match.group(1) is not None and match.group(1).strip():
            seen.setdefault(match.group(1).strip(), None)
    return tuple(seen)


def _template_problem(text: str) -> str | None:
    rest = _TEMPLATE.sub(lambda m: "" if m.group(1) is None or m.group(1).strip() else "\0", text)
    if "\0" in rest:
        return "has an empty placeholder {}"
    if "{" in rest:
        return "has a '{' without its '}' (write '{{' for a literal brace)"
    return None


def _zone_exists(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------- parsing


class _Checker:
    """Collects `(path, why)` problems while reading a parsed TOML document."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def add(self, path: str, why: str) -> None:
        self.problems.append((path, why))

    def table(self, raw: Any, path: str, allowed: frozenset[str]) -> dict[str, Any] | None:
        if not isinstance(raw, dict):
            self.add(path, "must be a table")
            return None
        for key in raw:
            if key not in allowed:
                self.add(_join(path, key), "unknown key")
        return cast(dict[str, Any], raw)

    def string(self, raw: Any, path: str, *, required: bool = False) -> str | None:
        if raw is None:
            if required:
                self.add(path, "is required")
            return None
        if not isinstance(raw, str) or not raw.strip():
            self.add(path, "must be a non-empty string")
            return None
        return raw.strip()

    def integer(self, raw: Any, path: str, default: int, low: int, high: int) -> int:
        if raw is None:
            return default
        if isinstance(raw, bool) or not isinstance(raw, int):
            self.add(path, "must be a whole number")
            return default
        if not low <= raw <= high:
            self.add(path, f"must be between {low} and {high}")
            return default
        return raw

    def boolean(self, raw: Any, path: str, default: bool) -> bool:
        if raw is None:
            return default
        if not isinstance(raw, bool):
            self.add(path, "must be true or false")
            return default
        return raw

    def date(self, raw: Any, path: str) -> date | None:
        if raw is None:
            return None
        if isinstance(raw, date) and type(raw) is date:
            return raw
        if isinstance(raw, str):
            try:
                return date.fromisoformat(raw.strip())
            except ValueError:
                pass
        self.add(path, "must be a date like 2024-10-31")
        return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_MESSAGE_KEYS = frozenset({"text", "prompt_name", "voice", "language"})


def _message_fields(
    c: _Checker, raw: Mapping[str, Any], path: str, default: Message | None
) -> Message | None:
    text = raw.get("text")
    prompt_name = raw.get("prompt_name")
    ok = True
    if text is not None and prompt_name is not None:
        c.add(path, "give either text or prompt_name, not both")
        ok = False
    elif text is None and prompt_name is None:
        c.add(_join(path, "text") if path else "text", "is required (or prompt_name)")
        ok = False
    if text is not None:
        if not isinstance(text, str) or not text.strip():
            c.add(_join(path, "text"), "must be a non-empty string")
            ok = False
        elif (why := _template_problem(text)) is not None:
            c.add(_join(path, "text"), why)
            ok = False
    if prompt_name is not None and c.string(prompt_name, _join(path, "prompt_name")) is None:
        ok = False
    voice = raw.get("voice", default.voice if default else "female")
    if voice not in VOICES:
        c.add(_join(path, "voice"), "must be 'male' or 'female'")
        ok = False
    language = raw.get("language", default.language if default else "en-US")
    if not isinstance(language, str) or not _LANGUAGE.fullmatch(language):
        c.add(_join(path, "language"), "must be a language tag like en-US")
        ok = False
    if not ok:
        return None
    return Message(
        text=text.strip() if isinstance(text, str) else None,
        prompt_name=prompt_name.strip() if isinstance(prompt_name, str) else None,
        voice=str(voice),
        language=str(language),
    )


def _message(c: _Checker, raw: Any, path: str, default: Message | None) -> Message | None:
    """A message is a string (TTS text) or a table {text | prompt_name, voice, language}."""
    if isinstance(raw, str):
        raw = {"text": raw}
    table = c.table(raw, path, _MESSAGE_KEYS)
    if table is None:
        return None
    return _message_fields(c, table, path, default)


_QUESTION_KEYS = (
    frozenset({"key", "kind", "choices", "max_tries", "invalid_message", "timeout_seconds"})
    | _MESSAGE_KEYS
)


def _question(c: _Checker, raw: Any, path: str, default: Message | None) -> Question | None:
    table = c.table(raw, path, _QUESTION_KEYS)
    if table is None:
        return None
    before = len(c.problems)
    key = c.string(table.get("key"), _join(path, "key"), required=True)
    if key is not None and not _KEY.fullmatch(key):
        c.add(_join(path, "key"), "must be letters, digits and _ (not starting with a digit)")
    kind = table.get("kind")
    if kind not in ("dtmf", "asr"):
        c.add(_join(path, "kind"), "must be 'dtmf' or 'asr'")
    prompt = _message_fields(c, table, path, default)
    choices = _choices(c, table.get("choices"), _join(path, "choices"), kind)
    max_tries = c.integer(table.get("max_tries"), _join(path, "max_tries"), 2, 1, 10)
    invalid = None
    if "invalid_message" in table:
        invalid = _message(c, table["invalid_message"], _join(path, "invalid_message"), default)
    timeout = c.integer(table.get("timeout_seconds"), _join(path, "timeout_seconds"), 8, 1, 60)
    if len(c.problems) > before or key is None or prompt is None or choices is None:
        return None
    return Question(
        key=key,
        kind=cast(Literal["dtmf", "asr"], kind),
        prompt=prompt,
        choices=choices,
        max_tries=max_tries,
        invalid_message=invalid,
        timeout_seconds=timeout,
    )


def _choices(c: _Checker, raw: Any, path: str, kind: Any) -> dict[str, str] | None:
    if raw is None:
        c.add(path, "is required")
        return None
    if not isinstance(raw, dict) or not raw:
        c.add(path, "must be a non-empty table of answer = label")
        return None
    if not all(isinstance(label, str) and label.strip() for label in raw.values()):
        c.add(path, "every label must be a non-empty string")
        return None
    if kind == "dtmf":
        if not all(key in DTMF_KEYS for key in raw):
            c.add(path, "must map digits 0-9,*,# to labels")
            return None
        return {key: label.strip() for key, label in raw.items()}
    if kind == "asr":
        phrases: dict[str, str] = {}
        for phrase, label in raw.items():
            normal = " ".join(phrase.lower().split())
            if not normal:
                c.add(path, "phrases must not be empty")
                return None
            if normal in phrases:
                c.add(path, f"phrase {normal!r} is given twice (phrases ignore case)")
                return None
            phrases[normal] = label.strip()
        return phrases
    return None  # the kind itself is already reported


def _poll(c: _Checker, raw: Any, default: Message | None) -> Poll | None:
    table = c.table(
        raw,
        "poll",
        frozenset(
            {"questions", "opt_out_digit", "opt_out_message", "closing_message", "retry_incomplete"}
        ),
    )
    if table is None:
        return None
    before = len(c.problems)
    opt_out = table.get("opt_out_digit")
    if opt_out is not None and (not isinstance(opt_out, str) or opt_out not in DTMF_KEYS):
        c.add("poll.opt_out_digit", "must be one of 0-9, * or # (as a string)")
        opt_out = None
    raw_questions = table.get("questions")
    questions: list[Question] = []
    if not isinstance(raw_questions, list) or not raw_questions:
        c.add("poll.questions", "a poll needs at least one [[poll.questions]]")
        raw_questions = []
    elif len(raw_questions) > 20:
        c.add("poll.questions", "at most 20 questions")
    seen: set[Any] = set()
    for i, raw_q in enumerate(raw_questions):
        path = f"poll.questions[{i}]"
        question = _question(c, raw_q, path, default)
        if question is not None:
            questions.append(question)
        if not isinstance(raw_q, dict):
            continue
        # Checked on the raw table so they are reported even when the question has other faults.
        key = raw_q.get("key")
        if isinstance(key, str) and key.strip():
            if key.strip() in seen:
                c.add(f"{path}.key", f"{key.strip()!r} is used twice")
            seen.add(key.strip())
        choices = raw_q.get("choices")
        if raw_q.get("kind") == "dtmf" and isinstance(choices, dict) and opt_out in choices:
            c.add(f"{path}.choices", f"uses the opt-out digit {opt_out!r} as an answer")
    messages: dict[str, Message | None] = {}
    for name in ("opt_out_message", "closing_message"):
        messages[name] = (
            _message(c, table[name], f"poll.{name}", default) if name in table else None
        )
    if messages["opt_out_message"] is not None and opt_out is None and "opt_out_digit" not in table:
        c.add("poll.opt_out_message", "is only played after the opt_out_digit: set one")
    retry_incomplete = c.boolean(table.get("retry_incomplete"), "poll.retry_incomplete", False)
    if len(c.problems) > before:
        return None
    return Poll(
        questions=tuple(questions),
        opt_out_digit=opt_out,
        opt_out_message=messages["opt_out_message"],
        closing_message=messages["closing_message"],
        retry_incomplete=retry_incomplete,
    )


def _amd(c: _Checker, raw: Any, default: Message | None) -> Amd:
    if raw is None:
        return Amd()
    table = c.table(raw, "amd", frozenset({"behaviour", "behavior", "message"}))
    if table is None:
        return Amd()
    if "behaviour" in table and "behavior" in table:
        c.add("amd.behavior", "give behaviour once (either spelling)")
    behaviour = table.get("behaviour", table.get("behavior", "hangup_and_retry"))
    if behaviour not in AMD_BEHAVIOURS:
        c.add("amd.behaviour", "must be one of " + ", ".join(AMD_BEHAVIOURS))
        return Amd()
    message = _message(c, table["message"], "amd.message", default) if "message" in table else None
    if behaviour == "leave_message" and "message" not in table:
        c.add("amd.message", "is required when behaviour is leave_message")
    if behaviour != "leave_message" and "message" in table:
        c.add("amd.message", "is only used when behaviour is leave_message")
    return Amd(behaviour=cast(Any, behaviour), message=message)


def _retry(c: _Checker, raw: Any) -> Retry:
    if raw is None:
        return Retry(delays=(DEFAULT_RETRY_DELAY,))
    table = c.table(raw, "retry", frozenset({"interval", "schedule", "max_attempts", "retry_on"}))
    if table is None:
        return Retry(delays=(DEFAULT_RETRY_DELAY,))
    delays: list[timedelta] = []
    if "interval" in table and "schedule" in table:
        c.add("retry", "give either interval or schedule, not both")
    elif "interval" in table or "schedule" in table:
        name = "interval" if "interval" in table else "schedule"
        value = table[name]
        if isinstance(value, str) and name == "schedule":
            items: list[Any] = value.split(",")
        elif isinstance(value, list) and name == "schedule":
            items = value
        else:
            items = [value]
        for item in items:
            try:
                if not isinstance(item, str):
                    raise ValueError(f"{item!r} is not a duration like 30m")
                delay = duration(item)
            except ValueError as exc:
                c.add(f"retry.{name}", str(exc))
                continue
            if not MIN_RETRY_DELAY <= delay <= MAX_RETRY_DELAY:
                c.add(f"retry.{name}", f"{item.strip()!r} must be between 1m and 30d")
            delays.append(delay)
    max_attempts = c.integer(table.get("max_attempts"), "retry.max_attempts", 3, 1, MAX_ATTEMPTS)
    retry_on = DEFAULT_RETRY_ON
    if "retry_on" in table:
        values = table["retry_on"]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            c.add("retry.retry_on", "must be a list of outcomes")
        else:
            for value in values:
                if value == "partial":
                    c.add("retry.retry_on", "'partial' is set by poll.retry_incomplete")
                elif value not in RETRYABLE_OUTCOMES:
                    c.add(
                        "retry.retry_on",
                        f"{value!r} is not one of " + ", ".join(sorted(RETRYABLE_OUTCOMES)),
                    )
            retry_on = frozenset(values) & RETRYABLE_OUTCOMES
    return Retry(
        delays=tuple(delays) or (DEFAULT_RETRY_DELAY,),
        max_attempts=max_attempts,
        retry_on=retry_on,
    )


def _pacing(c: _Checker, raw: Any) -> Pacing:
    if raw is None:
        return Pacing()
    table = c.table(raw, "pacing", frozenset({"calls_per_second", "max_concurrent", "batch_size"}))
    if table is None:
        return Pacing()
    cps = table.get("calls_per_second", 5.0)
    if isinstance(cps, bool) or not isinstance(cps, int | float):
        c.add("pacing.calls_per_second", "must be a number")
        cps = 5.0
    elif not 0 < cps <= MAX_CALLS_PER_SECOND:
        c.add("pacing.calls_per_second", f"must be above 0 and at most {MAX_CALLS_PER_SECOND:g}")
        cps = 5.0
    return Pacing(
        calls_per_second=float(cps),
        max_concurrent=c.integer(
            table.get("max_concurrent"), "pacing.max_concurrent", 50, 1, MAX_CONCURRENT
        ),
        batch_size=c.integer(table.get("batch_size"), "pacing.batch_size", 100, 1, MAX_BATCH_SIZE),
    )


def _days(c: _Checker, raw: Any) -> frozenset[int]:
    items: list[Any]
    if isinstance(raw, str):
        if raw.strip().lower() in ("daily", "every day", "all"):
            return frozenset(range(7))
        items = raw.split(",")
    elif isinstance(raw, list) and raw:
        items = raw
    else:
        c.add("window.days", 'must be like "mon-fri", "mon,wed,fri" or a list of days')
        return WEEKDAYS

    def day(name: str) -> int | None:
        name = name.strip().lower()  # "mon", "mond", "monday" all name Monday
        for index, full in enumerate(_FULL_DAY_NAMES):
            if len(name) >= 3 and full.startswith(name):
                return index
        return None

    days: set[int] = set()
    for item in items:
        if not isinstance(item, str):
            c.add("window.days", f"{item!r} is not a day name")
            continue
        first, sep, last = item.partition("-")
        a, b = day(first), day(last) if sep else day(first)
        if a is None or b is None:
            c.add("window.days", f"{item.strip()!r} is not a day (mon..sun) or range (mon-fri)")
            continue
        span = (b - a) % 7  # fri-mon wraps over the weekend
        days.update((a + i) % 7 for i in range(span + 1))
    return frozenset(days) or WEEKDAYS


def _clock(c: _Checker, raw: Any, path: str, default: time) -> time:
    if raw is None:
        return default
    if isinstance(raw, time):
        if raw.tzinfo is not None:
            c.add(path, "must be a local time without offset")
            return default
        return raw.replace(second=0, microsecond=0)
    if isinstance(raw, str) and (match := _HHMM.fullmatch(raw.strip())):
        return time(int(match.group(1)), int(match.group(2)))
    c.add(path, 'must be a time "HH:MM" (24-hour)')
    return default


def _window(c: _Checker, raw: Any) -> Window:
    if raw is None:
        return Window()
    table = c.table(raw, "window", frozenset({"days", "start", "end", "timezone"}))
    if table is None:
        return Window()
    days = _days(c, table["days"]) if "days" in table else WEEKDAYS
    start = _clock(c, table.get("start"), "window.start", time(9, 0))
    end = _clock(c, table.get("end"), "window.end", time(20, 0))
    if start == end:
        c.add("window.end", "must differ from start (the window would be empty)")
    timezone = table.get("timezone", "recipient")
    if not isinstance(timezone, str) or (timezone != "recipient" and not _zone_exists(timezone)):
        c.add("window.timezone", '"recipient" or an IANA zone name such as "America/New_York"')
        timezone = "recipient"
    return Window(days=days, start=start, end=end, timezone=timezone)


_TOP_KEYS = frozenset(
    {
        "name",
        "list",
        "caller_id",
        "start_date",
        "end_date",
        "platform_retries",
        "message",
        "poll",
        "amd",
        "retry",
        "pacing",
        "window",
    }
)


def _definition(c: _Checker, doc: dict[str, Any]) -> CampaignDefinition | None:
    c.table(doc, "", _TOP_KEYS)
    name = c.string(doc.get("name"), "name", required=True)
    if name is not None and len(name) > 200:
        c.add("name", "must be at most 200 characters")
    list_name = c.string(doc.get("list"), "list", required=True)
    caller_id = c.string(doc.get("caller_id"), "caller_id", required=True)
    if caller_id is not None and not _CALLER_ID.fullmatch(caller_id):
        c.add("caller_id", "must be a phone number: 8-15 digits with an optional leading +")
    message: Message | None = None
    if "message" not in doc:
        c.add("message", "is required ([message] with text or prompt_name)")
    else:
        message = _message(c, doc["message"], "message", None)
    poll = _poll(c, doc["poll"], message) if "poll" in doc else None
    amd = _amd(c, doc.get("amd"), message)
    retry = _retry(c, doc.get("retry"))
    pacing = _pacing(c, doc.get("pacing"))
    window = _window(c, doc.get("window"))
    start_date = c.date(doc.get("start_date"), "start_date")
    end_date = c.date(doc.get("end_date"), "end_date")
    if start_date and end_date and end_date < start_date:
        c.add("end_date", "must not be before start_date")
    platform_retries = c.boolean(doc.get("platform_retries"), "platform_retries", False)
    if c.problems or name is None or list_name is None or caller_id is None or message is None:
        return None
    return CampaignDefinition(
        name=name,
        list_name=list_name,
        caller_id=caller_id,
        message=message,
        poll=poll,
        amd=amd,
        retry=retry,
        pacing=pacing,
        window=window,
        start_date=start_date,
        end_date=end_date,
        platform_retries=platform_retries,
    )


def parse_definition(text: str, *, source: str = "<campaign>") -> CampaignDefinition:
    """Parse and validate a campaign file; `DefinitionError` lists every problem at once."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message carries "(at line L, column C)".
        raise DefinitionError(source, [("", f"not valid TOML: {exc}")]) from exc
    checker = _Checker()
    definition = _definition(checker, doc)
    if definition is None:
        raise DefinitionError(source, checker.problems)
    return definition


def load_definition(path: str | Path) -> CampaignDefinition:
    """Read and parse a campaign file (UTF-8)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputFileError(str(path), "no such file") from exc
    except UnicodeDecodeError as exc:
        raise InputFileError(str(path), "not UTF-8 text") from exc
    except OSError as exc:
        raise InputFileError(str(path), exc.strerror or "cannot be read") from exc
    return parse_definition(text, source=str(path))


# --------------------------------------------------------------------------- JSON freezing

JSON_VERSION = 1


def _msg_json(m: Message | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {"text": m.text, "prompt_name": m.prompt_name, "voice": m.voice, "language": m.language}


def _seconds(delta: timedelta) -> int | float:
    seconds = delta.total_seconds()
    return int(seconds) if seconds.is_integer() else seconds


def _clock_json(t: time) -> str:
    return t.isoformat(timespec="minutes" if not t.second and not t.microsecond else "auto")


def definition_to_json(d: CampaignDefinition) -> dict[str, Any]:
    """A JSON-safe dict of the definition (for `campaign.definition`)."""
    poll = None
    if d.poll is not None:
        poll = {
            "questions": [
                {
                    "key": q.key,
                    "kind": q.kind,
                    "prompt": _msg_json(q.prompt),
                    "choices": dict(q.choices),
                    "max_tries": q.max_tries,
                    "invalid_message": _msg_json(q.invalid_message),
                    "timeout_seconds": q.timeout_seconds,
                }
                for q in d.poll.questions
            ],
            "opt_out_digit": d.poll.opt_out_digit,
            "opt_out_message": _msg_json(d.poll.opt_out_message),
            "closing_message": _msg_json(d.poll.closing_message),
            "retry_incomplete": d.poll.retry_incomplete,
        }
    return {
        "version": JSON_VERSION,
        "name": d.name,
        "list_name": d.list_name,
        "caller_id": d.caller_id,
        "message": _msg_json(d.message),
        "poll": poll,
        "amd": {"behaviour": d.amd.behaviour, "message": _msg_json(d.amd.message)},
        "retry": {
            "delays_seconds": [_seconds(delay) for delay in d.retry.delays],
            "max_attempts": d.retry.max_attempts,
            "retry_on": sorted(d.retry.retry_on),
        },
        "pacing": {
            "calls_per_second": d.pacing.calls_per_second,
            "max_concurrent": d.pacing.max_concurrent,
            "batch_size": d.pacing.batch_size,
        },
        "window": {
            "days": sorted(d.window.days),
            "start": _clock_json(d.window.start),
            "end": _clock_json(d.window.end),
            "timezone": d.window.timezone,
        },
        "start_date": d.start_date.isoformat() if d.start_date else None,
        "end_date": d.end_date.isoformat() if d.end_date else None,
        "platform_retries": d.platform_retries,
    }


def _msg_from(data: Mapping[str, Any] | None) -> Message | None:
    if data is None:
        return None
    return Message(
        text=data["text"],
        prompt_name=data["prompt_name"],
        voice=data["voice"],
        language=data["language"],
    )


def _required(convert: Callable[[Any], Message | None], data: Any) -> Message:
    message = convert(data)
    if message is None:
        raise ValueError("a required message is missing")
    return message


def definition_from_json(data: Mapping[str, Any]) -> CampaignDefinition:
    """The exact inverse of `definition_to_json`; a malformed dict raises DefinitionError."""
    try:
        if data.get("version", JSON_VERSION) != JSON_VERSION:
            raise ValueError(f"unsupported definition version {data.get('version')!r}")
        raw_poll = data["poll"]
        poll = None
        if raw_poll is not None:
            poll = Poll(
                questions=tuple(
                    Question(
                        key=q["key"],
                        kind=q["kind"],
                        prompt=_required(_msg_from, q["prompt"]),
                        choices=dict(q["choices"]),
                        max_tries=int(q["max_tries"]),
                        invalid_message=_msg_from(q["invalid_message"]),
                        timeout_seconds=int(q["timeout_seconds"]),
                    )
                    for q in raw_poll["questions"]
                ),
                opt_out_digit=raw_poll["opt_out_digit"],
                opt_out_message=_msg_from(raw_poll["opt_out_message"]),
                closing_message=_msg_from(raw_poll["closing_message"]),
                retry_incomplete=bool(raw_poll["retry_incomplete"]),
            )
        retry, pacing, window = data["retry"], data["pacing"], data["window"]
        return CampaignDefinition(
            name=data["name"],
            list_name=data["list_name"],
            caller_id=data["caller_id"],
            message=_required(_msg_from, data["message"]),
            poll=poll,
            amd=Amd(behaviour=data["amd"]["behaviour"], message=_msg_from(data["amd"]["message"])),
            retry=Retry(
                delays=tuple(timedelta(seconds=s) for s in retry["delays_seconds"]),
                max_attempts=int(retry["max_attempts"]),
                retry_on=frozenset(retry["retry_on"]),
            ),
            pacing=Pacing(
                calls_per_second=float(pacing["calls_per_second"]),
                max_concurrent=int(pacing["max_concurrent"]),
                batch_size=int(pacing["batch_size"]),
            ),
            window=Window(
                days=frozenset(int(day) for day in window["days"]),
                start=time.fromisoformat(window["start"]),
                end=time.fromisoformat(window["end"]),
                timezone=window["timezone"],
            ),
            start_date=date.fromisoformat(data["start_date"]) if data["start_date"] else None,
            end_date=date.fromisoformat(data["end_date"]) if data["end_date"] else None,
            platform_retries=bool(data["platform_retries"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DefinitionError("<stored definition>", [("", f"malformed: {exc!r}")]) from exc
