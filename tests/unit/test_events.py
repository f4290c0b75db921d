"""Parsing EnableX webhook events (spec §4.2) and naming their duplicates."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from campaigns.enablex.crypto import decrypt_payload, encrypt_payload
from campaigns.enablex.events import (
    AMD_FIELD,
    AmdResult,
    BroadcastComplete,
    CallConnected,
    CallDisconnected,
    CallInitiated,
    CallRinging,
    DigitCollected,
    DisconnectReason,
    MenuTimeout,
    PlayFinished,
    PlayStarted,
    SpeechRecognized,
    UnknownEvent,
    dedupe_key,
    parse_event,
)
from campaigns.errors import WebhookDecodeError

VOICE = "bc273d94-cb59-4f66-8eba-e1f96a7e482e"
BROADCAST = "74a2c2c2-4d55-4b0d-a9f6-8ec09f3bcc35"
TS = "2023-02-01T10:52:10.000Z"
TS_PARSED = datetime(2023, 2, 1, 10, 52, 10, tzinfo=UTC)


def ev(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "voice_id": VOICE,
        "broadcast_id": BROADCAST,
        "from": "12028528186",
        "to": "918088394833",
        "timestamp": TS,
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


KINDS: list[Any] = [
    (ev(state="initiated"), CallInitiated, {"attempt": None}),
    (ev(state="initiated", attempt=2), CallInitiated, {"attempt": 2}),
    (ev(state="initiated", attempt="3"), CallInitiated, {"attempt": 3}),
    (ev(state="ringing"), CallRinging, {}),
    (ev(state="connected"), CallConnected, {"amd_result": None}),
    (ev(state="connected", amd_result="machine"), CallConnected, {"amd_result": "machine"}),
    (
        ev(state="disconnected", disconnect_reason="busy"),
        CallDisconnected,
        {"disconnect_reason": "busy", "reason": DisconnectReason.BUSY},
    ),
    (
        ev(state="disconnected", disconnect_reason="NO_ANSWER"),
        CallDisconnected,
        {"disconnect_reason": "no-answer", "reason": DisconnectReason.NO_ANSWER},
    ),
    (
        ev(state="disconnected", disconnect_reason="Invalid Number"),
        CallDisconnected,
        {"disconnect_reason": "invalid-number", "reason": DisconnectReason.INVALID_NUMBER},
    ),
    (
        ev(playstate="initiated", play_id="p1", prompt_ref="q1"),
        PlayStarted,
        {"play_id": "p1", "prompt_ref": "q1"},
    ),
    (
        ev(playstate="playfinished", play_id="p1", prompt_ref="intro"),
        PlayFinished,
        {"play_id": "p1", "prompt_ref": "intro"},
    ),
    (ev(playstate="menutimeout", prompt_ref="q1"), MenuTimeout, {"prompt_ref": "q1"}),
    (
        ev(playstate="digitcollected", digit="3", prompt_ref="q1"),
        DigitCollected,
        {"digits": "3", "prompt_ref": "q1"},
    ),
    (
        ev(playstate="digitcollected", digits="42", prompt_ref="q2"),
        DigitCollected,
        {"digits": "42", "prompt_ref": "q2"},
    ),
    (
        ev(playstate="digitcollected", digit=7, prompt_ref="q1"),
        DigitCollected,
        {"digits": "7"},
    ),
    (
        ev(
            playstate="speech_recognized",
            text="yes please",
            reason="RecognizedSpeech",
            confidence=0.87,
            prompt_ref="q3",
        ),
        SpeechRecognized,
        {
            "text": "yes please",
            "reason": "RecognizedSpeech",
            "confidence": 0.87,
            "recognized": True,
        },
    ),
    (
        ev(playstate="speech_recognized", text="", reason="NoMatch", prompt_ref="q3"),
        SpeechRecognized,
        {"text": "", "reason": "NoMatch", "confidence": None, "recognized": False},
    ),
    (
        ev(state="broadcastcall_complete", broadcast_call_info={"total": 2}),
        BroadcastComplete,
        {"generation": "call_info", "call_info": {"total": 2}, "successful_calls": None},
    ),
    (
        ev(state="broadcastcomplete", resultSet={"successfull_calls": 5, "failed_calls": 2}),
        BroadcastComplete,
        {"generation": "result_set", "successful_calls": 5, "failed_calls": 2},
    ),
    (ev(state="transferred"), UnknownEvent, {"state": "transferred", "playstate": None}),
    (
        ev(playstate="recordingstarted"),
        UnknownEvent,
        {"state": None, "playstate": "recordingstarted"},
    ),
]


@pytest.mark.parametrize(("data", "kind", "fields"), KINDS)
def test_every_event_kind(data: dict[str, Any], kind: type, fields: dict[str, Any]) -> None:
    event = parse_event(data)
    assert type(event) is kind
    for name, value in fields.items():
        assert getattr(event, name) == value, name
    assert event.voice_id == VOICE
    assert event.broadcast_id == BROADCAST
    assert event.from_number == "+12028528186"
    assert event.to_number == "+918088394833"
    assert event.timestamp == TS_PARSED
    assert event.raw == data
    assert event.raw is not data  # a copy: later edits of the input do not change the event


def test_common_fields_are_converted() -> None:
    event = parse_event(ev(state="connected", timestamp="2023-02-01T16:22:10+05:30"))
    assert event.from_number == "+12028528186"
    assert event.to_number == "+918088394833"
    assert event.timestamp == TS_PARSED
    assert event.timestamp is not None
    assert event.timestamp.tzinfo is UTC


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2023-02-01T10:52:10Z", TS_PARSED),
        ("2023-02-01T10:52:10.000Z", TS_PARSED),
        ("2023-02-01T10:52:10", TS_PARSED),  # naive: the spec says UTC
        ("yesterday", None),
        ("", None),
        (1675248730, None),
        (None, None),
    ],
)
def test_timestamps(raw: object, expected: datetime | None) -> None:
    data = ev(state="ringing")
    data["timestamp"] = raw
    assert parse_event(data).timestamp == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("919999911111", "+919999911111"),
        ("+919999911111", "+919999911111"),
        (919999911111, "+919999911111"),
        ("not a number", None),
        ("", None),
        (None, None),
    ],
)
def test_phone_numbers_become_e164(raw: object, expected: str | None) -> None:
    data = ev(state="ringing")
    data["to"] = raw
    assert parse_event(data).to_number == expected


@pytest.mark.parametrize(
    ("raw", "reason", "known"),
    [
        ("normal", DisconnectReason.NORMAL, True),
        ("no-answer", DisconnectReason.NO_ANSWER, True),
        ("busy", DisconnectReason.BUSY, True),
        ("rejected", DisconnectReason.REJECTED, True),
        ("failed", DisconnectReason.FAILED, True),
        ("invalid-number", DisconnectReason.INVALID_NUMBER, True),
        ("cancelled", DisconnectReason.CANCELLED, True),
        ("canceled", DisconnectReason.CANCELLED, True),
        ("CONGESTION", DisconnectReason.FAILED, False),
        (None, DisconnectReason.FAILED, False),
    ],
)
def test_disconnect_reasons(raw: str | None, reason: DisconnectReason, known: bool) -> None:
    event = parse_event(ev(state="disconnected", disconnect_reason=raw))
    assert isinstance(event, CallDisconnected)
    assert event.reason is reason
    assert event.reason_is_known is known


def test_unknown_disconnect_reason_is_kept_raw() -> None:
    event = parse_event(ev(state="disconnected", disconnect_reason="CONGESTION"))
    assert isinstance(event, CallDisconnected)
    assert event.disconnect_reason == "congestion"
    assert event.raw["disconnect_reason"] == "CONGESTION"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("human", AmdResult.HUMAN),
        ("MACHINE", AmdResult.MACHINE),
        ("unknown", AmdResult.UNKNOWN),
        ("fax", AmdResult.UNKNOWN),
        ("", None),
        (None, None),
    ],
)
def test_amd_is_read_on_any_event(raw: str | None, expected: AmdResult | None) -> None:
    # AMD may arrive on an event after `connected`: every kind exposes it
    for data in (
        ev(state="connected", amd_result=raw),
        ev(state="disconnected", disconnect_reason="normal", amd_result=raw),
        ev(playstate="playfinished", prompt_ref="m", amd_result=raw),
    ):
        assert parse_event(data).amd_result == expected


def test_amd_field_name_is_a_setting() -> None:
    data = ev(state="connected", amd_result="human", amd="machine")
    assert AMD_FIELD == "amd_result"
    assert parse_event(data).amd_result is AmdResult.HUMAN
    assert parse_event(data, amd_field="amd").amd_result is AmdResult.MACHINE
    assert parse_event(ev(state="connected"), amd_field="amd").amd_result is None


@pytest.mark.parametrize(
    ("reason", "text", "recognized"),
    [
        ("RecognizedSpeech", "yes", True),
        ("NoMatch", "", False),
        ("NoMatch", "mumble", False),
        (None, "yes", True),
        (None, "  ", False),
    ],
)
def test_speech_recognized_flag(reason: str | None, text: str, recognized: bool) -> None:
    event = parse_event(ev(playstate="speech_recognized", text=text, reason=reason))
    assert isinstance(event, SpeechRecognized)
    assert event.recognized is recognized


@pytest.mark.parametrize("confidence", ["0.5", 0.5])
def test_confidence_number_or_text(confidence: object) -> None:
    event = parse_event(ev(playstate="speech_recognized", text="y", confidence=confidence))
    assert isinstance(event, SpeechRecognized)
    assert event.confidence == 0.5


def test_bad_confidence_is_none() -> None:
    event = parse_event(ev(playstate="speech_recognized", text="y", confidence="high"))
    assert isinstance(event, SpeechRecognized)
    assert event.confidence is None


def test_playstate_wins_over_state() -> None:
    event = parse_event(ev(state="connected", playstate="digitcollected", digit="1"))
    assert isinstance(event, DigitCollected)


def test_state_is_case_insensitive() -> None:
    assert isinstance(parse_event(ev(state="Connected")), CallConnected)


def test_extra_fields_are_ignored_and_kept() -> None:
    event = parse_event(ev(state="ringing", channel="sip", nested={"a": [1, 2]}))
    assert isinstance(event, CallRinging)
    assert event.raw["nested"] == {"a": [1, 2]}


def test_completion_without_state_is_recognised_by_its_payload() -> None:
    old = parse_event({"broadcast_id": BROADCAST, "resultSet": {"successfull_calls": "4"}})
    new = parse_event({"broadcast_id": BROADCAST, "broadcast_call_info": []})
    assert isinstance(old, BroadcastComplete)
    assert (old.generation, old.successful_calls, old.failed_calls) == ("result_set", 4, None)
    assert isinstance(new, BroadcastComplete)
    assert new.generation == "call_info"
    assert new.call_info == []


def test_new_completion_counts_when_present() -> None:
    event = parse_event(
        ev(
            state="broadcastcall_complete",
            broadcast_call_info={"successful_calls": 3, "failed_calls": 1},
        )
    )
    assert isinstance(event, BroadcastComplete)
    assert (event.successful_calls, event.failed_calls) == (3, 1)


def test_events_are_frozen_and_hashable() -> None:
    event = parse_event(ev(playstate="digitcollected", digit="1", prompt_ref="q1"))
    with pytest.raises(AttributeError):
        event.voice_id = "other"  # type: ignore[misc]
    assert hash(event) == hash(
        parse_event(ev(playstate="digitcollected", digit="1", prompt_ref="q1"))
    )


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({"voice_id": VOICE, "from": "1", "to": "2"}, "no state or playstate"),
        ({}, "no state or playstate"),
        (ev(state=3), "'state' must be a string"),
        (ev(playstate=["digitcollected"]), "'playstate' must be a string"),
        (ev(state="connected", voice_id=123), "'voice_id' must be a string"),
        (ev(state="connected", broadcast_id={"id": 1}), "'broadcast_id' must be a string"),
    ],
)
def test_not_an_event(data: dict[str, Any], why: str) -> None:
    with pytest.raises(WebhookDecodeError, match=why):
        parse_event(data)


@pytest.mark.parametrize("data", [[1, 2], "connected", None])
def test_not_a_mapping(data: Any) -> None:
    with pytest.raises(WebhookDecodeError, match="not a JSON object"):
        parse_event(data)


def test_parses_what_crypto_decrypts() -> None:
    original = ev(playstate="digitcollected", digit="5", prompt_ref="q1")
    headers, body = encrypt_payload(original, "app-id")
    event = parse_event(decrypt_payload(headers, body, "app-id"))
    assert isinstance(event, DigitCollected)
    assert (event.digits, event.prompt_ref, event.to_number) == ("5", "q1", "+918088394833")


# --- dedupe keys -----------------------------------------------------------------------

DUPLICATES = [
    pytest.param(ev(state="connected"), ev(state="connected"), id="identical"),
    pytest.param(
        ev(state="connected"),
        json.loads(json.dumps(dict(reversed(list(ev(state="connected").items()))))),
        id="key order",
    ),
    pytest.param(
        ev(playstate="digitcollected", digit="3", prompt_ref="q1"),
        ev(playstate="digitcollected", digits="3", prompt_ref="q1"),
        id="digit vs digits",
    ),
    pytest.param(
        ev(playstate="digitcollected", digit=3, prompt_ref="q1"),
        ev(playstate="digitcollected", digit="3", prompt_ref="q1"),
        id="digit number vs text",
    ),
    pytest.param(
        ev(state="ringing", timestamp="2023-02-01T10:52:10Z"),
        ev(state="ringing", timestamp="2023-02-01T10:52:10.000+00:00"),
        id="same instant spelled differently",
    ),
    pytest.param(
        ev(state="ringing"), ev(state="ringing", delivery_attempt=2), id="unrelated extra field"
    ),
]

DISTINCT = [
    pytest.param(
        ev(playstate="digitcollected", digit="1", prompt_ref="q1"),
        ev(playstate="digitcollected", digit="1", prompt_ref="q2"),
        id="same digit, different prompt",
    ),
    pytest.param(
        ev(playstate="digitcollected", digit="1", prompt_ref="q1"),
        ev(playstate="digitcollected", digit="2", prompt_ref="q1"),
        id="different digit",
    ),
    pytest.param(
        ev(playstate="digitcollected", digit="1", prompt_ref="q1", play_id="a"),
        ev(playstate="digitcollected", digit="1", prompt_ref="q1", play_id="b"),
        id="re-asked prompt, new play_id",
    ),
    pytest.param(
        ev(playstate="speech_recognized", text="yes", prompt_ref="q1"),
        ev(playstate="speech_recognized", text="no", prompt_ref="q1"),
        id="different speech",
    ),
    pytest.param(ev(state="connected"), ev(state="disconnected"), id="different state"),
    pytest.param(ev(state="initiated"), ev(playstate="initiated"), id="state vs playstate"),
    pytest.param(
        ev(state="connected"), ev(state="connected", voice_id="other"), id="different voice_id"
    ),
    pytest.param(
        ev(state="initiated", attempt=1), ev(state="initiated", attempt=2), id="platform retry"
    ),
    pytest.param(
        ev(state="ringing", timestamp="2023-02-01T10:52:10Z"),
        ev(state="ringing", timestamp="2023-02-01T10:52:11Z"),
        id="different time",
    ),
    pytest.param(
        ev(state="connected"), ev(state="connected", amd_result="machine"), id="amd arrives later"
    ),
    pytest.param(
        ev(state="broadcastcomplete", resultSet={"successfull_calls": 1}),
        ev(state="broadcastcomplete", resultSet={"successfull_calls": 2}),
        id="different completion counts",
    ),
]


@pytest.mark.parametrize(("first", "second"), DUPLICATES)
def test_duplicates_share_a_key(first: dict[str, Any], second: dict[str, Any]) -> None:
    assert dedupe_key(first) == dedupe_key(second)


@pytest.mark.parametrize(("first", "second"), DISTINCT)
def test_distinct_events_have_distinct_keys(first: dict[str, Any], second: dict[str, Any]) -> None:
    assert dedupe_key(first) != dedupe_key(second)


def test_dedupe_key_is_stable_and_fits_the_column() -> None:
    key = dedupe_key(ev(playstate="digitcollected", digit="1", prompt_ref="q1"))
    # the same input gives the same key in every process (no hash randomisation)
    assert key == dedupe_key(ev(playstate="digitcollected", digit="1", prompt_ref="q1"))
    assert key.startswith("ev1:")
    assert len(key) <= 128  # webhook_event.dedupe_key is String(128)


# Keys as stored by this version: a delivery redelivered after an upgrade must get the
# key its first copy was stored under, or it is stored (and applied) twice.
STORED_KEYS = [
    (
        {
            "voice_id": "v-1",
            "broadcast_id": "b-1",
            "from": "12025550100",
            "to": "12025550123",
            "state": "connected",
            "amd_result": "human",
            "timestamp": "2024-05-01T10:00:00.400Z",
        },
        "ev1:58fefeee48e8b75a978e369b257423bc9de045305c1af13fff21fcb67bd11e40",
    ),
    (
        {
            "voice_id": "v-1",
            "broadcast_id": "b-1",
            "playstate": "digitcollected",
            "prompt_ref": "q:rating:1",
            "play_id": "p-1",
            "digit": 7,
            "timestamp": "2024-05-01T12:00:01+02:00",
        },
        "ev1:7aba946907ef74cc6def6080193141dad28edd6007c419b6dc450289145d07dd",
    ),
    (
        {
            "voice_id": " v-2 ",
            "state": "Disconnected",
            "disconnect_reason": "NO_ANSWER",
            "attempt": 2,
            "timestamp": "not a time",
        },
        "ev1:3c30397b6682985e993e0c5ac6cfb759f363734753b1ecf7a8d6f7ff2af6bdfb",
    ),
    (
        {
            "voice_id": "v-3",
            "playstate": "speech_recognized",
            "text": "Oui, très bien",
            "reason": "RecognizedSpeech",
            "confidence": 0.9,
            "resultSet": {"n": [1, 2.5, None, True]},
        },
        "ev1:d886401bd76bb656203bb371bd32b1dd2b0aa4d266512a85d386dcecdc3ac8bb",
    ),
    (
        {"broadcast_id": "b-9", "broadcast_call_info": {"total": 3, "answered": 1}},
        "ev1:26bae465b1c04dea41101de6e59549d67f4ee899847ce5233a5aff68b39c624c",
    ),
    (
        ["not", "a", "mapping"],
        "ev1:79ce86c59b88a96fa755f2571ff45b0374be324392686754ba9786e0178b71a0",
    ),
]


@pytest.mark.parametrize(("data", "key"), STORED_KEYS)
def test_dedupe_key_is_the_one_stored_events_have(data: Any, key: str) -> None:
    assert dedupe_key(data) == key


def test_dedupe_key_uses_the_amd_field_setting() -> None:
    a = ev(state="connected", amd="human")
    b = ev(state="connected", amd="machine")
    assert dedupe_key(a) == dedupe_key(b)
    assert dedupe_key(a, amd_field="amd") != dedupe_key(b, amd_field="amd")


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"state": 3, "voice_id": ["x"], "timestamp": object()},
        {"text": "\ud800"},  # a lone surrogate, as json.loads can produce
        {"resultSet": {"nested": [1, {"x": float("nan")}]}},
    ],
)
def test_dedupe_key_never_raises(data: dict[str, Any]) -> None:
    assert dedupe_key(data).startswith("ev1:")
