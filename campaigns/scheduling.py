"""Pure scheduling rules: calling windows, retry times, outcomes, pacing arithmetic.

Nothing here reads a clock or does I/O: `now` / `after` / `ended_at` are passed in and must be
timezone-aware. The dispatcher, the webhook side and the sweeper call these functions; the
tests check them as tables.

Time zones. A recipient's zones come from its number (`contact.time_zones`, space-separated
IANA names, several when the number's prefix spans zones). `zones_of` gives the zones a
window is checked in; the window must hold in **all** of them. A recipient with no known zone
(none recorded, or any of them unknown, e.g. phonenumbers' "Etc/Unknown") gets no zones, and
with no zones `in_window` is False and `next_window_start` is None: such a number is never
called under a `timezone = "recipient"` window. This is deliberately conservative (guessing
UTC or the caller's zone could ring someone at night); to call such a list, set the window's
`timezone` to an IANA name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from campaigns.definition import CampaignDefinition, Retry, Window

__all__ = [
    "PACING_MARGIN",
    "Decision",
    "Outcome",
    "campaign_active",
    "classify_attempt",
    "decide_after_attempt",
    "dispatch_allowance",
    "in_window",
    "next_allowed_start",
    "next_window_start",
    "pacing_slot",
    "retry_delay",
    "zones_of",
]

# How far `next_window_start` looks ahead: a week plus margin for windows that cross midnight.
SEARCH_HORIZON = timedelta(days=8)


class Outcome(StrEnum):
    COMPLETED = "completed"  # a human answered; the message played / the poll was finished
    PARTIAL = "partial"  # a human answered and hung up before the poll was finished
    VOICEMAIL = "voicemail"  # a machine answered and the message was left
    MACHINE = "machine"  # a machine answered and we hung up (or it did before the message)
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    REJECTED = "rejected"  # the callee declined the call
    FAILED = "failed"  # network failure, or a disconnect reason we do not know
    INVALID_NUMBER = "invalid_number"
    OPTED_OUT = "opted_out"  # pressed the opt-out digit (the number goes on the DNC list)
    CANCELLED = "cancelled"  # hung up by the application before an answer
    UNKNOWN = "unknown"  # no final event came; settled by the sweeper


# --------------------------------------------------------------------------- outcomes

_DISCONNECT_OUTCOMES = {
    "no_answer": Outcome.NO_ANSWER,
    "noanswer": Outcome.NO_ANSWER,
    "busy": Outcome.BUSY,
    "rejected": Outcome.REJECTED,
    "failed": Outcome.FAILED,
    "invalid_number": Outcome.INVALID_NUMBER,
    "cancelled": Outcome.CANCELLED,
    "canceled": Outcome.CANCELLED,
}


def classify_attempt(
    *,
    answered: bool,
    disconnect_reason: str | None,
    amd_result: str | None,
    amd_behaviour: str,
    poll_complete: bool,
    has_poll: bool,
    opted_out: bool,
    message_left: bool,
) -> Outcome:
    """The outcome of one ended (or given-up) attempt, from what its events said.

    In order: an opt-out wins. The call counts as answered when `answered`, when it ended
    `normal`, or when AMD said human/machine (the `connected` event may be lost or late).
    Answered by a machine (AMD `machine`, unless the campaign ignores AMD): `voicemail` if the
    message was left under `leave_message`, else `machine`. Answered by a human (AMD `human`,
    `unknown` or none): with a poll, `completed` when every question was answered, else
    `partial`; without a poll, `completed`. Not answered: the disconnect reason (`-` or `_`,
    any case); none at all is `unknown`, a reason we do not know is `failed`.
    """
    if opted_out:
        return Outcome.OPTED_OUT
    reason = (disconnect_reason or "").strip().lower().replace("-", "_").replace(" ", "_")
    amd = (amd_result or "").strip().lower()
    if answered or reason == "normal" or amd in ("human", "machine"):
        if amd == "machine" and amd_behaviour != "ignore":
            if amd_behaviour == "leave_message" and message_left:
                return Outcome.VOICEMAIL
            return Outcome.MACHINE
        if has_poll and not poll_complete:
            return Outcome.PARTIAL
        return Outcome.COMPLETED
    if not reason:
        return Outcome.UNKNOWN
    return _DISCONNECT_OUTCOMES.get(reason, Outcome.FAILED)


# --------------------------------------------------------------------------- windows


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo | None:
    if name in ("Etc/Unknown", ""):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def zones_of(time_zones: str | None, window: Window) -> tuple[str, ...]:
    """The zones in which `window` must hold for a recipient.

    A fixed window zone wins. With `timezone = "recipient"`: the recipient's zones
    (space- or comma-separated), deduplicated in order; `()` when none is recorded or any is
    unknown, which makes the recipient not callable (see the module docstring).
    """
    if window.timezone != "recipient":
        return (window.timezone,)
    names = tuple(dict.fromkeys((time_zones or "").replace(",", " ").split()))
    if not names or any(_zone(name) is None for name in names):
        return ()
    return names


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")


def _in_zone_window(window: Window, local: datetime) -> bool:
    clock = local.time().replace(tzinfo=None)
    day = local.weekday()
    if window.start < window.end:
        return day in window.days and window.start <= clock < window.end
    if window.start > window.end:  # crosses midnight; the day is the day the window started
        if clock >= window.start:
            return day in window.days
        return clock < window.end and (day - 1) % 7 in window.days
    return False  # start == end: an empty window


def in_window(window: Window, zones: Sequence[str], now: datetime) -> bool:
    """True when `now` is inside the window in every one of `zones` (wall-clock time, so DST
    is followed). `start` is inclusive, `end` exclusive. No zones, or an unknown zone: False.
    """
    _require_aware(now, "now")
    if not zones:
        return False
    for name in zones:
        zone = _zone(name)
        if zone is None or not _in_zone_window(window, now.astimezone(zone)):
            return False
    return True


def _offset_changes(zone: ZoneInfo, start: datetime, stop: datetime) -> Iterable[datetime]:
    """The instants (to the second) in [start, stop) where the zone's UTC offset changes."""
    step = timedelta(hours=6)
    t = start
    while t < stop:
        nxt = t + step
        if t.astimezone(zone).utcoffset() != nxt.astimezone(zone).utcoffset():
            low, high = int(t.timestamp()), int(nxt.timestamp())
            before = t.astimezone(zone).utcoffset()
            while high - low > 1:
                mid = (low + high) // 2
                if datetime.fromtimestamp(mid, UTC).astimezone(zone).utcoffset() == before:
                    low = mid
                else:
                    high = mid
            yield datetime.fromtimestamp(high, UTC)
        t = nxt


def _openings(window: Window, zone: ZoneInfo, after: datetime, stop: datetime) -> set[datetime]:
    """Every instant in (after, stop) at which the window may open in this zone: each day's
    local start (both readings of an ambiguous time) and every offset change (a spring-forward
    jump can land inside the window; a fall-back can re-enter it)."""
    found: set[datetime] = set()
    first_day = after.astimezone(zone).date() - timedelta(days=1)
    for offset in range((stop - after).days + 3):
        day = first_day + timedelta(days=offset)
        if day.weekday() not in window.days:
            continue
        naive = datetime.combine(day, window.start)
        for fold in (0, 1):
            found.add(naive.replace(tzinfo=zone, fold=fold).astimezone(UTC))
    found.update(_offset_changes(zone, after, stop))
    return {t for t in found if after < t < stop}


def next_window_start(window: Window, zones: Sequence[str], after: datetime) -> datetime | None:
    """The earliest instant >= `after` at which `in_window` holds, in UTC; None when there is
    none within `SEARCH_HORIZON` (no zones, or zones whose windows never overlap).

    The answer is `after` itself or an instant where some zone's window opens, so only those
    candidates are tested, in order: a few dozen checks, not a minute-by-minute scan.
    """
    _require_aware(after, "after")
    after = after.astimezone(UTC)
    if not zones:
        return None
    if in_window(window, zones, after):
        return after
    stop = after + SEARCH_HORIZON
    candidates: set[datetime] = set()
    for name in zones:
        zone = _zone(name)
        if zone is None:
            return None
        candidates |= _openings(window, zone, after, stop)
    for candidate in sorted(candidates):
        if in_window(window, zones, candidate):
            return candidate
    return None


def _local_dates(zones: Sequence[str], now: datetime) -> list[date]:
    return [now.astimezone(_zone(name) or UTC).date() for name in zones] or [
        now.astimezone(UTC).date()
    ]


def campaign_active(defn: CampaignDefinition, now: datetime, zones: Sequence[str] = ()) -> bool:
    """Whether `now` falls within the campaign's start_date..end_date (both inclusive).

    Dates are local: in each of `zones` when given (all must agree, as for windows), else in
    the window's own zone when it has one, else in UTC. Pass the recipient's zones at
    dispatch so nobody is called on a local day outside the campaign's dates.
    """
    _require_aware(now, "now")
    if not zones and defn.window.timezone != "recipient":
        zones = (defn.window.timezone,)
    for local in _local_dates(zones, now):
        if defn.start_date is not None and local < defn.start_date:
            return False
        if defn.end_date is not None and local > defn.end_date:
            return False
    return True


def next_allowed_start(
    window: Window,
    zones: Sequence[str],
    after: datetime,
    *,
    start_date: date | None = None,
    end_date: date | None = None,
) -> datetime | None:
    """`next_window_start`, not before local `start_date` begins in every zone and None when
    the opening found falls after local `end_date` in any zone."""
    _require_aware(after, "after")
    if not zones:
        return None
    if start_date is not None:
        for name in zones:
            zone = _zone(name)
            if zone is None:
                return None
            midnight = datetime.combine(start_date, time(0)).replace(tzinfo=zone)
            after = max(after, midnight.astimezone(UTC))
    found = next_window_start(window, zones, after)
    if found is None or end_date is None:
        return found
    if any(local > end_date for local in _local_dates(zones, found)):
        return None
    return found


# --------------------------------------------------------------------------- retry decisions

DecisionStatus = Literal["waiting_retry", "done", "failed", "cancelled"]


@dataclass(frozen=True, slots=True)
class Decision:
    """A recipient's next state after an attempt: `waiting_retry` with `next_attempt_at`, or
    a final status with `final_outcome`."""

    status: DecisionStatus
    next_attempt_at: datetime | None
    final_outcome: str | None


_DONE = frozenset({Outcome.COMPLETED, Outcome.VOICEMAIL, Outcome.OPTED_OUT})
_NEVER_RETRIED = frozenset({Outcome.INVALID_NUMBER, Outcome.REJECTED})


def retry_delay(retry: Retry, attempts_made: int) -> timedelta:
    """The wait after attempt `attempts_made` (1-based): the schedule's entry, the last one
    repeating once the schedule runs out."""
    if attempts_made < 1:
        raise ValueError(f"attempts_made must be at least 1, got {attempts_made}")
    if not retry.delays:
        raise ValueError("a retry schedule needs at least one delay")
    return retry.delays[min(attempts_made - 1, len(retry.delays) - 1)]


def decide_after_attempt(
    *,
    outcome: Outcome,
    attempts_made: int,
    retry: Retry,
    window: Window,
    zones: Sequence[str],
    ended_at: datetime,
    retry_incomplete: bool = False,
    end_date: date | None = None,
) -> Decision:
    """What happens to a recipient after its attempt number `attempts_made` ended.

    - cancelled → `cancelled`.
    - completed, voicemail, opted_out → `done`.
    - invalid_number and rejected (the callee declined: redialling would be harassment) →
      `failed`, never retried.
    - partial → retried when `retry_incomplete`, else `done` (the person was reached; a
      partial whose retries are used up is `done` too).
    - any other outcome → retried when it is in `retry.retry_on`, else `failed`.
    - a retry happens only while `attempts_made < retry.max_attempts`, at the first window
      opening after `ended_at + retry_delay(...)` (and not after local `end_date`); when
      there is none, or the attempts are used up, the recipient is `failed` with the outcome.
    """
    _require_aware(ended_at, "ended_at")
    if attempts_made < 1:
        raise ValueError(f"attempts_made must be at least 1, got {attempts_made}")
    if outcome == Outcome.CANCELLED:
        return Decision("cancelled", None, outcome.value)
    if outcome in _DONE:
        return Decision("done", None, outcome.value)
    if outcome in _NEVER_RETRIED:
        return Decision("failed", None, outcome.value)
    give_up: DecisionStatus = "done" if outcome == Outcome.PARTIAL else "failed"
    wants_retry = retry_incomplete if outcome == Outcome.PARTIAL else outcome in retry.retry_on
    if not wants_retry or attempts_made >= retry.max_attempts:
        return Decision(give_up, None, outcome.value)
    at = next_allowed_start(
        window, zones, ended_at + retry_delay(retry, attempts_made), end_date=end_date
    )
    if at is None:
        return Decision(give_up, None, outcome.value)
    return Decision("waiting_retry", at, None)


# --------------------------------------------------------------------------- pacing


# Batches are spaced this much wider than `count / rate`: room for the jitter between
# the slot time and the moment EnableX dials, so a one-second window never holds more.
PACING_MARGIN = 1.03


def dispatch_allowance(
    *, max_concurrent: int, in_flight: int, batch_size: int, calls_per_second: float
) -> int:
    """How many recipients to claim for the next batch: bounded by the free concurrent
    slots, the batch size, and the rate (a batch never holds more calls than one second
    allows, so no one-second window can; at least one call, for rates below 1/s); never
    negative. A dispatcher that wants several batches in one tick asks again after each."""
    per_second = max(1, math.floor(calls_per_second))
    return max(0, min(max_concurrent - in_flight, batch_size, per_second))


def pacing_slot(
    *,
    rate: float,
    count: int,
    now: float,
    tat: float,
    lead: float,
    horizon: float,
    margin: float = PACING_MARGIN,
) -> tuple[float | None, float]:
    """Reference model of the Redis pacer (`campaigns.pacing.SLOT` follows it step by step).

    A batch of `count` calls gets a start time `max(now + lead, tat)` and pushes the
    theoretical arrival time `tat` on by `count / rate` (times `margin`, a few per cent of
    room for submission jitter). Batches are so spaced that no one-second window holds more
    than `rate` dials however many workers ask. A slot further than `horizon` seconds ahead
    is refused (None): the dispatcher stops claiming until time catches up.
    Returns (start or None, the new tat).
    """
    if count <= 0 or rate <= 0:
        return None, tat
    start = max(now + lead, tat)
    if start - now > horizon:
        return None, tat
    return start, start + count / rate * margin
