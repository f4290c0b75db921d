"""The campaign file: samples parse, every problem is listed with its path, JSON round trip,
`{column}` rendering and durations."""

from __future__ import annotations

import json
from datetime import date, time, timedelta
from pathlib import Path

import pytest

from campaigns.definition import (
    Amd,
    CampaignDefinition,
    Message,
    Retry,
    Window,
    definition_from_json,
    definition_to_json,
    duration,
    format_duration,
    load_definition,
    parse_definition,
    placeholders,
    render,
)
from campaigns.errors import DefinitionError, InputFileError

SAMPLES = Path(__file__).resolve().parents[2] / "sample_lists"

MINIMAL = """
name = "Minimal"
list = "clean"
caller_id = "+12025550100"
[message]
text = "Hello {name}"
"""


def problems_of(text: str) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as info:
        parse_definition(text, source="bad.toml")
    assert info.value.source == "bad.toml"
    return info.value.problems


# --------------------------------------------------------------------------- samples


def test_reminder_sample_parses() -> None:
    d = load_definition(SAMPLES / "reminder.toml")
    assert d.list_name == "clean"
    assert d.poll is None
    assert d.message.text is not None
    assert set(placeholders(d.message.text)) <= {"name", "city", "phone"}
    assert d.amd.behaviour == "leave_message"
    assert d.amd.message is not None
    assert d.retry.delays == (timedelta(minutes=15), timedelta(hours=2), timedelta(days=1))
    assert d.window.days == frozenset(range(5))
    assert d.window.timezone == "recipient"


def test_poll_sample_parses() -> None:
    d = load_definition(SAMPLES / "poll.toml")
    assert d.list_name == "clean"
    assert d.poll is not None
    rating, recommend = d.poll.questions
    assert (rating.kind, recommend.kind) == ("dtmf", "asr")
    assert set(rating.choices) == {"1", "2", "3", "4", "5"}
    assert set(recommend.choices.values()) == {"yes", "no"}
    assert d.poll.opt_out_digit == "9"
    assert d.poll.opt_out_message is not None
    assert d.amd.behaviour == "leave_message"
    assert len(d.retry.delays) > 1
    for message in (d.message, rating.prompt, recommend.prompt, d.amd.message):
        assert message is not None
        assert set(placeholders(message.text or "")) <= {"name", "city", "phone"}


def test_minimal_file_gets_documented_defaults() -> None:
    d = parse_definition(MINIMAL)
    assert d.poll is None
    assert d.amd == Amd(behaviour="hangup_and_retry", message=None)
    assert d.retry == Retry(delays=(timedelta(minutes=30),), max_attempts=3)
    assert d.retry.retry_on == frozenset({"no_answer", "busy", "failed", "machine", "unknown"})
    assert (d.pacing.calls_per_second, d.pacing.max_concurrent, d.pacing.batch_size) == (
        5.0,
        50,
        100,
    )
    assert d.window == Window()
    assert (d.window.start, d.window.end) == (time(9), time(20))
    assert d.message == Message(text="Hello {name}", voice="female", language="en-US")


def test_messages_inherit_voice_and_language_from_the_main_message() -> None:
    text = (
        MINIMAL.replace('text = "Hello {name}"', 'text = "Hi"\nvoice = "male"\nlanguage = "en-GB"')
        + """
[poll]
closing_message = { text = "Bye", voice = "female" }
[[poll.questions]]
key = "q"
kind = "dtmf"
prompt_name = "question-1"
choices = { "1" = "yes" }
"""
    )
    d = parse_definition(text)
    assert d.poll is not None
    assert d.poll.questions[0].prompt == Message(
        prompt_name="question-1", voice="male", language="en-GB"
    )
    assert d.poll.closing_message == Message(text="Bye", voice="female", language="en-GB")


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        ('"mon-fri"', {0, 1, 2, 3, 4}),
        ('"mon,wed,fri"', {0, 2, 4}),
        ('"Sat-Sun"', {5, 6}),
        ('"fri-mon"', {4, 5, 6, 0}),
        ('["monday", "tue-thu"]', {0, 1, 2, 3}),
        ('"daily"', set(range(7))),
        ('"sun"', {6}),
    ],
)
def test_window_days(days: str, expected: set[int]) -> None:
    d = parse_definition(MINIMAL + f"[window]\ndays = {days}\n")
    assert d.window.days == frozenset(expected)


def test_window_accepts_toml_times_dates_and_a_fixed_zone() -> None:
    d = parse_definition(
        MINIMAL.replace('list = "clean"', 'list = "clean"\nstart_date = 2024-10-01')
        + '[window]\nstart = 22:00:00\nend = "06:30"\ntimezone = "Asia/Kolkata"\n'
    )
    assert (d.window.start, d.window.end, d.window.timezone) == (
        time(22),
        time(6, 30),
        "Asia/Kolkata",
    )
    assert d.start_date == date(2024, 10, 1)


# --------------------------------------------------------------------------- invalid files

BAD = """
name = ""
list = "clean"
caller_id = "12-34"
colour = "blue"
end_date = 2024-01-01
start_date = 2024-02-01

[message]
text = "Hello {name"
voice = "robot"

[poll]
opt_out_digit = "9"
[[poll.questions]]
key = "1st"
kind = "dtmf"
text = "Rate us"
choices = { "1" = "bad", "9" = "good" }
[[poll.questions]]
key = "again"
kind = "dtmf"
text = "Again?"
choices = { "yes" = "y" }
max_tries = 0
[[poll.questions]]
key = "again"
kind = "sms"
text = "Third"
choices = { "a" = "b" }
extra = 1

[amd]
behaviour = "leave_message"

[retry]
schedule = "15m,soon,40d"
max_attempts = 50
retry_on = ["busy", "completed", "partial"]

[pacing]
calls_per_second = 0
max_concurrent = -1
batch_size = 5000

[window]
days = "mon-frx"
start = "9am"
timezone = "Mars/Olympus"
"""


def test_an_invalid_file_lists_every_problem_with_its_path() -> None:
    problems = problems_of(BAD)
    paths = [path for path, _ in problems]
    assert sorted(paths) == sorted(
        [
            "colour",
            "name",
            "caller_id",
            "message.text",
            "message.voice",
            "poll.questions[0].key",
            "poll.questions[0].choices",  # uses the opt-out digit
            "poll.questions[1].choices",
            "poll.questions[1].max_tries",
            "poll.questions[2].extra",
            "poll.questions[2].key",  # "again" twice
            "poll.questions[2].kind",
            "amd.message",
            "retry.schedule",  # "soon"
            "retry.schedule",  # 40d
            "retry.max_attempts",
            "retry.retry_on",  # completed
            "retry.retry_on",  # partial
            "pacing.calls_per_second",
            "pacing.max_concurrent",
            "pacing.batch_size",
            "window.days",
            "window.start",
            "window.timezone",
            "end_date",
        ]
    )
    why = dict(problems)
    assert why["poll.questions[1].choices"] == "must map digits 0-9,*,# to labels"
    assert "opt-out digit" in why["poll.questions[0].choices"]
    assert why["colour"] == "unknown key"
    assert "leave_message" in why["amd.message"]


@pytest.mark.parametrize(
    ("extra", "path", "why"),
    [
        ("[message.extra]\nx = 1", "message.extra", "unknown key"),
        (
            "[amd]\nbehaviour = 'leave_message'\nmessage = {voice = 'male'}",
            "amd.message.text",
            "required",
        ),
        (
            "[amd]\nbehaviour = 'leave_message'\nmessage = {text = 'a', prompt_name = 'b'}",
            "amd.message",
            "not both",
        ),
        ("[pacing]\ncalls_per_second = 1001", "pacing.calls_per_second", "at most 1000"),
        ("[pacing]\nbatch_size = 1001", "pacing.batch_size", "between 1 and 1000"),
        ("[pacing]\ncalls_per_second = true", "pacing.calls_per_second", "number"),
        ("[retry]\ninterval = '30m'\nschedule = '1h'", "retry", "not both"),
        ("[retry]\ninterval = '30s'", "retry.interval", "between 1m and 30d"),
        ("[retry]\nmax_attempts = 0", "retry.max_attempts", "between 1 and 20"),
        ("[retry]\nretry_on = ['rejected']", "retry.retry_on", "not one of"),
        ("[window]\nend = '09:00'", "window.end", "must differ"),
        ("[window]\nend = '24:00'", "window.end", "HH:MM"),
        ("[amd]\nbehaviour = 'ignore'\nmessage = 'hi'", "amd.message", "only used"),
        ("[amd]\nbehaviour = 'shout'", "amd.behaviour", "one of"),
        ("[poll]\nretry_incomplete = true", "poll.questions", "at least one"),
        (
            "[[poll.questions]]\nkey = 'a'\nkind = 'asr'\ntext = 'x'\nchoices = {Yes = 'y', yes = 'n'}",
            "poll.questions[0].choices",
            "given twice",
        ),
        (
            "[[poll.questions]]\nkey = 'a'\nkind = 'dtmf'\nchoices = {1 = 'y'}",
            "poll.questions[0].text",
            "required",
        ),
        (
            "[poll]\nopt_out_digit = 9\n[[poll.questions]]\nkey = 'a'\nkind = 'dtmf'\ntext = 'x'\n"
            "choices = {1 = 'y'}",
            "poll.opt_out_digit",
            "as a string",
        ),
        (
            "[[poll.questions]]\nkey = 'a'\nkind = 'dtmf'\ntext = 'x'\nchoices = {1 = 'y'}\n"
            "[[poll.questions]]\nkey = 'a'\nkind = 'dtmf'\ntext = 'y'\nchoices = {1 = 'y'}",
            "poll.questions[1].key",
            "used twice",
        ),
    ],
)
def test_single_problems(extra: str, path: str, why: str) -> None:
    problems = problems_of(MINIMAL + extra + "\n")
    assert any(p == path and why in w for p, w in problems), problems


def test_missing_required_keys_are_all_reported() -> None:
    problems = problems_of('[window]\ndays = "mon"\n')
    assert {path for path, _ in problems} == {"name", "list", "caller_id", "message"}


def test_toml_syntax_error_gives_line_and_column() -> None:
    problems = problems_of('name = "x"\nlist = \n')
    assert len(problems) == 1
    assert "line 2" in problems[0][1]
    assert "column" in problems[0][1]


def test_missing_file_is_an_input_file_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        load_definition(tmp_path / "nope.toml")


def test_non_utf8_file_is_an_input_file_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(MINIMAL.replace("Hello", "H\xe9llo").encode("latin-1"))
    with pytest.raises(InputFileError, match="UTF-8"):
        load_definition(path)


def test_load_reports_the_file_as_source(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(MINIMAL + "[pacing]\nmax_concurrent = 0\n", encoding="utf-8")
    with pytest.raises(DefinitionError) as info:
        load_definition(path)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- JSON round trip

ODD = (
    MINIMAL.replace('list = "clean"', 'list = "clean"\nstart_date = "2024-10-01"')
    .replace('caller_id = "+12025550100"', 'caller_id = "12025550100"\nend_date = 2024-10-31')
    .replace('name = "Minimal"', 'name = "Minimal"\nplatform_retries = true')
    .replace('text = "Hello {name}"', 'prompt_name = "welcome"\nlanguage = "hi-IN"')
    + """
[retry]
interval = "1h30m"
max_attempts = 20
retry_on = []
[window]
days = ["sat", "sun"]
start = "21:15"
end = "01:00"
timezone = "Australia/Lord_Howe"
[amd]
behaviour = "ignore"
[pacing]
calls_per_second = 0.5
"""
)


@pytest.mark.parametrize("source", ["reminder", "poll", "minimal", "odd"])
def test_json_round_trip_is_exact(source: str) -> None:
    if source in ("reminder", "poll"):
        d = load_definition(SAMPLES / f"{source}.toml")
    else:
        d = parse_definition(MINIMAL if source == "minimal" else ODD)
    frozen = json.loads(json.dumps(definition_to_json(d)))
    back = definition_from_json(frozen)
    assert back == d
    assert definition_to_json(back) == frozen


def test_round_trip_keeps_odd_values() -> None:
    d = definition_from_json(json.loads(json.dumps(definition_to_json(parse_definition(ODD)))))
    assert d.retry == Retry(
        delays=(timedelta(hours=1, minutes=30),), max_attempts=20, retry_on=frozenset()
    )
    assert d.window == Window(
        days=frozenset({5, 6}), start=time(21, 15), end=time(1), timezone="Australia/Lord_Howe"
    )
    assert (d.start_date, d.end_date, d.platform_retries) == (
        date(2024, 10, 1),
        date(2024, 10, 31),
        True,
    )
    assert d.message == Message(prompt_name="welcome", language="hi-IN")
    assert d.pacing.calls_per_second == 0.5


def test_round_trip_of_a_hand_built_definition_with_sub_second_delays() -> None:
    d = CampaignDefinition(
        name="x",
        list_name="l",
        caller_id="+4915112345678",
        message=Message(text="hi"),
        poll=None,
        amd=Amd(),
        retry=Retry(delays=(timedelta(seconds=90.5),)),
        pacing=parse_definition(MINIMAL).pacing,
        window=Window(start=time(8, 0, 30)),
    )
    assert definition_from_json(json.loads(json.dumps(definition_to_json(d)))) == d


@pytest.mark.parametrize("broken", [{}, {"version": 99}, {"name": "x", "poll": None}])
def test_malformed_stored_definition_is_a_definition_error(broken: dict[str, object]) -> None:
    with pytest.raises(DefinitionError):
        definition_from_json(broken)


# --------------------------------------------------------------------------- render


@pytest.mark.parametrize(
    ("text", "attributes", "expected"),
    [
        ("Hello {name}", {"name": "Ana"}, "Hello Ana"),
        ("Hello {name} from {city}", {"name": "Ana", "city": "Pune"}, "Hello Ana from Pune"),
        ("Hello {nickname}!", {"name": "Ana"}, "Hello !"),
        ("Hello {Name}", {"name": "Ana"}, "Hello Ana"),
        ("Hello { name }", {"name": "Ana"}, "Hello Ana"),
        ("{{name}} is {name}", {"name": "Ana"}, "{name} is Ana"),
        ("a }} b", {}, "a } b"),
        ("unclosed {name", {"name": "Ana"}, "unclosed {name"),
        ("stray } brace", {}, "stray } brace"),
        ("{}", {}, ""),
        ("{name}{name}", {"name": "Jo"}, "JoJo"),
        ("value {n}", {"n": None}, "value "),
        ("no braces", {"name": "x"}, "no braces"),
        ("{a}", {"a": "{b}", "b": "x"}, "{b}"),  # values are not re-rendered
    ],
)
def test_render(text: str, attributes: dict[str, str], expected: str) -> None:
    assert render(text, attributes) == expected


def test_placeholders_lists_columns_in_order() -> None:
    assert placeholders("Hi {name}, {city} {name} {{literal}}") == ("name", "city")


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        (" 1D 2H ", timedelta(days=1, hours=2)),
        ("90m", timedelta(minutes=90)),
    ],
)
def test_duration(text: str, expected: timedelta) -> None:
    assert duration(text) == expected


@pytest.mark.parametrize("text", ["", "m", "15", "15x", "30m1h", "-5m", "1.5h", "soon"])
def test_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        duration(text)


@pytest.mark.parametrize(
    ("delta", "text"),
    [(timedelta(minutes=90), "1h30m"), (timedelta(days=1, seconds=5), "1d5s"), (timedelta(), "0s")],
)
def test_format_duration(delta: timedelta, text: str) -> None:
    assert format_duration(delta) == text
    if delta:
        assert duration(text) == delta
