"""The EnableX Voice API client (spec: enablex-voice-api.md §1–3), on an injected httpx client.

Every method sends Basic auth and `Content-Type: application/json`, converts E.164 numbers
to the wire's digits at the boundary, and maps failures onto campaigns.errors:

- 429 (with `Retry-After` seconds), 5xx, timeouts, connection errors → TransientEnablexError;
- any other non-2xx → EnablexRejection (status, provider `error_code` and `message`);
- requests that create calls (POST /broadcast, POST /call) are treated with care, because
  resubmitting one that did reach EnableX calls people twice (design rule 1 beats rule 4):
  - the request went out but no answer came back (read/write timeout, connection dropped,
    or a gateway's 502/504) → OutcomeUnknownError, a TransientEnablexError that says
    "do not resubmit blindly";
  - a 2xx whose body is not JSON or has no id → BroadcastOutcomeUnknown;
  - only failures that prove nothing was sent (connect error/timeout, pool timeout) and
    429/other 5xx are plain TransientEnablexError.

Credentials never appear in reprs, logs or exception messages; requests are logged at DEBUG
without their bodies (which hold phone numbers).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from campaigns.enablex.transport import KeepAliveTransport
from campaigns.errors import (
    BroadcastOutcomeUnknown,
    EnablexRejection,
    OutcomeUnknownError,
    TransientEnablexError,
)
from campaigns.phones import to_wire

log = logging.getLogger(__name__)

# (our choice) TTS defaults when the campaign does not say.
DEFAULT_TTS_VOICE = "female"
DEFAULT_TTS_LANGUAGE = "en-US"
TTS_VOICES = frozenset({"male", "female"})
# (our choice) gateway answers to a create request after which the platform may have acted.
OUTCOME_UNKNOWN_STATUSES = frozenset({502, 504})
# How much of a non-JSON error body goes into an exception message.
ERROR_TEXT_LIMIT = 200

# httpx errors raised before any byte of the request reached the server.
_NOT_SENT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
)


def _to_wire(e164: str, what: str) -> str:
    """`+919999911111` → `919999911111` (campaigns.phones.to_wire); refuses non-E.164.

    The message names the field, never the number (logs must not carry phone numbers).
    """
    try:
        return to_wire(e164)
    except (ValueError, TypeError):
        raise ValueError(f"{what} is not E.164 with a leading '+'") from None


@dataclass(frozen=True, kw_only=True)
class PlaySpec:
    """One `play` body: TTS (`text`) or a recorded prompt (`prompt_name`), maybe with input.

    `dtmf`/`asr` ask for input (not both); `start_timeout` and `recognizer_timeout` are in
    seconds; `interrupt` lets the caller's input cut the prompt. Unset optional keys are left
    out of the wire form.
    """

    prompt_ref: str
    text: str | None = None
    voice: str = DEFAULT_TTS_VOICE
    language: str = DEFAULT_TTS_LANGUAGE
    prompt_name: str | None = None
    dtmf: bool = False
    asr: bool = False
    start_timeout: int | None = None
    recognizer_timeout: int | None = None
    interrupt: bool | None = None

    def __post_init__(self) -> None:
        if (self.text is None) == (self.prompt_name is None):
            raise ValueError("a PlaySpec needs exactly one of text (TTS) or prompt_name")
        if self.text is not None and not self.text.strip():
            raise ValueError("TTS text is empty")
        if self.prompt_name is not None and not self.prompt_name.strip():
            raise ValueError("prompt_name is empty")
        if self.voice not in TTS_VOICES:
            raise ValueError(f"voice must be one of {sorted(TTS_VOICES)}, got {self.voice!r}")
        if self.dtmf and self.asr:
            raise ValueError("a prompt asks for dtmf or asr input, not both")
        for name in ("start_timeout", "recognizer_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds")

    @classmethod
    def tts(cls, text: str, *, prompt_ref: str, **options: Any) -> PlaySpec:
        return cls(text=text, prompt_ref=prompt_ref, **options)

    @classmethod
    def recorded(cls, prompt_name: str, *, prompt_ref: str, **options: Any) -> PlaySpec:
        return cls(prompt_name=prompt_name, prompt_ref=prompt_ref, **options)

    @property
    def wants_input(self) -> bool:
        return self.dtmf or self.asr

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any]
        if self.text is not None:
            body = {"text": self.text, "voice": self.voice, "language": self.language}
        else:
            body = {"prompt_name": self.prompt_name}
        body["prompt_ref"] = self.prompt_ref
        if self.dtmf:
            body["dtmf"] = True
        if self.asr:
            body["asr"] = True
        if self.start_timeout is not None:
            body["start_timeout"] = self.start_timeout
        if self.recognizer_timeout is not None:
            body["recognizer_timeout"] = self.recognizer_timeout
        if self.interrupt is not None:
            body["interrupt"] = self.interrupt
        return body


@dataclass(frozen=True)
class BroadcastCreated:
    broadcast_id: str
    state: str | None


@dataclass(frozen=True)
class CallCreated:
    voice_id: str
    state: str | None


@dataclass(frozen=True)
class PlayStarted:
    """The answer to a play command (`play_id` None if the platform did not give one)."""

    play_id: str | None
    playstate: str | None


class _Reply(Protocol):
    """What the client reads of an answer: an httpx.Response, or the lean transport's."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content(self) -> bytes: ...
    @property
    def text(self) -> str: ...
    @property
    def reason_phrase(self) -> str: ...


def _retry_after(response: _Reply) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _json_object(response: _Reply) -> dict[str, Any] | None:
    try:
        payload = json.loads(response.content)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def _provider_error(response: _Reply) -> tuple[str, str | None]:
    """(message, error_code) from an error body, falling back to its truncated text."""
    payload = _json_object(response)
    if payload is not None:
        code = payload.get("error_code")
        error_code = str(code) if code is not None else None
        for key in ("message", "msg", "error", "description"):
            value = payload.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()[:ERROR_TEXT_LIMIT], error_code
        if error_code is not None:
            return error_code, error_code
    text = response.text.strip()
    if len(text) > ERROR_TEXT_LIMIT:
        text = text[:ERROR_TEXT_LIMIT] + "…"
    return text or (response.reason_phrase or "no message"), None


def _non_zero_result(payload: Mapping[str, Any]) -> bool:
    result = payload.get("result")
    return result is not None and result != 0 and result != "0"


def _nonempty_str(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


class EnablexClient:
    """Async client for the calls the project makes; see the module docstring for errors."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        app_id: str,
        app_key: str,
        timeout: float = 10.0,
        max_in_flight: int | None = None,
        command_http: httpx.AsyncClient | None = None,
        command_transport: KeepAliveTransport | None = None,
    ) -> None:
        """`max_in_flight`: most requests handed to `http` (or `command_http`) at once
        (the others wait here, in order): keep it at the pool's connection limit, as
        httpcore's pool does work per queued request for every request it assigns
        (quadratic in a long queue: seen with thousands of IVR commands at once).
        `command_http`: the client for the IVR commands (play, hang up), when they should
        go another way than the broadcasts. `command_transport`: instead, a
        `KeepAliveTransport` the commands are sent on directly, without httpx's client,
        request and response objects (what the worker does: about a sixth of the CPU per
        command, bench/ingest_bench.py); they wait for its connections, not for
        `max_in_flight`."""
        self._http = http
        self._command_http = command_http or http
        self._command_transport = command_transport
        self._slots = asyncio.Semaphore(max_in_flight) if max_in_flight else None
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        token = base64.b64encode(f"{app_id}:{app_key}".encode()).decode("ascii")
        self._headers = {
            "Authorization": f"Basic {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    def __repr__(self) -> str:
        return f"EnablexClient(base_url={self._base_url!r}, credentials='***')"

    # --- API ----------------------------------------------------------------------------

    async def create_broadcast(
        self,
        *,
        name: str,
        owner_ref: str,
        caller_id: str,
        numbers: Sequence[str],
        play: PlaySpec,
        event_url: str,
        retries: int = 0,
        retry_interval_ms: int = 0,
        amd: bool = True,
        auto_record: bool = False,
    ) -> BroadcastCreated:
        """`POST /broadcast`: one broadcast to `numbers` (E.164 with `+`).

        Raises OutcomeUnknownError / BroadcastOutcomeUnknown when the broadcast may exist
        (never resubmit those blindly), TransientEnablexError when it surely does not and a
        later retry is fine, EnablexRejection for a permanent refusal.
        """
        if not numbers:
            raise ValueError("a broadcast needs at least one number")
        if retries < 0 or retry_interval_ms < 0:
            raise ValueError("retries and retry_interval_ms must be >= 0")
        phones = [{"phone": _to_wire(n, f"numbers[{i}]")} for i, n in enumerate(numbers)]
        body: dict[str, Any] = {
            "name": name,
            "owner_ref": owner_ref,
            "from": _to_wire(caller_id, "caller_id"),
            "broadcastnumbersjson": json.dumps(phones, separators=(",", ":")),
            "action_on_connect": {"play": play.to_json()},
            "call_param": {
                "IntervalBetweenRetries": retry_interval_ms,
                "NumberOfRetries": retries,
            },
            "answering_machine_detection": amd,
            "auto_record": auto_record,
            "event_url": event_url,
            "callhandler_url": event_url,
            "call_handler_url": event_url,
        }
        payload = await self._send(
            "POST", "/broadcast", body, creates=True, note=f"{len(phones)} numbers"
        )
        broadcast_id = _nonempty_str(payload.get("broadcast_id")) or _nonempty_str(
            payload.get("appInstance")
        )
        if broadcast_id is None:
            raise BroadcastOutcomeUnknown(
                "POST /broadcast: EnableX answered 2xx without a broadcast_id; "
                "the broadcast may exist, do not resubmit blindly"
            )
        return BroadcastCreated(broadcast_id, _nonempty_str(payload.get("state")))

    async def make_call(
        self,
        *,
        name: str,
        owner_ref: str,
        caller_id: str,
        to: str,
        play: PlaySpec,
        event_url: str,
    ) -> CallCreated:
        """`POST /call`: one outbound call. Errors as for create_broadcast."""
        body: dict[str, Any] = {
            "name": name,
            "owner_ref": owner_ref,
            "from": _to_wire(caller_id, "caller_id"),
            "to": _to_wire(to, "to"),
            "action_on_connect": {"play": play.to_json()},
            "event_url": event_url,
        }
        payload = await self._send("POST", "/call", body, creates=True)
        voice_id = _nonempty_str(payload.get("voice_id"))
        if voice_id is None:
            raise BroadcastOutcomeUnknown(
                "POST /call: EnableX answered 2xx without a voice_id; "
                "the call may exist, do not resubmit blindly"
            )
        return CallCreated(voice_id, _nonempty_str(payload.get("state")))

    async def play(self, broadcast_id: str, voice_id: str, play: PlaySpec) -> PlayStarted:
        """`PUT /broadcast/{broadcast_id}/call/{voice_id}/play` with the flat play body.

        Any 2xx means the command was accepted; `play_id` is None if the answer lacks it.
        """
        path = f"/broadcast/{_segment(broadcast_id)}/call/{_segment(voice_id)}/play"
        payload = await self._send("PUT", path, play.to_json(), creates=False, command=True)
        return PlayStarted(
            _nonempty_str(payload.get("play_id")), _nonempty_str(payload.get("playstate"))
        )

    async def hangup(self, broadcast_id: str, voice_id: str) -> None:
        """`DELETE /broadcast/{broadcast_id}/call/{voice_id}`.

        A call that already ended answers 404: that is raised as EnablexRejection with
        `status_code == 404` and the caller decides (usually: nothing to do).
        """
        path = f"/broadcast/{_segment(broadcast_id)}/call/{_segment(voice_id)}"
        await self._send("DELETE", path, None, creates=False, command=True)

    # --- transport ----------------------------------------------------------------------

    async def _request(
        self, method: str, path: str, content: bytes | None, *, command: bool
    ) -> _Reply:
        if command and self._command_transport is not None:
            return await self._command_transport.exchange(
                method, self._base_url + path, self._headers, content, limit=self._timeout
            )
        http = self._command_http if command else self._http
        return await http.request(
            method,
            self._base_url + path,
            content=content,
            headers=self._headers,
            timeout=self._timeout,
        )

    async def _send(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        *,
        creates: bool,
        note: str = "",
        command: bool = False,
    ) -> dict[str, Any]:
        """One request → the JSON object of a 2xx answer ({} when it has none).

        For a create request a 2xx body that is not a JSON object raises
        BroadcastOutcomeUnknown; for the others it is accepted as {}.
        """
        what = f"{method} {path}"
        content = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        log.debug("EnableX %s%s", what, f" ({note})" if note else "")
        started = time.perf_counter()
        # Commands on the keep-alive transport wait for its own connections, not behind
        # the broadcasts' slots.
        slots = None if command and self._command_transport is not None else self._slots
        try:
            if slots is None:
                response = await self._request(method, path, content, command=command)
            else:
                async with slots:
                    response = await self._request(method, path, content, command=command)
        except _NOT_SENT_ERRORS as exc:
            raise TransientEnablexError(f"{what}: {_describe(exc)}") from exc
        except httpx.RequestError as exc:
            # Timeouts after connecting, dropped connections, protocol or decoding errors:
            # the request may have been received and acted on.
            if creates:
                raise OutcomeUnknownError(
                    f"{what}: {_describe(exc)}; the request may have been processed"
                ) from exc
            raise TransientEnablexError(f"{what}: {_describe(exc)}") from exc
        elapsed_ms = (time.perf_counter() - started) * 1000
        status = response.status_code
        log.debug("EnableX %s → HTTP %d in %.0f ms", what, status, elapsed_ms)

        if 200 <= status < 300:
            payload = _json_object(response)
            if payload is None:
                if creates:
                    raise BroadcastOutcomeUnknown(
                        f"{what}: EnableX answered HTTP {status} with an unreadable body; "
                        "the request may have been processed, do not resubmit blindly"
                    )
                return {}
            ident = payload.get("broadcast_id") or payload.get("appInstance")
            ident = ident or payload.get("voice_id")
            if _non_zero_result(payload) and not (creates and ident):
                message, error_code = _provider_error(response)
                raise EnablexRejection(
                    f"{what}: {message}", status_code=status, error_code=error_code
                )
            return payload

        message, error_code = _provider_error(response)
        if status == 429:
            raise TransientEnablexError(
                f"{what}: rate limited (HTTP 429): {message}",
                status_code=status,
                retry_after=_retry_after(response),
            )
        if status >= 500:
            error_class = (
                OutcomeUnknownError
                if creates and status in OUTCOME_UNKNOWN_STATUSES
                else TransientEnablexError
            )
            raise error_class(
                f"{what}: EnableX platform error (HTTP {status}): {message}",
                status_code=status,
                retry_after=_retry_after(response),
            )
        raise EnablexRejection(f"{what}: {message}", status_code=status, error_code=error_code)


def _segment(value: str) -> str:
    """One path segment, percent-encoded: ids come from webhooks and are not trusted."""
    if not value:
        raise ValueError("an id in the URL path is empty")
    return quote(value, safe="")


def _describe(exc: httpx.RequestError) -> str:
    """The error's class and message, never the request (which holds credentials)."""
    detail = str(exc).strip()
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


__all__ = [
    "DEFAULT_TTS_LANGUAGE",
    "DEFAULT_TTS_VOICE",
    "OUTCOME_UNKNOWN_STATUSES",
    "BroadcastCreated",
    "CallCreated",
    "EnablexClient",
    "PlaySpec",
    "PlayStarted",
]
