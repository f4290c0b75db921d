"""Applying stored webhook events to call attempts: facts, IVR, answers, settling.

`apply_events` takes the ids of stored events and, in the caller's transaction, applies
every one not applied yet: it matches each to its attempt (by voice_id; else by
broadcast_id → batch → the number called, recording the voice_id), recomputes the call
from all its events, stores answers and opt-outs, and settles the attempt when its call
has ended. It returns the IVR commands to send once the transaction has committed
(`send_commands`).

Order independence, by construction. A call's state is `fold_call` over the set of all
its events (those applied before plus the new ones) sorted in the order they happened:
timestamp, then the call's phases, prompts in script order, then the dedupe key. The fold
is pure, so the same set of events gives the same attempt row, answers and outcome,
whatever order the events were delivered in and however many copies came (copies are
stored once, and the fold skips equal keys). Facts only accumulate: `answered_at` keeps
the earliest time, `amd_result` the most definite value (machine > human > unknown), so a
late `connected` after `disconnected` still records the answer and its AMD result. IVR
events name their prompt; one for a prompt that is not the current one changes nothing.
The commands sent are what the fold gained with the new events (a hang-up, else the last
prompt), and only while the call is live.

Settling. An ended attempt is settled at once when no reordered event could change its
outcome (`settle_ready`); otherwise after `settle_grace` (a deferred job), with the sweeper
(`settle_overdue`) as the backstop. An event arriving after the attempt was settled still
updates its facts and answers; if they change its outcome (an answer held up past the
grace period), the outcome is corrected and the recipient's decision redone while its
retry has not happened yet (`outcomes.resettle_attempt`).

Matching. An event for a broadcast we do not know (yet) may be early: the POST /broadcast
answer is not recorded yet. It stays unapplied and is retried until `early_timeout`, then
quarantined. An event for a known broadcast but a number it never had, or a voice_id that
contradicts the attempt's, is quarantined at once. Quarantined events are never applied.

Cost. A group of events takes a fixed number of statements (`campaigns.store.calls`), and
each call's fold is kept in this process (`_FOLDS`) to be extended by its next events: the
kept fold is used only when it holds exactly the events the database has applied to the
call (the attempt row's `folded_digest`, updated in the same transaction as the events'
applied marks, says which), and extended only by events that happened after all of them
or that commute with every other (dialled, ringing, a prompt started, the hang-up: the
urgent feed applies a call's answers before the ordinary feed applies its dialling); a
call still queued folds from nothing. Anything else reads the call's history and folds
it again, so the result is always `fold_call` over the stored set. The history is read
only for those calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from campaigns import poll
from campaigns.definition import CampaignDefinition
from campaigns.enablex.client import EnablexClient, PlaySpec
from campaigns.enablex.events import (
    BroadcastComplete,
    CallConnected,
    CallDisconnected,
    CallInitiated,
    CallRinging,
    DigitCollected,
    Event,
    MenuTimeout,
    PlayEvent,
    PlayFinished,
    PlayStarted,
    SpeechRecognized,
    UnknownEvent,
    parse_event,
)
from campaigns.errors import EnablexRejection, TransientEnablexError, WebhookDecodeError
from campaigns.models import AttemptState
from campaigns.outcomes import ToSettle, campaign_definition, resettle_attempt, settle_many
from campaigns.scheduling import Outcome, classify_attempt
from campaigns.store import calls
from campaigns.store import events as store

log = logging.getLogger(__name__)

DEFAULT_SETTLE_GRACE = timedelta(seconds=3)
DEFAULT_EARLY_TIMEOUT = timedelta(seconds=120)

_STATE_RANK: dict[str | None, int] = {
    None: 0,
    AttemptState.QUEUED: 0,
    AttemptState.INITIATED: 1,
    AttemptState.RINGING: 2,
    AttemptState.CONNECTED: 3,
    AttemptState.ENDED: 4,
}
# Tie-break for events with the same timestamp: the order in which they happen on a call.
_KIND_RANK = {
    "initiated": 0,
    "ringing": 1,
    "connected": 2,
    "play_started": 3,
    "play_finished": 4,
    "digit_collected": 4,
    "speech_recognized": 4,
    "menu_timeout": 4,
    "unknown": 5,
    "disconnected": 9,
}
_AMD_RANK = {None: 0, "unknown": 1, "human": 2, "machine": 3}
_ANSWERED_REASONS = frozenset({"normal", "cancelled"})
DISCONNECT_REASON_MAX = 32  # call_attempt.disconnect_reason


@dataclass(frozen=True)
class ApplyConfig:
    amd_field: str = "amd_result"
    settle_grace: timedelta = DEFAULT_SETTLE_GRACE
    early_timeout: timedelta = DEFAULT_EARLY_TIMEOUT


@dataclass(frozen=True)
class Command:
    """An IVR command for one live call: play a prompt (`play`) or hang up (`play=None`)."""

    attempt_id: int
    broadcast_id: str
    voice_id: str
    play: PlaySpec | None


@dataclass
class ApplyResult:
    applied: int = 0
    quarantined: int = 0
    waiting: list[int] = field(default_factory=list)  # early events kept for a later run
    # Events whose call another transaction was applying events to: left unapplied, to
    # be applied again shortly (never waited for: no lock convoys between applies).
    busy: list[int] = field(default_factory=list)
    settled: int = 0
    settle_later: list[int] = field(default_factory=list)  # attempt ids, after the grace
    commands: list[Command] = field(default_factory=list)
    answers: int = 0
    resettled: int = 0  # settled attempts whose late events changed the outcome


def _earliest(current: datetime | None, candidate: datetime) -> datetime:
    return candidate if current is None or candidate < current else current


@dataclass(frozen=True)
class TimedEvent:
    """A parsed event with the time it happened and its dedupe key (a stable tie-break)."""

    when: datetime
    event: Event
    key: str


@dataclass
class CallFold:
    """Everything an attempt's events say, folded in the order they happened."""

    voice_id: str | None = None
    state: str | None = None
    started_at: datetime | None = None
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    amd_result: str | None = None
    disconnect_reason: str | None = None
    progress: poll.Progress = field(default_factory=poll.Progress)
    answers: dict[str, tuple[poll.AnswerRecord, datetime]] = field(default_factory=dict)
    actions: list[poll.Action] = field(default_factory=list)
    opted_out: bool = False


def _prompt_order(defn: CampaignDefinition, ref: str | None) -> int:
    """Where a prompt comes in the script: breaks timestamp ties in causal order."""
    fixed = {None: 0, poll.REF_GREETING: 1, poll.REF_MESSAGE: 2, poll.REF_VOICEMAIL: 3}
    if ref in fixed:
        return fixed[ref]
    parts = (ref or "").split(":")
    if len(parts) == 3 and parts[0] in ("q", "inv") and parts[2].isdigit() and defn.poll:
        keys = [q.key for q in defn.poll.questions]
        if parts[1] in keys:
            return 10 + keys.index(parts[1]) * 100 + int(parts[2]) * 2 + (parts[0] == "inv")
    if ref in (poll.REF_OPT_OUT, poll.REF_CLOSING):
        return 100_000
    return 200_000


def order_key(defn: CampaignDefinition, item: TimedEvent) -> tuple[Any, ...]:
    """Events in the order they happened: time, then the call's phases (dialled, answered,
    prompts in script order, ended), then the dedupe key (any stable order)."""
    event = item.event
    if isinstance(event, PlayEvent):
        phase, ref = 3, event.prompt_ref
    else:
        phase, ref = _KIND_RANK.get(event.kind, 5), None
    return (item.when, phase, _prompt_order(defn, ref), _KIND_RANK.get(event.kind, 5), item.key)


def _fold_facts(fold: CallFold, event: Event, when: datetime) -> bool:
    """Fold one event into the call's facts; True when it first reveals the AMD result."""
    state: AttemptState | None = None
    if event.voice_id and fold.voice_id is None:
        fold.voice_id = event.voice_id
    if isinstance(event, CallInitiated):
        state = AttemptState.INITIATED
        fold.started_at = _earliest(fold.started_at, when)
    elif isinstance(event, CallRinging):
        state = AttemptState.RINGING
        fold.started_at = _earliest(fold.started_at, when)
    elif isinstance(event, CallConnected | PlayEvent):
        state = AttemptState.CONNECTED
        fold.answered_at = _earliest(fold.answered_at, when)
    elif isinstance(event, CallDisconnected) and fold.disconnect_reason is None:
        state = AttemptState.ENDED
        # As the provider wrote it, cut to its column (one odd event must not fail the
        # whole group it is applied with).
        fold.disconnect_reason = (event.disconnect_reason or "failed")[:DISCONNECT_REASON_MAX]
        fold.ended_at = when
    if state is not None and _STATE_RANK[state] > _STATE_RANK.get(fold.state, 0):
        fold.state = state
    if event.amd_result is not None:
        new = event.amd_result.value
        if _AMD_RANK.get(new, 0) > _AMD_RANK.get(fold.amd_result, 0):
            revealed = fold.amd_result in (None, "unknown")
            fold.amd_result = new
            return revealed
    return False


def fold_call(
    defn: CampaignDefinition, events: Iterable[TimedEvent], attributes: Mapping[str, Any]
) -> CallFold:
    """The facts, IVR progress, answers and commands of a call, from all its events.

    Pure and deterministic: the same set of events gives the same fold, whatever order
    they were delivered in and however many times.
    """
    return _fold_all(defn, events, attributes)[0]


def _fold_all(
    defn: CampaignDefinition, events: Iterable[TimedEvent], attributes: Mapping[str, Any]
) -> tuple[CallFold, frozenset[str], tuple[Any, ...] | None]:
    """`fold_call`, with the keys folded and the order key of the latest event that does
    not commute (`_commutes`)."""
    keyed = sorted(((order_key(defn, e), e) for e in events), key=lambda k: k[0])
    fold = CallFold()
    seen: set[str] = set()
    _fold_into(defn, fold, seen, (e for _, e in keyed), attributes)
    placed = [k for k, e in keyed if not _commutes(e.event)]
    return fold, frozenset(seen), placed[-1] if placed else None


def _commutes(event: Event) -> bool:
    """Whether folding this event anywhere in the sequence gives the same fold as folding
    it in its place: its only effects are the earliest start and answer times and the
    furthest state (dialled, ringing, a prompt starting), which no other event reads
    and which do not depend on order; or a hang-up, which sets the disconnect reason and
    end time only if none is set (see `_fits` for a call with two). Not with an AMD
    result, which can start the voicemail or the machine hang-up."""
    return event.amd_result is None and isinstance(
        event, CallInitiated | CallRinging | PlayStarted | CallDisconnected
    )


def _fits(defn: CampaignDefinition, base: _Folded, new: Iterable[TimedEvent]) -> bool:
    """Whether `base` extended with `new` equals the fold of all their events in order:
    every new event that does not commute happened after every such event of `base`,
    and a hang-up comes to a fold that has none (of two hang-ups, the first in order
    sets the reason)."""
    for item in new:
        if item.key in base.seen:
            continue
        if _commutes(item.event):
            if isinstance(item.event, CallDisconnected) and base.fold.disconnect_reason:
                return False
        elif base.last is not None and order_key(defn, item) <= base.last:
            return False
    return True


def _fold_into(
    defn: CampaignDefinition,
    fold: CallFold,
    seen: set[str],
    ordered: Iterable[TimedEvent],
    attributes: Mapping[str, Any],
) -> None:
    """Fold events, in the order they happened, into `fold` (`seen`: the keys folded)."""
    for item in ordered:
        if item.key in seen or isinstance(item.event, UnknownEvent | BroadcastComplete):
            continue
        seen.add(item.key)
        event = item.event
        revealed = _fold_facts(fold, event, item.when)
        happenings: list[poll.Happening] = []
        if revealed and not isinstance(event, CallConnected) and fold.amd_result:
            happenings.append(poll.AmdDetected(fold.amd_result))
        happening = _happening(event)
        if happening is not None:
            happenings.append(happening)
        for h in happenings:
            turn = poll.next_turn(defn, fold.progress, h, attributes)
            fold.progress = turn.progress
            fold.actions += turn.actions
            if turn.answer is not None:
                fold.answers[turn.answer.question_key] = (turn.answer, item.when)
            fold.opted_out |= turn.opted_out


@dataclass(frozen=True)
class _Folded:
    """A call's fold over a known set of events, kept to extend with the next ones."""

    digest: int  # `events_digest` of the events it holds
    defn: CampaignDefinition
    attributes: Mapping[str, Any]
    fold: CallFold
    seen: frozenset[str]
    last: tuple[Any, ...] | None  # order key of the latest event folded that does not commute


# The latest fold of each call this process applied events to (bounded, oldest out).
_FOLDS: dict[str, _Folded] = {}
FOLD_CACHE_SIZE = 20_000


def _extend(
    defn: CampaignDefinition, base: _Folded, new: list[TimedEvent], attributes: Mapping[str, Any]
) -> tuple[CallFold, frozenset[str], tuple[Any, ...] | None] | None:
    """`base` folded on with `new`, when that equals folding everything again (`_fits`:
    the usual case, the new events happened after those folded, or commute with them);
    else None."""
    if not _fits(defn, base, new):
        return None
    keyed = sorted(((order_key(defn, e), e) for e in new), key=lambda k: k[0])
    fold = replace(base.fold, answers=dict(base.fold.answers), actions=list(base.fold.actions))
    seen = set(base.seen)
    _fold_into(defn, fold, seen, (e for _, e in keyed), attributes)
    placed = [k for k, e in keyed if not _commutes(e.event) and e.key not in base.seen]
    return fold, frozenset(seen), placed[-1] if placed else base.last


_MASK64 = (1 << 64) - 1


def _event_hash(event_id: int) -> int:
    """A 63-bit hash of an event id (splitmix64's finaliser; a signed BIGINT holds it)."""
    z = (event_id + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


def events_digest(event_ids: Iterable[int], start: int = 0) -> int:
    """XOR of `_event_hash` over a set of event ids, on top of `start` (the digest of
    another, disjoint set): what `call_attempt.folded_digest` holds for the events applied
    to the call. Two different sets share a digest with odds of 2**-63."""
    digest = start
    for event_id in event_ids:
        digest ^= _event_hash(event_id)
    return digest


def _kept_fold(
    defn: CampaignDefinition,
    attempt: calls.AttemptRow,
    new: list[TimedEvent],
    attributes: Mapping[str, Any],
) -> _Folded | None:
    """The fold this process kept of the call, when it can serve: it holds exactly the
    events the database has applied to the call (the attempt row's digest, read under
    its lock, says which: another worker's apply, or a rolled-back one of ours, changes
    it), and the new events extend it (`_fits`). Else None: the call's history
    must be read and folded again."""
    memo = _FOLDS.get(attempt.voice_id or "")
    if (
        memo is None
        or memo.digest != attempt.folded_digest
        or memo.defn is not defn
        or memo.attributes != attributes
    ):
        return None
    return memo if _fits(defn, memo, new) else None


def _first_fold(
    defn: CampaignDefinition, attempt: calls.AttemptRow, attributes: Mapping[str, Any]
) -> _Folded | None:
    """The fold of a call whose row no applied event has changed yet (still queued: every
    event but an unknown or completion one moves it on, and those fold to nothing): an
    empty fold, with no history to read. Else None."""
    if attempt.state not in (None, AttemptState.QUEUED):
        return None
    return _Folded(attempt.folded_digest, defn, dict(attributes), CallFold(), frozenset(), None)


def _fold_both(
    defn: CampaignDefinition,
    attempt: calls.AttemptRow,
    kept: _Folded | None,
    past_rows: list[calls.EventRow],
    new_rows: list[tuple[calls.EventRow, Event]],
    new: list[TimedEvent],
    attributes: Mapping[str, Any],
    amd_field: str,
) -> tuple[CallFold, CallFold]:
    """The call's fold before and after the new events (the attempt's digest is set to the
    events the fold now holds).

    Equal to `fold_call` over the history and over history + new, but cheaper: the fold
    this process made when it last applied events of this call (`kept`, see `_kept_fold`)
    is extended with the new events; only without one are `past_rows` (the call's history,
    read then) folded."""
    new_ids = [r.id for r, _ in new_rows]
    past: list[TimedEvent] = []
    if kept is not None:
        base = kept
        digest = events_digest(new_ids, kept.digest)
    else:
        past = [_timed(r, e) for r in past_rows if (e := _parse(r.payload, amd_field)) is not None]
        base = _Folded(0, defn, dict(attributes), *_fold_all(defn, past, attributes))
        digest = events_digest([r.id for r in past_rows] + new_ids)
    before = base.fold
    extended = _extend(defn, base, new, attributes)
    if extended is None:
        # A new event that happened before one folded already: fold everything again
        # (never with a kept fold, which `_kept_fold` refuses then: no history was read).
        if kept is not None:
            raise AssertionError("a kept fold was taken for events that go back before it")
        extended = _fold_all(defn, past + new, attributes)
    after, seen_after, last_after = extended
    voice_id = attempt.voice_id or ""
    if len(_FOLDS) >= FOLD_CACHE_SIZE and voice_id not in _FOLDS:
        del _FOLDS[next(iter(_FOLDS))]
    _FOLDS[voice_id] = _Folded(digest, defn, dict(attributes), after, seen_after, last_after)
    attempt.folded_digest = digest
    return before, after


def commands_to_send(before: list[poll.Action], after: list[poll.Action]) -> list[poll.Action]:
    """What the new events ask of the live call: the actions the fold gained, reduced to
    what matters now (a hang-up, else the last prompt)."""
    same = 0
    for old, new in zip(before, after, strict=False):
        if old != new:
            break
        same += 1
    gained = after[same:]
    if any(isinstance(a, poll.Hangup) for a in gained):
        return [poll.Hangup()]
    plays: list[poll.Action] = [a for a in gained if isinstance(a, poll.Play)]
    return plays[-1:]


# Parsed events by payload text (content-addressed: never stale, whatever database the
# text came from). A call's history is read again by every later group of its events.
_PARSED: dict[tuple[str, str], Event | None] = {}
PARSE_CACHE_SIZE = 50_000


def _parse(payload: str, amd_field: str) -> Event | None:
    """The event in a stored payload (None: not an event), parsed once per text."""
    key = (payload, amd_field)
    try:
        return _PARSED[key]
    except KeyError:
        pass
    try:
        event: Event | None = parse_event(json.loads(payload), amd_field=amd_field)
    except (WebhookDecodeError, ValueError):
        event = None
    if len(_PARSED) >= PARSE_CACHE_SIZE:
        del _PARSED[next(iter(_PARSED))]
    _PARSED[key] = event
    return event


def _timed(row: calls.EventRow, event: Event) -> TimedEvent:
    return TimedEvent(event.timestamp or row.received_at, event, row.dedupe_key)


def _happening(event: Event) -> poll.Happening | None:
    if isinstance(event, CallConnected):
        return poll.Connected(event.amd_result.value if event.amd_result else None)
    if isinstance(event, PlayFinished):
        return poll.PromptFinished(event.prompt_ref)
    if isinstance(event, DigitCollected):
        return poll.Digits(event.prompt_ref, event.digits)
    if isinstance(event, SpeechRecognized):
        return poll.Speech(event.prompt_ref, event.text, event.recognized, event.confidence)
    if isinstance(event, MenuTimeout):
        return poll.NoInput(event.prompt_ref)
    return None


def progress_of(attempt: calls.AttemptRow) -> poll.Progress:
    return poll.Progress.of(attempt.ivr_state, attempt.poll_step, attempt.poll_tries)


def outcome_of(attempt: calls.AttemptRow, defn: CampaignDefinition) -> Outcome:
    """The outcome of an ended attempt, from its facts and its IVR progress."""
    facts = poll.call_facts(defn, progress_of(attempt))
    return classify_attempt(
        answered=attempt.answered_at is not None,
        disconnect_reason=attempt.disconnect_reason,
        amd_result=attempt.amd_result,
        amd_behaviour=defn.amd.behaviour,
        poll_complete=facts.poll_complete,
        has_poll=defn.poll is not None and bool(defn.poll.questions),
        opted_out=facts.opted_out,
        message_left=facts.message_left,
    )


def settle_ready(attempt: calls.AttemptRow) -> bool:
    """Whether an ended attempt can be settled now, before the grace period: when no
    reordered event could change its outcome. A call never answered (no-answer, busy...)
    is final; an answered one only once its IVR reached an end (closing, opt-out,
    voicemail, machine hang-up, message done). Anything else (ended `normal` with no
    `connected` seen yet, hung up mid-poll or mid-message) waits for late events."""
    if attempt.answered_at is None:
        return attempt.disconnect_reason not in _ANSWERED_REASONS
    return poll.finished(progress_of(attempt))


def _to_settle(
    attempt: calls.AttemptRow, defn: CampaignDefinition, campaign_status: str
) -> ToSettle:
    return ToSettle(
        attempt_id=attempt.id,
        recipient_id=attempt.recipient_id,
        attempt_no=attempt.attempt_no,
        ended_at=attempt.ended_at,
        outcome=outcome_of(attempt, defn),
        campaign_status=campaign_status,
        definition=defn,
        time_zones=attempt.time_zones,
    )


@dataclass
class _Writes:
    """What a group's folds write, gathered so that each kind is one statement."""

    answers: list[dict[str, Any]] = field(default_factory=list)
    drop_answers: dict[int, list[str]] = field(default_factory=dict)  # attempt → keys kept
    opt_outs: list[tuple[str, int]] = field(default_factory=list)  # phone, campaign id


async def apply_events(
    session: AsyncSession,
    event_ids: list[int],
    *,
    now: datetime,
    config: ApplyConfig,
    before_lock: Callable[[Collection[int]], Awaitable[None]] | None = None,
) -> ApplyResult:
    """Apply the given stored events (those not applied yet), in the caller's transaction.

    A fixed number of statements per group, whatever the number of events and calls:
    claim, match, lock the attempts, read the calls' history, then one write per kind
    (attempts, answers, settling, applied marks). Events of a call another transaction
    holds are left unapplied and listed in `busy`, for the caller to hand back.
    `before_lock(attempt_ids)` is awaited just before the attempts are locked (a worker
    waits there for its own other applies of the same calls: `workers.attempt_holds`)."""
    result = ApplyResult()
    if not event_ids:
        return result
    stored = await calls.claim_unapplied(session, event_ids)
    if not stored:
        return result
    parsed: list[tuple[calls.EventRow, Event]] = []
    quarantined: dict[str, list[int]] = defaultdict(list)
    for row in stored:
        event = _parse(row.payload, config.amd_field)
        if event is None:
            quarantined["stored payload is not an event"].append(row.id)
        else:
            parsed.append((row, event))

    by_voice = await calls.attempt_ids_by_voice(
        session, [e.voice_id for _, e in parsed if e.voice_id]
    )
    unmatched = [e for _, e in parsed if e.voice_id not in by_voice]
    broadcasts = await store.known_broadcasts(
        session, [e.broadcast_id for e in unmatched if e.broadcast_id]
    )
    pairs = {
        (broadcasts[e.broadcast_id], e.to_number)
        for e in unmatched
        if e.broadcast_id in broadcasts and e.to_number
    }
    by_pair = await store.attempt_ids_by_batch_phone(session, pairs)

    work: dict[int, list[tuple[calls.EventRow, Event]]] = defaultdict(list)
    done_ids: list[int] = []
    for row, event in parsed:
        attempt_id = by_voice.get(event.voice_id or "")
        batch_id = broadcasts.get(event.broadcast_id or "")
        if attempt_id is None and batch_id is not None and event.to_number and event.voice_id:
            attempt_id = by_pair.get((batch_id, event.to_number))
        if isinstance(event, BroadcastComplete) and batch_id is not None:
            done_ids.append(row.id)  # bookkeeping is per attempt: nothing to do
        elif attempt_id is not None:
            work[attempt_id].append((row, event))
        elif batch_id is not None:
            quarantined["number or call not in the broadcast it names"].append(row.id)
        elif now - row.received_at > config.early_timeout:
            quarantined["voice_id/broadcast_id never submitted by this project"].append(row.id)
        else:
            result.waiting.append(row.id)

    if before_lock is not None and work:
        await before_lock(list(work))
    attempts = await calls.lock_attempt_rows(session, work, skip_locked=True)
    if len(attempts) < len(work):
        locked = {a.id for a in attempts}
        for attempt_id in [i for i in work if i not in locked]:
            result.busy += [r.id for r, _ in work.pop(attempt_id)]
    for attempt in attempts:  # a second call on one attempt's number: never applied
        mine = attempt.voice_id or next(e.voice_id for _, e in work[attempt.id] if e.voice_id)
        for row, event in work[attempt.id]:
            if event.voice_id != mine:
                quarantined["voice_id differs from the attempt's call"].append(row.id)
        work[attempt.id] = [(r, e) for r, e in work[attempt.id] if e.voice_id == mine]
        attempt.voice_id = mine
    for reason, ids in quarantined.items():
        await store.quarantine(session, ids, reason)
        result.quarantined += len(ids)
        log.warning("quarantined %d event(s): %s", len(ids), reason)

    campaigns = await calls.campaign_states(session, {a.campaign_id for a in attempts})
    definitions = {cid: campaign_definition(cid, text) for cid, (_, text) in campaigns.items()}
    personalised = {cid for cid, defn in definitions.items() if poll.needs_attributes(defn)}
    personal = [a.recipient_id for a in attempts if a.campaign_id in personalised]
    attributes = await store.contact_attributes(session, personal)
    news = {a.id: [_timed(r, e) for r, e in work[a.id]] for a in attempts}
    kept = {
        a.id: _kept_fold(
            definitions[a.campaign_id], a, news[a.id], attributes.get(a.recipient_id, {})
        )
        or _first_fold(definitions[a.campaign_id], a, attributes.get(a.recipient_id, {}))
        for a in attempts
    }
    # The history only of the calls whose kept fold cannot serve (new to this process,
    # changed by another, or reached by an event from before its latest one) and that
    # have one.
    history = await calls.history_of_calls(
        session, [a.voice_id for a in attempts if a.voice_id and kept[a.id] is None]
    )
    writes = _Writes()
    to_settle: list[ToSettle] = []
    late: list[calls.AttemptRow] = []
    for attempt in attempts:
        defn = definitions[attempt.campaign_id]
        new_rows = work[attempt.id]
        done_ids += [r.id for r, _ in new_rows]
        before, after = _fold_both(
            defn,
            attempt,
            kept[attempt.id],
            history.get(attempt.voice_id or "", []),
            new_rows,
            news[attempt.id],
            attributes.get(attempt.recipient_id, {}),
            config.amd_field,
        )
        new = bool(new_rows)
        _write_fold(attempt, before, after, writes, result)
        if attempt.state != AttemptState.ENDED and attempt.broadcast_id and attempt.voice_id:
            for action in commands_to_send(before.actions, after.actions):
                play = action.spec if isinstance(action, poll.Play) else None
                result.commands.append(
                    Command(attempt.id, attempt.broadcast_id, attempt.voice_id, play)
                )
        if attempt.state == AttemptState.ENDED and attempt.settled_at is None:
            if settle_ready(attempt):
                to_settle.append(_to_settle(attempt, defn, campaigns[attempt.campaign_id][0]))
            else:
                result.settle_later.append(attempt.id)
        elif (
            attempt.settled_at is not None
            and after.state == AttemptState.ENDED
            and new
            and outcome_of(attempt, defn).value != attempt.outcome
        ):
            # Settled already, and the call's own events say it ended: late facts
            # correct the outcome.
            late.append(attempt)
    await calls.write_attempts(session, attempts)
    for attempt_id, keep in writes.drop_answers.items():
        await store.delete_answers_except(session, attempt_id, keep)
    await calls.upsert_answers(session, writes.answers)
    for phone, campaign_id in writes.opt_outs:
        await store.add_opt_out(session, phone, now, f"opt-out digit, campaign {campaign_id}")
    result.settled = await settle_many(session, to_settle, now)
    for attempt in late:
        decision = await resettle_attempt(
            session,
            attempt_id=attempt.id,
            outcome=outcome_of(attempt, definitions[attempt.campaign_id]),
            now=now,
        )
        result.resettled += decision is not None
    await calls.mark_applied(session, done_ids, now)
    result.applied = len(done_ids)
    return result


def _write_fold(
    attempt: calls.AttemptRow,
    before: CallFold,
    after: CallFold,
    writes: _Writes,
    result: ApplyResult,
) -> None:
    """Put the fold of all the call's events onto the attempt; gather its answers and
    opt-out for the group's writes."""
    if _STATE_RANK[after.state] >= _STATE_RANK.get(attempt.state, 0) and after.state:
        attempt.state = after.state
    attempt.started_at = after.started_at or attempt.started_at
    attempt.answered_at = after.answered_at
    attempt.amd_result = after.amd_result
    attempt.disconnect_reason = after.disconnect_reason
    if after.ended_at is not None:
        attempt.ended_at = after.ended_at
    attempt.ivr_state = after.progress.stage.value if after.progress.stage else None
    attempt.poll_step = after.progress.step
    attempt.poll_tries = after.progress.tries
    if after.answers != before.answers:
        # What the call's earlier events gave is stored already (they were folded and
        # written by an earlier apply, under the same attempt lock): write the difference.
        if set(before.answers) - set(after.answers):
            writes.drop_answers[attempt.id] = list(after.answers)
        for key, (answer, when) in after.answers.items():
            if before.answers.get(key) == (answer, when):
                continue
            writes.answers.append(
                {
                    "attempt_id": attempt.id,
                    "recipient_id": attempt.recipient_id,
                    "question_key": answer.question_key,
                    "input_kind": answer.input_kind,
                    "raw": answer.raw,
                    "confidence": answer.confidence,
                    "label": answer.label,
                    "valid": answer.valid,
                    "received_at": when,
                }
            )
            result.answers += 1
    if after.opted_out and not before.opted_out:
        writes.opt_outs.append((attempt.phone, attempt.campaign_id))


async def settle_attempts(session: AsyncSession, attempt_ids: list[int], *, now: datetime) -> int:
    """Settle ended attempts that waited for a grace period (whatever arrived since)."""
    attempts = [
        a
        for a in await calls.lock_attempt_rows(session, attempt_ids)
        if a.state == AttemptState.ENDED and a.settled_at is None
    ]
    campaigns = await calls.campaign_states(session, {a.campaign_id for a in attempts})
    items = [
        _to_settle(
            a,
            campaign_definition(a.campaign_id, campaigns[a.campaign_id][1]),
            campaigns[a.campaign_id][0],
        )
        for a in attempts
    ]
    return await settle_many(session, items, now)


async def settle_overdue(
    session: AsyncSession, *, now: datetime, grace: timedelta, limit: int = 1000
) -> int:
    """The sweeper's share: attempts ended longer than `grace` ago and still unsettled."""
    ids = await store.ended_unsettled(session, now - grace, limit)
    return await settle_attempts(session, ids, now=now)


async def send_commands(
    enablex: EnablexClient, commands: list[Command]
) -> list[tuple[Command, TransientEnablexError]]:
    """Send IVR commands: in order per call, calls in parallel. A call already gone (404)
    is fine; a transient failure is returned for the caller to retry later."""
    per_call: dict[str, list[Command]] = defaultdict(list)
    for command in commands:
        per_call[command.voice_id].append(command)

    async def one_call(queue: list[Command]) -> list[tuple[Command, TransientEnablexError]]:
        failed: list[tuple[Command, TransientEnablexError]] = []
        for i, command in enumerate(queue):
            try:
                await send_command(enablex, command)
            except TransientEnablexError as exc:
                failed += [(c, exc) for c in queue[i:]]
                break
        return failed

    outcomes = await asyncio.gather(*(one_call(q) for q in per_call.values()))
    return [f for failed in outcomes for f in failed]


async def send_command(enablex: EnablexClient, command: Command) -> None:
    """One command; transient errors propagate, rejections are logged and dropped."""
    try:
        if command.play is None:
            await enablex.hangup(command.broadcast_id, command.voice_id)
        else:
            await enablex.play(command.broadcast_id, command.voice_id, command.play)
    except EnablexRejection as exc:
        if exc.status_code == 404:
            log.debug("call %s already gone: %s", command.voice_id, exc)
        else:
            log.warning("IVR command for call %s rejected: %s", command.voice_id, exc)
