"""The simulator's HTTP face: the Voice API routes of spec §2–§3 and the `/_sim` routes.

Every API answer goes through the same gate: Basic auth (401), then the injected latency and
5xx faults, then body validation (400 naming the field), unknown ids (404), the rate-limit
faults (429 with Retry-After), and finally the call engine. Error bodies have the shape of
spec §1: `{"result": <HTTP status>, "status": "failed", "error_code": ..., "message": ...}`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from campaigns.enablex.sim_calls import CallEngine, CallNotActive, DialRequest, UnknownCall
from campaigns.enablex.sim_profile import Api, faults_as_dict
from campaigns.errors import ConfigError

API_PREFIX = "/voice/v1"
Handler = Callable[[Request], Awaitable[Response]]


class _Refused(Exception):
    """An error answer of this fake server; never leaves this module."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        super().__init__(message)


def _error(status: int, code: str, message: str, retry_after: int | None = None) -> Response:
    body = {"result": status, "status": "failed", "error_code": code, "message": message}
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(body, status_code=status, headers=headers)


def _bad(message: str) -> _Refused:
    return _Refused(400, "invalid_request", message)


# -- request validation (pure) ------------------------------------------------------------


def _digits(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(f"{name}: required, a string of digits (country code first, no '+')")
    if not value.isascii() or not value.isdigit():
        raise _bad(f"{name}: {value!r} must be digits only, country code first, no '+'")
    return value


def _optional_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if value is None:
        return ""
    if isinstance(value, int | str) and not isinstance(value, bool):
        return str(value)
    raise _bad(f"{name}: must be a string")


def _event_url(body: dict[str, Any]) -> str:
    url = body.get("event_url")
    if not isinstance(url, str) or not url:
        raise _bad("event_url: required, the webhook URL for this broadcast's events")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad(f"event_url: {url!r} is not an http(s) URL")
    return url


def parse_play(spec: Any, name: str) -> dict[str, Any]:
    """Validate a play spec (TTS or recorded prompt, optional input); returns it."""
    if not isinstance(spec, dict):
        raise _bad(f"{name}: must be an object")
    text, prompt = spec.get("text"), spec.get("prompt_name")
    if text is None and prompt is None:
        raise _bad(f"{name}: needs text (TTS) or prompt_name (recorded prompt)")
    if text is not None and prompt is not None:
        raise _bad(f"{name}: give text or prompt_name, not both")
    if text is not None and (not isinstance(text, str) or not text.strip()):
        raise _bad(f"{name}.text: must be a non-empty string")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise _bad(f"{name}.prompt_name: must be a non-empty string")
    if "voice" in spec and spec["voice"] not in ("male", "female"):
        raise _bad(f"{name}.voice: must be male or female")
    if "language" in spec and not isinstance(spec["language"], str):
        raise _bad(f"{name}.language: must be a string such as en-US")
    ref = spec.get("prompt_ref")
    if ref is not None and (not isinstance(ref, str | int) or isinstance(ref, bool)):
        raise _bad(f"{name}.prompt_ref: must be a string")
    for flag in ("dtmf", "asr", "interrupt"):
        if flag in spec and not isinstance(spec[flag], bool):
            raise _bad(f"{name}.{flag}: must be true or false")
    if spec.get("dtmf") and spec.get("asr"):
        raise _bad(f"{name}: ask for dtmf or asr input, not both")
    for timeout in ("start_timeout", "recognizer_timeout"):
        value = spec.get(timeout)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 600
        ):
            raise _bad(f"{name}.{timeout}: must be a number of seconds in (0, 600]")
    return spec


def _action_play(body: dict[str, Any]) -> dict[str, Any]:
    action = body.get("action_on_connect")
    if not isinstance(action, dict) or "play" not in action:
        raise _bad("action_on_connect.play: required, the prompt to play when answered")
    return parse_play(action["play"], "action_on_connect.play")


def _numbers(raw: Any, limit: int) -> list[str]:
    name = "broadcastnumbersjson"
    if raw is None:
        raise _bad(f'{name}: required, a JSON array string [{{"phone": "digits"}}, ...]')
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise _bad(f"{name}: not a JSON array string ({exc.msg})") from exc
    if not isinstance(raw, list) or not raw:
        raise _bad(f'{name}: must be a non-empty array of {{"phone": "digits"}}')
    if len(raw) > limit:
        raise _bad(f"{name}: {len(raw)} numbers, more than the {limit} allowed per broadcast")
    numbers = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _bad(f"{name}[{i}]: must be an object with a phone")
        numbers.append(_digits(item.get("phone"), f"{name}[{i}].phone"))
    return numbers


def _call_param(body: dict[str, Any], api: Api) -> tuple[int, float]:
    param = body.get("call_param")
    if param is None:
        return 0, 0.0
    if not isinstance(param, dict):
        raise _bad("call_param: must be an object")
    retries = param.get("NumberOfRetries", 0)
    interval = param.get("IntervalBetweenRetries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise _bad("call_param.NumberOfRetries: must be an integer >= 0")
    if retries > api.max_platform_retries:
        raise _bad(f"call_param.NumberOfRetries: at most {api.max_platform_retries}")
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval < 0:
        raise _bad("call_param.IntervalBetweenRetries: must be milliseconds >= 0")
    return retries, float(interval) / 1000.0


def parse_broadcast(body: Any, api: Api) -> DialRequest:
    """Validate a POST /broadcast body."""
    if not isinstance(body, dict):
        raise _bad("body: must be a JSON object")
    from_number = _digits(body.get("from"), "from")
    numbers = _numbers(body.get("broadcastnumbersjson"), api.max_numbers_per_broadcast)
    event_url = _event_url(body)
    play = _action_play(body)
    retries, interval = _call_param(body, api)
    amd = body.get("answering_machine_detection", False)
    if not isinstance(amd, bool):
        raise _bad("answering_machine_detection: must be true or false")
    return DialRequest(
        numbers=numbers,
        from_number=from_number,
        event_url=event_url,
        play=play,
        name=_optional_str(body, "name"),
        owner_ref=_optional_str(body, "owner_ref"),
        retries=retries,
        retry_interval=interval,
        amd=amd,
    )


def parse_call(body: Any) -> DialRequest:
    """Validate a POST /call body (one outbound call)."""
    if not isinstance(body, dict):
        raise _bad("body: must be a JSON object")
    return DialRequest(
        numbers=[_digits(body.get("to"), "to")],
        from_number=_digits(body.get("from"), "from"),
        event_url=_event_url(body),
        play=_action_play(body),
        name=_optional_str(body, "name"),
        owner_ref=_optional_str(body, "owner_ref"),
        amd=bool(body.get("answering_machine_detection", False)),
    )


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad("body: not valid JSON") from exc


# -- the application ----------------------------------------------------------------------


class SimulatorApi:
    """Builds the Starlette app around one CallEngine."""

    def __init__(self, engine: CallEngine, *, app_id: str, app_key: str, seed: int) -> None:
        self.engine = engine
        self._credentials = f"{app_id}:{app_key}".encode()
        self._fault_rng = random.Random(seed ^ 0x5EED)

    def app(self) -> Starlette:
        api = [
            Route("/broadcast", self._guard(self.create_broadcast), methods=["POST"]),
            Route("/broadcast/{broadcast_id}/call/{voice_id}/play", self._guard(self.play),
                  methods=["PUT"]),
            Route("/broadcast/{broadcast_id}/call/{voice_id}", self._guard(self.hangup),
                  methods=["DELETE"]),
            Route("/call/{voice_id}/play", self._guard(self.play), methods=["PUT"]),
            Route("/call/{voice_id}", self._guard(self.hangup), methods=["DELETE"]),
            Route("/call", self._guard(self.make_call), methods=["POST"]),
        ]  # fmt: skip
        routes = [Route(API_PREFIX + r.path, r.endpoint, methods=r.methods) for r in api]
        routes += [
            Route("/_sim/ledger", self.ledger, methods=["GET"]),
            Route("/_sim/stats", self.stats, methods=["GET"]),
            Route("/_sim/reset", self.reset, methods=["POST"]),
            Route("/_sim/faults", self.faults, methods=["GET", "POST"]),
        ]
        return Starlette(routes=routes)

    def _authorised(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self._credentials)

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            engine = self.engine
            faults = engine.profile.faults
            engine.api["requests"] += 1
            if faults.api_latency > 0:
                await asyncio.sleep(faults.api_latency)
            if not self._authorised(request):
                engine.api["401"] += 1
                return _error(
                    401, "unauthorized", "bad or missing Basic credentials (APP_ID:APP_KEY)"
                )
            if faults.api_5xx_share and self._fault_rng.random() < faults.api_5xx_share:
                engine.api["5xx"] += 1
                return _error(503, "service_unavailable", "injected fault: try again later")
            try:
                response = await handler(request)
            except _Refused as exc:
                engine.api[str(exc.status)] += 1
                return _error(exc.status, exc.code, exc.message, exc.retry_after)
            share = faults.api_5xx_after_share
            if share and self._fault_rng.random() < share:
                engine.api["5xx"] += 1
                return _error(
                    502, "bad_gateway", "injected fault: the request may have been applied"
                )
            engine.api["2xx"] += 1
            return response

        return guarded

    def _admit(self, count: int) -> None:
        faults = self.engine.profile.faults
        if faults.calls_per_second > 0 and count > faults.calls_per_second:
            raise _bad(
                f"broadcastnumbersjson: {count} numbers exceed the limit of "
                f"{faults.calls_per_second:g} calls per second"
            )
        wait = self.engine.admission_wait(count)
        if wait is not None:
            raise _Refused(
                429,
                "rate_limited",
                f"too many calls: at most {faults.calls_per_second:g}/s and "
                f"{faults.max_concurrent_calls or 'unlimited'} concurrent",
                retry_after=max(1, math.ceil(wait)),
            )

    async def create_broadcast(self, request: Request) -> Response:
        dial = parse_broadcast(await _json(request), self.engine.profile.api)
        self._admit(len(dial.numbers))
        broadcast_id, _ = self.engine.start(dial)
        body = {"result": 0, "broadcast_id": broadcast_id, "state": "broadcastcall_initiated"}
        return JSONResponse(body)

    async def make_call(self, request: Request) -> Response:
        dial = parse_call(await _json(request))
        self._admit(1)
        _, leg = self.engine.start(dial, broadcast=False)
        return JSONResponse({"result": 0, "voice_id": leg.voice_id, "state": "initiated"})

    async def play(self, request: Request) -> Response:
        spec = parse_play(await _json(request), "body")
        broadcast_id = request.path_params.get("broadcast_id")
        try:
            play_id = self.engine.play(request.path_params["voice_id"], broadcast_id, spec)
        except UnknownCall as exc:
            raise _Refused(404, "not_found", str(exc)) from exc
        except CallNotActive as exc:
            raise _Refused(404, "call_not_active", str(exc)) from exc
        return JSONResponse({"playstate": "initiated", "play_id": play_id})

    async def hangup(self, request: Request) -> Response:
        voice_id = request.path_params["voice_id"]
        try:
            self.engine.hangup(voice_id, request.path_params.get("broadcast_id"))
        except UnknownCall as exc:
            raise _Refused(404, "not_found", str(exc)) from exc
        except CallNotActive as exc:
            raise _Refused(404, "call_not_active", str(exc)) from exc
        return JSONResponse({"result": 0, "voice_id": voice_id, "state": "disconnected"})

    # -- ground truth and control (no auth: loopback test hooks) ---------------------------

    async def ledger(self, request: Request) -> Response:
        q = request.query_params
        dials = self.engine.select(
            number=q.get("number"), broadcast_id=q.get("broadcast_id"), owner_ref=q.get("owner_ref")
        )
        return JSONResponse({"dials": dials})

    async def stats(self, request: Request) -> Response:
        return JSONResponse(self.engine.stats())

    async def reset(self, request: Request) -> Response:
        self.engine.reset()
        return JSONResponse({"result": 0})

    async def faults(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                changes = await _json(request)
                if not isinstance(changes, dict):
                    raise _bad("body: must be a JSON object of fault settings")
                self.engine.profile = self.engine.profile.with_faults(changes)
            except _Refused as exc:
                return _error(400, exc.code, exc.message)
            except ConfigError as exc:
                return _error(400, "invalid_request", "; ".join(exc.problems))
        return JSONResponse({"faults": faults_as_dict(self.engine.profile.faults)})
