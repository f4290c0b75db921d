"""Pure scheduling rules as tables: windows in several zones and across DST, window openings,
retry delays, outcome classification, retry decisions and the pacing arithmetic."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from itertools import product

import pytest

from campaigns.definition import Retry, Window, parse_definition
from campaigns.scheduling import (
    PACING_MARGIN,
    Decision,
    Outcome,
    campaign_active,
    classify_attempt,
    decide_after_attempt,
    dispatch_allowance,
    in_window,
    next_allowed_start,
    next_window_start,
    pacing_slot,
    retry_delay,
    zones_of,
)

NY = ("America/New_York",)
KOLKATA = ("Asia/Kolkata",)
LORD_HOWE = ("Australia/Lord_Howe",)
US_CENTRAL_MOUNTAIN = ("America/Chicago", "America/Denver")
WEEKDAYS = frozenset(range(5))
EVERY_DAY = frozenset(range(7))
FRIDAY = frozenset({4})
WEEKEND = frozenset({5, 6})
MON_WED_FRI = frozenset({0, 2, 4})
OFFICE = Window(days=WEEKDAYS, start=time(9), end=time(20))


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def window(start: str, end: str, days: frozenset[int] = EVERY_DAY, tz: str = "recipient") -> Window:
    return Window(
        days=days, start=time.fromisoformat(start), end=time.fromisoformat(end), timezone=tz
    )


NIGHT_FRIDAY_UTC = window("22:00", "02:00", FRIDAY, "UTC")
EVENING_UTC = window("18:00", "00:00", EVERY_DAY, "UTC")

# --------------------------------------------------------------------------- in_window

# 2024-07-15 is a Monday; US summer time (EDT -4, CDT -5, MDT -6), Kolkata +5:30,
# Lord Howe +10:30 in winter and +11 in summer (a half-hour DST shift).
# fmt: off
WINDOW_CASES: list[tuple[str, Window, Sequence[str], str, bool]] = [
    ("NY before opening", OFFICE, NY, "2024-07-15T12:59", False),
    ("NY opening is inclusive", OFFICE, NY, "2024-07-15T13:00", True),
    ("NY last minute", OFFICE, NY, "2024-07-15T23:59", True),
    ("NY closing is exclusive", OFFICE, NY, "2024-07-16T00:00", False),
    ("NY saturday", OFFICE, NY, "2024-07-20T15:00", False),
    ("NY friday 19:30", OFFICE, NY, "2024-07-19T23:30", True),
    ("Kolkata 08:59", OFFICE, KOLKATA, "2024-07-15T03:29", False),
    ("Kolkata 09:00", OFFICE, KOLKATA, "2024-07-15T03:30", True),
    ("Kolkata 19:59", OFFICE, KOLKATA, "2024-07-15T14:29", True),
    ("Kolkata 20:00", OFFICE, KOLKATA, "2024-07-15T14:30", False),
    ("Kolkata monday 04:30 is sunday in UTC", OFFICE, KOLKATA, "2024-07-14T23:00", False),
    ("Lord Howe monday 09:00 is sunday in UTC", OFFICE, LORD_HOWE, "2024-07-14T22:30", True),
    ("Lord Howe winter 08:59", OFFICE, LORD_HOWE, "2024-07-14T22:29", False),
    ("Lord Howe summer 09:00", OFFICE, LORD_HOWE, "2024-10-06T22:00", True),
    ("Lord Howe summer 08:59", OFFICE, LORD_HOWE, "2024-10-06T21:59", False),
    # Chicago and Denver: open only from 09:00 in Denver until 20:00 in Chicago.
    ("US two zones, Denver not open yet", OFFICE, US_CENTRAL_MOUNTAIN, "2024-07-15T14:30", False),
    ("US two zones, both open", OFFICE, US_CENTRAL_MOUNTAIN, "2024-07-15T15:00", True),
    ("US two zones, Chicago last minute", OFFICE, US_CENTRAL_MOUNTAIN, "2024-07-16T00:59", True),
    ("US two zones, Chicago closed", OFFICE, US_CENTRAL_MOUNTAIN, "2024-07-16T01:00", False),
    ("Chicago alone is open", OFFICE, ("America/Chicago",), "2024-07-15T14:30", True),
    # DST change days in New York: 2024-03-10 (02:00 -> 03:00) and 2024-11-03 (02:00 -> 01:00).
    ("NY spring day 08:59 EDT", window("09:00", "20:00"), NY, "2024-03-10T12:59", False),
    ("NY spring day 09:00 EDT", window("09:00", "20:00"), NY, "2024-03-10T13:00", True),
    ("NY day before spring 08:30 EST", window("09:00", "20:00"), NY, "2024-03-09T13:30", False),
    ("NY autumn day 08:59 EST", window("09:00", "20:00"), NY, "2024-11-03T13:59", False),
    ("NY autumn day 09:00 EST", window("09:00", "20:00"), NY, "2024-11-03T14:00", True),
    ("NY autumn day 19:59 EST", window("09:00", "20:00"), NY, "2024-11-04T00:59", True),
    ("window in the gap: 01:59 EST", window("01:30", "02:30"), NY, "2024-03-10T06:59", True),
    ("window in the gap: jump to 03:00", window("01:30", "02:30"), NY, "2024-03-10T07:00", False),
    ("fall back leaves 01:15-05:00", window("01:15", "05:00"), NY, "2024-11-03T06:00", False),
    ("fall back re-enters at 01:15 EST", window("01:15", "05:00"), NY, "2024-11-03T06:15", True),
    ("Lord Howe spring 01:59", window("02:00", "03:00"), LORD_HOWE, "2024-10-05T15:29", False),
    ("Lord Howe spring jumps to 02:30", window("02:00", "03:00"), LORD_HOWE, "2024-10-05T15:30", True),
    ("Lord Howe autumn 01:59 LHDT", window("01:45", "03:00"), LORD_HOWE, "2024-04-06T14:59", True),
    ("Lord Howe falls back to 01:30", window("01:45", "03:00"), LORD_HOWE, "2024-04-06T15:00", False),
    ("Lord Howe second 01:45", window("01:45", "03:00"), LORD_HOWE, "2024-04-06T15:15", True),
    # Windows crossing midnight: the day test is on the day the window started (friday).
    ("night fri 23:00", NIGHT_FRIDAY_UTC, (), "2024-07-19T23:00", True),
    ("night sat 01:59", NIGHT_FRIDAY_UTC, (), "2024-07-20T01:59", True),
    ("night sat 02:00", NIGHT_FRIDAY_UTC, (), "2024-07-20T02:00", False),
    ("night sat 23:00", NIGHT_FRIDAY_UTC, (), "2024-07-20T23:00", False),
    ("night fri 01:00 began thursday", NIGHT_FRIDAY_UTC, (), "2024-07-19T01:00", False),
    ("night fri 21:59", NIGHT_FRIDAY_UTC, (), "2024-07-19T21:59", False),
    ("midnight end", EVENING_UTC, (), "2024-07-19T23:59", True),
    ("midnight end is exclusive", EVENING_UTC, (), "2024-07-20T00:00", False),
    # Day lists.
    ("weekend window on saturday", window("10:00", "16:00", WEEKEND), NY, "2024-07-20T16:00", True),
    ("weekend window on monday", window("10:00", "16:00", WEEKEND), NY, "2024-07-15T16:00", False),
    ("mon,wed,fri on wednesday", window("09:00", "17:00", MON_WED_FRI), KOLKATA, "2024-07-17T06:00", True),
    ("mon,wed,fri on tuesday", window("09:00", "17:00", MON_WED_FRI), KOLKATA, "2024-07-16T06:00", False),
    # No zone: nobody is called.
    ("no zone known", OFFICE, (), "2024-07-15T15:00", False),
    ("an unknown zone", OFFICE, ("Etc/Unknown",), "2024-07-15T15:00", False),
]
# fmt: on


@pytest.mark.parametrize(
    ("win", "zones", "now", "expected"),
    [pytest.param(w, z, n, e, id=name) for name, w, z, n, e in WINDOW_CASES],
)
def test_in_window(win: Window, zones: Sequence[str], now: str, expected: bool) -> None:
    zones = zones or zones_of("", win)  # a fixed-zone window needs no recipient zone
    assert in_window(win, zones, utc(now)) is expected


def test_in_window_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        in_window(OFFICE, NY, datetime(2024, 7, 15, 15))


# --------------------------------------------------------------------------- zones_of


@pytest.mark.parametrize(
    ("time_zones", "win", "expected"),
    [
        ("America/Chicago America/Denver", OFFICE, US_CENTRAL_MOUNTAIN),
        ("America/Chicago,America/Denver", OFFICE, US_CENTRAL_MOUNTAIN),
        ("Asia/Kolkata", OFFICE, KOLKATA),
        ("Asia/Kolkata Asia/Kolkata", OFFICE, KOLKATA),
        (None, OFFICE, ()),
        ("", OFFICE, ()),
        ("Etc/Unknown", OFFICE, ()),  # what phonenumbers says when it does not know
        ("America/Chicago Bogus/Zone", OFFICE, ()),  # one unknown zone: not callable at all
        ("Asia/Kolkata", window("09:00", "20:00", tz="America/New_York"), NY),
        (None, window("09:00", "20:00", tz="UTC"), ("UTC",)),
    ],
)
def test_zones_of(time_zones: str | None, win: Window, expected: tuple[str, ...]) -> None:
    assert zones_of(time_zones, win) == expected


# --------------------------------------------------------------------------- next_window_start

# fmt: off
OPENING_CASES: list[tuple[str, Window, Sequence[str], str, str | None]] = [
    ("already open: now", OFFICE, NY, "2024-07-15T15:07:31", "2024-07-15T15:07:31"),
    ("before opening", OFFICE, NY, "2024-07-15T05:00", "2024-07-15T13:00"),
    ("friday night to monday", OFFICE, NY, "2024-07-20T01:00", "2024-07-22T13:00"),
    ("friday 20:00 exactly to monday", OFFICE, NY, "2024-07-20T00:00", "2024-07-22T13:00"),
    ("saturday to monday", OFFICE, NY, "2024-07-20T15:00", "2024-07-22T13:00"),
    ("Kolkata evening to next morning", OFFICE, KOLKATA, "2024-07-15T15:00", "2024-07-16T03:30"),
    ("Kolkata friday evening to monday", OFFICE, KOLKATA, "2024-07-19T15:00", "2024-07-22T03:30"),
    ("Lord Howe winter", OFFICE, LORD_HOWE, "2024-07-14T12:00", "2024-07-14T22:30"),
    ("Lord Howe weekend across DST start", OFFICE, LORD_HOWE, "2024-10-04T12:00", "2024-10-06T22:00"),
    ("Chicago+Denver: Denver opens last", OFFICE, US_CENTRAL_MOUNTAIN, "2024-07-15T12:00", "2024-07-15T15:00"),
    ("Chicago+Denver: weekend", OFFICE, US_CENTRAL_MOUNTAIN, "2024-07-20T01:00", "2024-07-22T15:00"),
    ("NY weekend across DST end", OFFICE, NY, "2024-11-02T15:00", "2024-11-04T14:00"),
    ("NY weekend across DST start", OFFICE, NY, "2024-03-09T15:00", "2024-03-11T13:00"),
    ("spring gap: first instant past 02:30", window("02:30", "04:00"), NY, "2024-03-10T05:00", "2024-03-10T07:00"),
    ("window inside the gap: next day", window("01:30", "02:30"), NY, "2024-03-10T07:00", "2024-03-11T05:30"),
    ("fall back: second 01:15", window("01:15", "05:00"), NY, "2024-11-03T06:00", "2024-11-03T06:15"),
    ("fall back: clock jumps into a night window", window("09:00", "01:30"), NY, "2024-11-03T05:30", "2024-11-03T06:00"),
    ("Lord Howe spring jump lands in window", window("02:00", "03:00"), LORD_HOWE, "2024-10-05T12:00", "2024-10-05T15:30"),
    ("Lord Howe second 01:45", window("01:45", "03:00"), LORD_HOWE, "2024-04-06T15:00", "2024-04-06T15:15"),
    ("night window on fridays", NIGHT_FRIDAY_UTC, ("UTC",), "2024-07-20T02:00", "2024-07-26T22:00"),
    ("Tokyo and New York never overlap", OFFICE, ("Asia/Tokyo", "America/New_York"), "2024-07-15T00:00", None),
    ("no zones", OFFICE, (), "2024-07-15T00:00", None),
    ("unknown zone", OFFICE, ("Nowhere/Land",), "2024-07-15T00:00", None),
]
# fmt: on


@pytest.mark.parametrize(
    ("win", "zones", "after", "expected"),
    [pytest.param(w, z, a, e, id=name) for name, w, z, a, e in OPENING_CASES],
)
def test_next_window_start(
    win: Window, zones: Sequence[str], after: str, expected: str | None
) -> None:
    found = next_window_start(win, zones, utc(after))
    assert found == (utc(expected) if expected else None)
    if found is not None:
        assert found.utcoffset() == timedelta(0)
        assert in_window(win, zones, found)


@pytest.mark.parametrize(
    ("win", "zones", "after"),
    [
        (OFFICE, US_CENTRAL_MOUNTAIN, "2024-11-01T22:17"),
        (window("01:15", "05:00"), NY, "2024-11-02T20:00"),
        (window("23:30", "00:30", WEEKEND), LORD_HOWE, "2024-04-05T10:03"),
        (window("02:10", "02:50"), LORD_HOWE, "2024-10-04T18:00"),
        (OFFICE, ("Asia/Kolkata", "Asia/Dubai"), "2024-07-18T13:00"),
    ],
)
def test_next_window_start_is_the_first_open_minute(
    win: Window, zones: Sequence[str], after: str
) -> None:
    """Against a brute-force minute scan: no earlier minute is open."""
    start = utc(after)
    found = next_window_start(win, zones, start)
    assert found is not None
    minute = start
    while minute < found:
        assert not in_window(win, zones, minute), minute
        minute += timedelta(minutes=1)
    assert in_window(win, zones, found)


def test_next_window_start_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_window_start(OFFICE, NY, datetime(2024, 7, 15))


@pytest.mark.parametrize(
    ("after", "start_date", "end_date", "expected"),
    [
        ("2024-07-15T05:00", None, None, "2024-07-15T13:00"),
        ("2024-07-15T05:00", date(2024, 7, 17), None, "2024-07-17T13:00"),
        ("2024-07-15T05:00", None, date(2024, 7, 15), "2024-07-15T13:00"),
        ("2024-07-16T05:00", None, date(2024, 7, 15), None),
        ("2024-07-20T01:00", None, date(2024, 7, 19), None),  # the next opening is monday
    ],
)
def test_next_allowed_start_respects_campaign_dates(
    after: str, start_date: date | None, end_date: date | None, expected: str | None
) -> None:
    found = next_allowed_start(OFFICE, NY, utc(after), start_date=start_date, end_date=end_date)
    assert found == (utc(expected) if expected else None)


CAMPAIGN = """
name = "x"
list = "clean"
caller_id = "+12025550100"
start_date = 2024-07-15
end_date = 2024-07-19
[message]
text = "hi"
"""


@pytest.mark.parametrize(
    ("now", "zones", "expected"),
    [
        ("2024-07-15T12:00", NY, True),
        ("2024-07-15T02:00", NY, False),  # still the 14th in New York
        ("2024-07-14T20:00", KOLKATA, True),  # already the 15th in Kolkata
        ("2024-07-19T20:00", KOLKATA, False),  # the 20th in Kolkata
        ("2024-07-19T20:00", NY, True),
        ("2024-07-19T20:00", ("America/New_York", "Asia/Kolkata"), False),
        ("2024-07-19T20:00", (), True),  # UTC date when no zone is given
    ],
)
def test_campaign_active(now: str, zones: Sequence[str], expected: bool) -> None:
    assert campaign_active(parse_definition(CAMPAIGN), utc(now), zones) is expected


# --------------------------------------------------------------------------- retry delays

SCHEDULE = Retry(
    delays=(timedelta(minutes=15), timedelta(hours=2), timedelta(days=1)), max_attempts=5
)
INTERVAL = Retry(delays=(timedelta(minutes=30),))


@pytest.mark.parametrize(
    ("retry", "attempts_made", "expected"),
    [
        (SCHEDULE, 1, timedelta(minutes=15)),
        (SCHEDULE, 2, timedelta(hours=2)),
        (SCHEDULE, 3, timedelta(days=1)),
        (SCHEDULE, 4, timedelta(days=1)),
        (SCHEDULE, 19, timedelta(days=1)),
        (INTERVAL, 1, timedelta(minutes=30)),
        (INTERVAL, 7, timedelta(minutes=30)),
    ],
)
def test_retry_delay(retry: Retry, attempts_made: int, expected: timedelta) -> None:
    assert retry_delay(retry, attempts_made) == expected


def test_retry_delay_needs_an_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        retry_delay(SCHEDULE, 0)


def test_schedule_from_the_file_drives_the_delays() -> None:
    d = parse_definition(CAMPAIGN + '[retry]\nschedule = "15m, 2h ,1d"\n')
    assert [retry_delay(d.retry, n) for n in (1, 2, 3, 4)] == [
        timedelta(minutes=15),
        timedelta(hours=2),
        timedelta(days=1),
        timedelta(days=1),
    ]


# --------------------------------------------------------------------------- classification

ANSWERED = {"answered": True}
# fmt: off
CLASSIFY_CASES: list[tuple[str, dict[str, object], Outcome]] = [
    ("human, no poll", {**ANSWERED, "disconnect_reason": "normal", "amd_result": "human"}, Outcome.COMPLETED),
    ("human, poll complete", {**ANSWERED, "amd_result": "human", "has_poll": True, "poll_complete": True}, Outcome.COMPLETED),
    ("human, poll cut short", {**ANSWERED, "disconnect_reason": "normal", "has_poll": True}, Outcome.PARTIAL),
    ("amd unknown counts as human", {**ANSWERED, "amd_result": "unknown", "has_poll": True}, Outcome.PARTIAL),
    ("no amd result counts as human", {**ANSWERED, "disconnect_reason": "normal"}, Outcome.COMPLETED),
    ("machine, hung up", {**ANSWERED, "amd_result": "machine", "disconnect_reason": "cancelled"}, Outcome.MACHINE),
    ("machine, message left", {**ANSWERED, "amd_result": "machine", "amd_behaviour": "leave_message", "message_left": True}, Outcome.VOICEMAIL),
    ("machine, message not finished", {**ANSWERED, "amd_result": "machine", "amd_behaviour": "leave_message"}, Outcome.MACHINE),
    ("machine, hangup_and_retry", {**ANSWERED, "amd_result": "machine", "message_left": True}, Outcome.MACHINE),
    ("machine, amd ignored", {**ANSWERED, "amd_result": "MACHINE", "amd_behaviour": "ignore"}, Outcome.COMPLETED),
    ("opt-out wins", {**ANSWERED, "has_poll": True, "opted_out": True}, Outcome.OPTED_OUT),
    ("connected event lost, normal end", {"disconnect_reason": "normal"}, Outcome.COMPLETED),
    ("connected event lost, amd says machine", {"amd_result": "machine", "disconnect_reason": "busy"}, Outcome.MACHINE),
    ("answered, no final event", {**ANSWERED, "has_poll": True, "poll_complete": True}, Outcome.COMPLETED),
    ("no-answer", {"disconnect_reason": "no-answer"}, Outcome.NO_ANSWER),
    ("no_answer spelled with _", {"disconnect_reason": "no_answer"}, Outcome.NO_ANSWER),
    ("busy", {"disconnect_reason": "busy"}, Outcome.BUSY),
    ("Busy any case", {"disconnect_reason": " Busy "}, Outcome.BUSY),
    ("rejected", {"disconnect_reason": "rejected"}, Outcome.REJECTED),
    ("failed", {"disconnect_reason": "failed"}, Outcome.FAILED),
    ("invalid-number", {"disconnect_reason": "invalid-number"}, Outcome.INVALID_NUMBER),
    ("cancelled before answer", {"disconnect_reason": "cancelled"}, Outcome.CANCELLED),
    ("unknown reason counts as failed", {"disconnect_reason": "congestion"}, Outcome.FAILED),
    ("no final event", {}, Outcome.UNKNOWN),
]
# fmt: on


@pytest.mark.parametrize(
    ("given", "expected"), [pytest.param(g, e, id=name) for name, g, e in CLASSIFY_CASES]
)
def test_classify_attempt(given: dict[str, object], expected: Outcome) -> None:
    args: dict[str, object] = {
        "answered": False,
        "disconnect_reason": None,
        "amd_result": None,
        "amd_behaviour": "hangup_and_retry",
        "poll_complete": False,
        "has_poll": False,
        "opted_out": False,
        "message_left": False,
    }
    args.update(given)
    assert classify_attempt(**args) is expected  # type: ignore[arg-type]


# --------------------------------------------------------------------------- decisions

RETRY = Retry(
    delays=(timedelta(minutes=15), timedelta(hours=2)),
    max_attempts=3,
    retry_on=frozenset({"no_answer", "busy", "machine", "unknown"}),
)
MON_10 = "2024-07-15T14:00"  # 10:00 EDT, monday
FRI_1950 = "2024-07-19T23:50"  # 19:50 EDT, friday
END_FRI: dict[str, object] = {"end_date": date(2024, 7, 19)}
END_MON: dict[str, object] = {"end_date": date(2024, 7, 15)}
INCOMPLETE: dict[str, object] = {"retry_incomplete": True}


def waiting(at: str) -> Decision:
    return Decision("waiting_retry", utc(at), None)


def final(status: str, outcome: str) -> Decision:
    return Decision(status, None, outcome)  # type: ignore[arg-type]


# fmt: off
DECISION_CASES: list[tuple[str, Outcome, int, str, Sequence[str], dict[str, object], Decision]] = [
    ("no answer, first try: 15m later", Outcome.NO_ANSWER, 1, MON_10, NY, {}, waiting("2024-07-15T14:15")),
    ("busy, second try: 2h later", Outcome.BUSY, 2, MON_10, NY, {}, waiting("2024-07-15T16:00")),
    ("machine is retried when asked", Outcome.MACHINE, 1, MON_10, NY, {}, waiting("2024-07-15T14:15")),
    ("unknown is retried when asked", Outcome.UNKNOWN, 1, MON_10, NY, {}, waiting("2024-07-15T14:15")),
    ("exhausted attempts fail", Outcome.NO_ANSWER, 3, MON_10, NY, {}, final("failed", "no_answer")),
    ("beyond max attempts fail", Outcome.BUSY, 7, MON_10, NY, {}, final("failed", "busy")),
    ("failed not in retry_on", Outcome.FAILED, 1, MON_10, NY, {}, final("failed", "failed")),
    ("retry waits for the window: monday", Outcome.NO_ANSWER, 1, FRI_1950, NY, {}, waiting("2024-07-22T13:00")),
    ("retry after end_date fails", Outcome.NO_ANSWER, 1, FRI_1950, NY, END_FRI, final("failed", "no_answer")),
    ("retry within end_date", Outcome.NO_ANSWER, 1, MON_10, NY, END_MON, waiting("2024-07-15T14:15")),
    ("no zone: no retry possible", Outcome.NO_ANSWER, 1, MON_10, (), {}, final("failed", "no_answer")),
    ("completed is done", Outcome.COMPLETED, 1, MON_10, NY, {}, final("done", "completed")),
    ("voicemail is done", Outcome.VOICEMAIL, 1, MON_10, NY, {}, final("done", "voicemail")),
    ("opted out is done", Outcome.OPTED_OUT, 1, MON_10, NY, {}, final("done", "opted_out")),
    ("partial without retry_incomplete is done", Outcome.PARTIAL, 1, MON_10, NY, {}, final("done", "partial")),
    ("partial with retry_incomplete retries", Outcome.PARTIAL, 1, MON_10, NY, INCOMPLETE, waiting("2024-07-15T14:15")),
    ("partial retries used up is done", Outcome.PARTIAL, 3, MON_10, NY, INCOMPLETE, final("done", "partial")),
    ("invalid number fails at once", Outcome.INVALID_NUMBER, 1, MON_10, NY, {}, final("failed", "invalid_number")),
    ("rejected fails at once", Outcome.REJECTED, 1, MON_10, NY, {}, final("failed", "rejected")),
    ("cancelled", Outcome.CANCELLED, 1, MON_10, NY, {}, final("cancelled", "cancelled")),
    ("two zones: retry when both open", Outcome.BUSY, 1, MON_10, US_CENTRAL_MOUNTAIN, {}, waiting("2024-07-15T15:00")),
]
# fmt: on


@pytest.mark.parametrize(
    ("outcome", "attempts_made", "ended_at", "zones", "extra", "expected"),
    [pytest.param(o, n, t, z, x, e, id=name) for name, o, n, t, z, x, e in DECISION_CASES],
)
def test_decide_after_attempt(
    outcome: Outcome,
    attempts_made: int,
    ended_at: str,
    zones: Sequence[str],
    extra: dict[str, object],
    expected: Decision,
) -> None:
    decision = decide_after_attempt(
        outcome=outcome,
        attempts_made=attempts_made,
        retry=RETRY,
        window=OFFICE,
        zones=zones,
        ended_at=utc(ended_at),
        **extra,  # type: ignore[arg-type]
    )
    assert decision == expected


@pytest.mark.parametrize("max_attempts", [1, 2, 3, 5])
def test_never_waiting_retry_at_or_beyond_max_attempts(max_attempts: int) -> None:
    retry = Retry(delays=(timedelta(minutes=1),), max_attempts=max_attempts)
    for outcome, attempts_made, retry_incomplete in product(
        Outcome, range(1, max_attempts + 3), (False, True)
    ):
        decision = decide_after_attempt(
            outcome=outcome,
            attempts_made=attempts_made,
            retry=retry,
            window=OFFICE,
            zones=NY,
            ended_at=utc(MON_10),
            retry_incomplete=retry_incomplete,
        )
        if decision.status == "waiting_retry":
            assert attempts_made < max_attempts
            assert decision.next_attempt_at is not None
            assert decision.final_outcome is None
            assert in_window(OFFICE, NY, decision.next_attempt_at)
        else:
            assert decision.next_attempt_at is None
            assert decision.final_outcome == outcome.value


@pytest.mark.parametrize("max_attempts", [1, 3, 20])
def test_someone_who_never_answers_is_called_exactly_max_attempts_times(max_attempts: int) -> None:
    retry = Retry(delays=(timedelta(minutes=15), timedelta(hours=6)), max_attempts=max_attempts)
    now, calls = utc(MON_10), 0
    while True:
        assert in_window(OFFICE, NY, now)
        calls += 1
        decision = decide_after_attempt(
            outcome=Outcome.NO_ANSWER,
            attempts_made=calls,
            retry=retry,
            window=OFFICE,
            zones=NY,
            ended_at=now + timedelta(seconds=40),
        )
        if decision.status != "waiting_retry":
            break
        assert decision.next_attempt_at is not None
        assert decision.next_attempt_at > now
        now = decision.next_attempt_at
    assert calls == max_attempts
    assert decision == final("failed", "no_answer")


def test_decide_refuses_zero_attempts() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        decide_after_attempt(
            outcome=Outcome.BUSY,
            attempts_made=0,
            retry=RETRY,
            window=OFFICE,
            zones=NY,
            ended_at=utc(MON_10),
        )


# --------------------------------------------------------------------------- pacing


@pytest.mark.parametrize(
    ("max_concurrent", "in_flight", "batch_size", "rate", "expected"),
    [
        (50, 0, 100, 1000.0, 50),  # the concurrency cap
        (50, 40, 100, 1000.0, 10),
        (50, 50, 100, 1000.0, 0),
        (50, 60, 100, 1000.0, 0),  # over the cap (a lowered setting): never negative
        (500, 0, 100, 1000.0, 100),  # one batch at a time
        (500, 0, 100, 10.0, 10),  # never more than one second's calls in one request
        (500, 0, 100, 7.9, 7),  # whole calls only
        (500, 0, 100, 0.5, 1),  # below one call a second: one at a time, paced apart
        (500, 0, 5, 50.0, 5),
    ],
)
def test_dispatch_allowance(
    max_concurrent: int, in_flight: int, batch_size: int, rate: float, expected: int
) -> None:
    allowed = dispatch_allowance(
        max_concurrent=max_concurrent,
        in_flight=in_flight,
        batch_size=batch_size,
        calls_per_second=rate,
    )
    assert allowed == expected


@pytest.mark.parametrize(
    ("rate", "count", "now", "tat", "start", "new_tat"),
    [
        (10.0, 5, 100.0, 0.0, 100.1, 100.1 + 0.5 * PACING_MARGIN),  # idle pacer: now + lead
        (10.0, 5, 100.0, 100.4, 100.4, 100.4 + 0.5 * PACING_MARGIN),  # queue behind the last
        (10.0, 30, 100.0, 102.0, 102.0, 102.0 + 3.0 * PACING_MARGIN),  # at the horizon: ok
        (10.0, 30, 100.0, 102.2, None, 102.2),  # past the horizon: refused, tat unchanged
        (10.0, 0, 100.0, 0.0, None, 0.0),
        (0.5, 1, 100.0, 0.0, 100.1, 100.1 + 2.0 * PACING_MARGIN),  # one call per 2 s
    ],
)
def test_pacing_slot(
    rate: float, count: int, now: float, tat: float, start: float | None, new_tat: float
) -> None:
    got, after = pacing_slot(rate=rate, count=count, now=now, tat=tat, lead=0.1, horizon=2.0)
    assert got == (None if start is None else pytest.approx(start))
    assert after == pytest.approx(new_tat)


@pytest.mark.parametrize(("rate", "batch"), [(5.0, 1), (50.0, 10), (500.0, 50), (500.0, 100)])
def test_pacing_slots_never_put_more_than_rate_in_any_second(rate: float, batch: int) -> None:
    """Greedy dispatchers asking every 10 ms for 20 s: every sliding one-second window of
    slot times holds at most `rate` calls, and the average rate is within 5 % of `rate`."""
    tat, now, slots = 0.0, 0.0, []
    while now < 20.0:
        while True:
            start, tat = pacing_slot(
                rate=rate, count=batch, now=now, tat=tat, lead=0.1, horizon=1.5
            )
            if start is None:
                break
            slots.extend([start] * batch)
        now += 0.01
    slots.sort()
    left, peak = 0, 0
    for right, t in enumerate(slots):
        while slots[left] <= t - 1.0:
            left += 1
        peak = max(peak, right - left + 1)
    assert peak <= rate
    done = [t for t in slots if t < 20.0]
    assert len(done) / 20.0 == pytest.approx(rate, rel=0.05)
