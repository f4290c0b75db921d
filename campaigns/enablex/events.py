"""EnableX webhook events: a decoded event dict → one typed, frozen event (pure).

`parse_event` takes the object `crypto.decrypt_payload` returns and gives one of the
dataclasses below (spec §4.2 of enablex-voice-api.md). It is lenient with what it does not
know: an unknown `state`/`playstate` becomes `UnknownEvent`, extra fields are ignored (and
kept in `raw`), an odd phone number or timestamp becomes `None`. It raises
`WebhookDecodeError` only when the object is not an event at all.

`dedupe_key` names "the same event delivered twice"; see its docstring for what it hashes.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from campaigns.errors import WebhookDecodeError
from campaigns.phones import from_wire

# (our choice) the event field that carries the answering-machine result; the setting is
# Settings.amd_field.
AMD_FIELD = "amd_result"

# (our choice) how unusual spellings of a disconnect reason map onto the known set, after
# lower-casing and turning "_" and spaces into "-".
DISCONNECT_REASON_ALIASES: Mapping[str, str] = {
    "noanswer": "no-answer",
    "canceled": "cancelled",
    "invalidnumber": "invalid-number",
    "invalid": "invalid-number",
}

# Bumped whenever dedupe_key hashes something different, so old and new keys never collide.
DEDUPE_KEY_VERSION = "ev1"


class AmdResult(enum.StrEnum):
    """(our choice) the values of the answering-machine field."""

    HUMAN = "human"
    MACHINE = "machine"
    UNKNOWN = "unknown"


class DisconnectReason(enum.StrEnum):
    """(our choice) the known values of `disconnect_reason`."""

    NORMAL = "normal"  # answered, then ended
    NO_ANSWER = "no-answer"
    BUSY = "busy"
    REJECTED = "rejected"
    FAILED = "failed"  # network failure, temporary; also every unknown value
    INVALID_NUMBER = "invalid-number"  # permanent
    CANCELLED = "cancelled"  # hung up by the application


class SpeechReason(enum.StrEnum):
    RECOGNIZED = "RecognizedSpeech"
    NO_MATCH = "NoMatch"


@dataclass(frozen=True, kw_only=True)
class BaseEvent:
    """The fields every event carries.

    `from_number`/`to_number` are E.164 with `+` (None when absent or not a number);
    `timestamp` is an aware UTC datetime (None when absent or unreadable); `amd_result` is
    read on every event because it may arrive after `connected`; `raw` is the whole object.
    """

    kind: ClassVar[str] = "event"

    voice_id: str | None = None
    broadcast_id: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    timestamp: datetime | None = None
    amd_result: AmdResult | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, kw_only=True)
class CallInitiated(BaseEvent):
    """`state: initiated`: the platform is dialling. `attempt` only with platform retries."""

    kind: ClassVar[str] = "initiated"
    attempt: int | None = None


@dataclass(frozen=True, kw_only=True)
class CallRinging(BaseEvent):
    kind: ClassVar[str] = "ringing"


@dataclass(frozen=True, kw_only=True)
class CallConnected(BaseEvent):
    """`state: connected`: answered (AMD result, if any, in `amd_result`)."""

    kind: ClassVar[str] = "connected"


@dataclass(frozen=True, kw_only=True)
class CallDisconnected(BaseEvent):
    """`state: disconnected`: the call leg ended.

    `disconnect_reason` is the normalised value as sent (an unknown one is kept as is, None
    when absent); `reason` is what the rules use: a known reason, FAILED for anything else.
    """

    kind: ClassVar[str] = "disconnected"
    disconnect_reason: str | None = None

    @property
    def reason(self) -> DisconnectReason:
        try:
            return DisconnectReason(self.disconnect_reason or "")
        except ValueError:
            return DisconnectReason.FAILED

    @property
    def reason_is_known(self) -> bool:
        return self.disconnect_reason in set(DisconnectReason)


@dataclass(frozen=True, kw_only=True)
class PlayEvent(BaseEvent):
    """Base of the `playstate` events."""

    play_id: str | None = None
    prompt_ref: str | None = None


@dataclass(frozen=True, kw_only=True)
class PlayStarted(PlayEvent):
    kind: ClassVar[str] = "play_started"


@dataclass(frozen=True, kw_only=True)
class PlayFinished(PlayEvent):
    kind: ClassVar[str] = "play_finished"


@dataclass(frozen=True, kw_only=True)
class MenuTimeout(PlayEvent):
    """An input prompt ended with no input."""

    kind: ClassVar[str] = "menu_timeout"


@dataclass(frozen=True, kw_only=True)
class DigitCollected(PlayEvent):
    """DTMF input; `digits` comes from `digits` (docs) or `digit` (samples), as text."""

    kind: ClassVar[str] = "digit_collected"
    digits: str = ""


@dataclass(frozen=True, kw_only=True)
class SpeechRecognized(PlayEvent):
    """ASR input. `reason` is as sent (None when absent); see `recognized`."""

    kind: ClassVar[str] = "speech_recognized"
    text: str = ""
    reason: str | None = None
    confidence: float | None = None

    @property
    def recognized(self) -> bool:
        """True for `RecognizedSpeech`, or, with no reason given, for non-empty text."""
        if self.reason is None:
            return bool(self.text.strip())
        return self.reason.strip().lower() == SpeechReason.RECOGNIZED.lower()


@dataclass(frozen=True, kw_only=True)
class BroadcastComplete(BaseEvent):
    """Every number of a broadcast is done.

    `generation` is "call_info" (`state: broadcastcall_complete`, `broadcast_call_info`) or
    "result_set" (`state: broadcastcomplete`, `resultSet.successfull_calls`/`failed_calls`).
    The counts are None when the payload does not carry them.
    """

    kind: ClassVar[str] = "broadcast_complete"
    generation: str = "call_info"
    successful_calls: int | None = None
    failed_calls: int | None = None
    call_info: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, kw_only=True)
class UnknownEvent(BaseEvent):
    """A state or playstate this code does not know: kept, never applied blindly."""

    kind: ClassVar[str] = "unknown"
    state: str | None = None
    playstate: str | None = None


Event = (
    CallInitiated
    | CallRinging
    | CallConnected
    | CallDisconnected
    | PlayStarted
    | PlayFinished
    | MenuTimeout
    | DigitCollected
    | SpeechRecognized
    | BroadcastComplete
    | UnknownEvent
)

# The `playstate` values handled: initiated, playfinished, menutimeout, digitcollected,
# speech_recognized; the `state` values: initiated, ringing, connected, disconnected.
COMPLETE_STATE = "broadcastcall_complete"
COMPLETE_STATE_OLD = "broadcastcomplete"


# --- small readers: never raise ------------------------------------------------------


def phone_from_wire(value: object) -> str | None:
    """Wire digits (`919999911111`) → E.164 (`+919999911111`); None if not a number."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    try:
        return from_wire(value)
    except ValueError:
        return None


def parse_timestamp(value: object) -> datetime | None:
    """ISO-8601 (with `Z` or an offset; naive taken as UTC) → aware UTC, else None."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _float(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return result if math.isfinite(result) else None


def _amd(value: object) -> AmdResult | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return AmdResult(value.strip().lower())
    except ValueError:
        return AmdResult.UNKNOWN


def normalise_disconnect_reason(value: object) -> str | None:
    """Lower-case, `_`/space → `-`, known aliases mapped; unknown values kept as cleaned."""
    text = _text(value)
    if text is None or not text.strip():
        return None
    cleaned = re.sub(r"[\s_]+", "-", text.strip().lower())
    return DISCONNECT_REASON_ALIASES.get(cleaned.replace("-", ""), cleaned)


def _digits(data: Mapping[str, Any]) -> str | None:
    for name in ("digits", "digit"):
        value = _text(data.get(name))
        if value is not None:
            return value
    return None


def _identifier(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise WebhookDecodeError(f"event field {name!r} must be a string")
    return value or None


def _common(data: Mapping[str, Any], amd_field: str) -> dict[str, Any]:
    return {
        "voice_id": _identifier(data, "voice_id"),
        "broadcast_id": _identifier(data, "broadcast_id"),
        "from_number": phone_from_wire(data.get("from")),
        "to_number": phone_from_wire(data.get("to")),
        "timestamp": parse_timestamp(data.get("timestamp")),
        "amd_result": _amd(data.get(amd_field)),
        "raw": dict(data),
    }


def _counts(source: object) -> tuple[int | None, int | None]:
    if not isinstance(source, Mapping):
        return None, None
    ok = source.get("successfull_calls", source.get("successful_calls"))
    return _int(ok), _int(source.get("failed_calls"))


def _state_of(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise WebhookDecodeError(f"event field {name!r} must be a string")
    return value.strip().lower() or None


def parse_event(data: Mapping[str, Any], *, amd_field: str = AMD_FIELD) -> Event:
    """Parse one decoded event object into its typed event.

    A `playstate` wins over a `state` when both are present. Unknown states and extra
    fields never raise. `WebhookDecodeError` means "not an event": not a mapping, no
    `state`/`playstate` and no completion payload, or a state/id field of the wrong type.
    """
    if not isinstance(data, Mapping):
        raise WebhookDecodeError("event is not a JSON object")
    playstate = _state_of(data, "playstate")
    state = _state_of(data, "state")
    common = _common(data, amd_field)

    if playstate is not None:
        return _play_event(data, playstate, state, common)
    if state == COMPLETE_STATE or (state is None and "broadcast_call_info" in data):
        info = data.get("broadcast_call_info")
        ok, failed = _counts(info)
        return BroadcastComplete(
            generation="call_info",
            successful_calls=ok,
            failed_calls=failed,
            call_info=info,
            **common,
        )
    if state == COMPLETE_STATE_OLD or (state is None and "resultSet" in data):
        result_set = data.get("resultSet")
        ok, failed = _counts(result_set)
        return BroadcastComplete(
            generation="result_set",
            successful_calls=ok,
            failed_calls=failed,
            call_info=result_set,
            **common,
        )
    if state is None:
        raise WebhookDecodeError("event has no state or playstate")
    if state == "initiated":
        return CallInitiated(attempt=_int(data.get("attempt")), **common)
    if state == "ringing":
        return CallRinging(**common)
    if state == "connected":
        return CallConnected(**common)
    if state == "disconnected":
        return CallDisconnected(
            disconnect_reason=normalise_disconnect_reason(data.get("disconnect_reason")),
            **common,
        )
    return UnknownEvent(state=state, playstate=None, **common)


def _play_event(
    data: Mapping[str, Any], playstate: str, state: str | None, common: dict[str, Any]
) -> Event:
    play: dict[str, Any] = {
        "play_id": _text(data.get("play_id")),
        "prompt_ref": _text(data.get("prompt_ref")),
    }
    if playstate == "initiated":
        return PlayStarted(**play, **common)
    if playstate == "playfinished":
        return PlayFinished(**play, **common)
    if playstate == "menutimeout":
        return MenuTimeout(**play, **common)
    if playstate == "digitcollected":
        return DigitCollected(digits=_digits(data) or "", **play, **common)
    if playstate == "speech_recognized":
        reason = _text(data.get("reason"))
        return SpeechRecognized(
            text=_text(data.get("text")) or "",
            reason=reason.strip() if reason and reason.strip() else None,
            confidence=_float(data.get("confidence")),
            **play,
            **common,
        )
    return UnknownEvent(state=state, playstate=playstate, **common)


def dedupe_key(data: Mapping[str, Any], *, amd_field: str = AMD_FIELD) -> str:
    """A stable key for "the same event delivered twice"; never raises.

    A redelivery carries the same payload, so the key hashes every field that tells one
    event from another, normalised so that harmless differences (key order, `digit` vs
    `digits`, `Z` vs `+00:00`, `3` vs `"3"`) do not matter:

    - who: `voice_id`, `broadcast_id`, `from`, `to`;
    - what: `state`, `playstate` (lower-cased), `attempt` (platform redials of one number),
      `disconnect_reason`, the AMD field;
    - which prompt: `prompt_ref`, `play_id` — so two `digitcollected` events for different
      prompts differ even with the same digits;
    - the input: digits, ASR `text`/`reason`;
    - the completion counts, and `timestamp` (normalised to UTC when readable).

    Fields outside this list (anything EnableX adds per delivery) are ignored. Two events
    equal in all of these, e.g. the same digit for a re-asked prompt that reuses its
    `prompt_ref` and `play_id` within the same timestamp, cannot be told apart: give each
    re-ask its own `prompt_ref`.
    """
    if not isinstance(data, Mapping):
        return f"{DEDUPE_KEY_VERSION}:" + hashlib.sha256(repr(data).encode()).hexdigest()
    timestamp = parse_timestamp(data.get("timestamp"))
    state = data.get("state")
    playstate = data.get("playstate")
    parts: list[tuple[str, object]] = [
        ("voice_id", _norm(data.get("voice_id"))),
        ("broadcast_id", _norm(data.get("broadcast_id"))),
        ("from", _norm(data.get("from"))),
        ("to", _norm(data.get("to"))),
        ("state", state.strip().lower() if isinstance(state, str) else _norm(state)),
        (
            "playstate",
            playstate.strip().lower() if isinstance(playstate, str) else _norm(playstate),
        ),
        ("attempt", _norm(data.get("attempt"))),
        ("disconnect_reason", normalise_disconnect_reason(data.get("disconnect_reason"))),
        ("amd", _norm(data.get(amd_field))),
        ("prompt_ref", _norm(data.get("prompt_ref"))),
        ("play_id", _norm(data.get("play_id"))),
        ("digits", _norm(data.get("digits", data.get("digit")))),
        ("text", _norm(data.get("text"))),
        ("reason", _norm(data.get("reason"))),
        ("call_info", data.get("broadcast_call_info")),
        ("result_set", data.get("resultSet")),
        (
            "timestamp",
            timestamp.isoformat() if timestamp is not None else _norm(data.get("timestamp")),
        ),
    ]
    canonical = _CANONICAL.encode(parts)
    return f"{DEDUPE_KEY_VERSION}:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# `json.dumps` with these arguments, without building an encoder for every key (the
# ingester computes one key per delivery).
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=repr
)


def _norm(value: object) -> object:
    """A field of the dedupe key: text stripped, numbers as text (`3` and `"3"` agree)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return str(value)
    return value
