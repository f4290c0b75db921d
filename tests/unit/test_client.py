"""The EnableX client against httpx.MockTransport: exact requests, every error mapping."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from campaigns.enablex.client import (
    BroadcastCreated,
    CallCreated,
    EnablexClient,
    PlaySpec,
    PlayStarted,
)
from campaigns.errors import (
    BroadcastOutcomeUnknown,
    EnablexError,
    EnablexRejection,
    OutcomeUnknownError,
    TransientEnablexError,
)

BASE = "https://api.example.test/voice/v1"
APP_ID = "app-id-5f1e99bf90ce3c3c"
APP_KEY = "app-key-Sup3rS3cret-9f8e7d"
AUTH = "Basic " + base64.b64encode(f"{APP_ID}:{APP_KEY}".encode()).decode()
SECRETS = (APP_ID, APP_KEY, AUTH.split()[1])
EVENT_URL = "https://hooks.example.test/webhooks/enablex/tok-0123456789abcdef"
NUMBERS = ["+919999911111", "+12025550123"]
CALLER = "+12028528186"
PLAY = PlaySpec.tts("Hello {name}", prompt_ref="intro")

Handler = Callable[[httpx.Request], httpx.Response]


@asynccontextmanager
async def enablex(
    handler: Handler, *, base_url: str = BASE, request_timeout: float = 10.0
) -> AsyncIterator[tuple[EnablexClient, list[httpx.Request]]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(record)) as http:
        yield (
            EnablexClient(
                http, base_url=base_url, app_id=APP_ID, app_key=APP_KEY, timeout=request_timeout
            ),
            seen,
        )


def answer(status: int, body: Any = None, **headers: str) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handle


def fail_with(exc_type: type[httpx.RequestError]) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        raise exc_type("simulated transport failure", request=request)

    return handle


OK_BROADCAST: dict[str, Any] = {
    "result": 0,
    "broadcast_id": "74a2c2c2-4d55-4b0d-a9f6-8ec09f3bcc35",
    "state": "broadcastcall_initiated",
}


async def create(client: EnablexClient, **overrides: Any) -> BroadcastCreated:
    args: dict[str, Any] = {
        "name": "June reminders",
        "owner_ref": "batch-7",
        "caller_id": CALLER,
        "numbers": NUMBERS,
        "play": PLAY,
        "event_url": EVENT_URL,
    }
    args.update(overrides)
    return await client.create_broadcast(**args)


# --- requests ---------------------------------------------------------------------------


async def test_create_broadcast_sends_the_spec_body() -> None:
    async with enablex(answer(200, OK_BROADCAST)) as (client, seen):
        created = await create(client, retries=2, retry_interval_ms=90_000, auto_record=True)
    assert created == BroadcastCreated(OK_BROADCAST["broadcast_id"], "broadcastcall_initiated")
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == BASE + "/broadcast"
    assert request.headers["authorization"] == AUTH
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "name": "June reminders",
        "owner_ref": "batch-7",
        "from": "12028528186",
        "broadcastnumbersjson": '[{"phone":"919999911111"},{"phone":"12025550123"}]',
        "action_on_connect": {
            "play": {
                "text": "Hello {name}",
                "voice": "female",
                "language": "en-US",
                "prompt_ref": "intro",
            }
        },
        "call_param": {"IntervalBetweenRetries": 90_000, "NumberOfRetries": 2},
        "answering_machine_detection": True,
        "auto_record": True,
        "event_url": EVENT_URL,
        "callhandler_url": EVENT_URL,
        "call_handler_url": EVENT_URL,
    }


async def test_create_broadcast_defaults_leave_retries_to_the_workers() -> None:
    async with enablex(answer(200, OK_BROADCAST)) as (client, seen):
        await create(client, amd=False)
    body = json.loads(seen[0].content)
    assert body["call_param"] == {"IntervalBetweenRetries": 0, "NumberOfRetries": 0}
    assert body["answering_machine_detection"] is False
    assert body["auto_record"] is False
    # the numbers travel as a JSON *string*, as the samples send them
    assert isinstance(body["broadcastnumbersjson"], str)
    assert json.loads(body["broadcastnumbersjson"]) == [
        {"phone": "919999911111"},
        {"phone": "12025550123"},
    ]


async def test_older_platforms_answer_app_instance() -> None:
    async with enablex(answer(200, {"result": 0, "appInstance": "inst-1"})) as (client, _):
        created = await create(client)
    assert created == BroadcastCreated("inst-1", None)


async def test_base_url_trailing_slash_and_request_timeout() -> None:
    async with enablex(answer(200, OK_BROADCAST), base_url=BASE + "/", request_timeout=3.5) as (
        client,
        seen,
    ):
        await create(client)
    assert str(seen[0].url) == BASE + "/broadcast"
    assert seen[0].extensions["timeout"] == {"connect": 3.5, "read": 3.5, "write": 3.5, "pool": 3.5}


async def test_play_puts_the_flat_body_on_the_call() -> None:
    spec = PlaySpec.tts(
        "Press 1 for yes",
        prompt_ref="q1",
        voice="male",
        dtmf=True,
        start_timeout=5,
        interrupt=True,
    )
    async with enablex(answer(200, {"playstate": "initiated", "play_id": "play-9"})) as (
        client,
        seen,
    ):
        started = await client.play("b-1", "v-2", spec)
    assert started == PlayStarted("play-9", "initiated")
    (request,) = seen
    assert request.method == "PUT"
    assert str(request.url) == BASE + "/broadcast/b-1/call/v-2/play"
    assert request.headers["authorization"] == AUTH
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "text": "Press 1 for yes",
        "voice": "male",
        "language": "en-US",
        "prompt_ref": "q1",
        "dtmf": True,
        "start_timeout": 5,
        "interrupt": True,
    }


async def test_play_accepts_a_2xx_without_play_id() -> None:
    async with enablex(answer(200, b"")) as (client, _):
        assert await client.play("b", "v", PLAY) == PlayStarted(None, None)


async def test_hangup_deletes_the_call() -> None:
    async with enablex(answer(200, {"result": 0})) as (client, seen):
        await client.hangup("b-1", "v-2")
    (request,) = seen
    assert request.method == "DELETE"
    assert str(request.url) == BASE + "/broadcast/b-1/call/v-2"
    assert request.headers["authorization"] == AUTH
    assert request.headers["content-type"] == "application/json"
    assert request.content == b""


async def test_hangup_of_an_ended_call_is_a_distinct_404() -> None:
    body = {"result": 1, "status": "failed", "error_code": "NOT_FOUND", "message": "no such call"}
    async with enablex(answer(404, body)) as (client, _):
        with pytest.raises(EnablexRejection) as caught:
            await client.hangup("b-1", "v-2")
    assert caught.value.status_code == 404
    assert caught.value.error_code == "NOT_FOUND"
    assert "no such call" in str(caught.value)


async def test_ids_in_paths_are_percent_encoded() -> None:
    async with enablex(answer(200, {})) as (client, seen):
        await client.hangup("../admin", "v 1?x=y")
    assert seen[0].url.raw_path == b"/voice/v1/broadcast/..%2Fadmin/call/v%201%3Fx%3Dy"


async def test_make_call_posts_one_call() -> None:
    spec = PlaySpec.recorded("welcome.wav", prompt_ref="intro")
    async with enablex(answer(200, {"voice_id": "v-1", "state": "initiated"})) as (client, seen):
        created = await client.make_call(
            name="test",
            owner_ref="o-1",
            caller_id=CALLER,
            to="+919999911111",
            play=spec,
            event_url=EVENT_URL,
        )
    assert created == CallCreated("v-1", "initiated")
    (request,) = seen
    assert (request.method, str(request.url)) == ("POST", BASE + "/call")
    assert json.loads(request.content) == {
        "name": "test",
        "owner_ref": "o-1",
        "from": "12028528186",
        "to": "919999911111",
        "action_on_connect": {"play": {"prompt_name": "welcome.wav", "prompt_ref": "intro"}},
        "event_url": EVENT_URL,
    }


@pytest.mark.parametrize(
    "overrides",
    [
        {"numbers": ["919999911111"]},
        {"numbers": ["+91 99999 11111"]},
        {"numbers": []},
        {"caller_id": "12028528186"},
        {"retries": -1},
    ],
)
async def test_bad_arguments_send_nothing(overrides: dict[str, Any]) -> None:
    async with enablex(answer(200, OK_BROADCAST)) as (client, seen):
        with pytest.raises(ValueError, match=r"E\.164|at least one|>= 0") as caught:
            await create(client, **overrides)
    assert seen == []
    assert "99999" not in str(caught.value)  # the message names the field, not the number


# --- PlaySpec ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "wire"),
    [
        (
            PlaySpec.tts("Hi", prompt_ref="m"),
            {"text": "Hi", "voice": "female", "language": "en-US", "prompt_ref": "m"},
        ),
        (
            PlaySpec.recorded("msg.wav", prompt_ref="m"),
            {"prompt_name": "msg.wav", "prompt_ref": "m"},
        ),
        (
            PlaySpec.tts("Say yes or no", prompt_ref="q2", asr=True, recognizer_timeout=4),
            {
                "text": "Say yes or no",
                "voice": "female",
                "language": "en-US",
                "prompt_ref": "q2",
                "asr": True,
                "recognizer_timeout": 4,
            },
        ),
        (
            PlaySpec.recorded(
                "menu.wav", prompt_ref="q1", dtmf=True, start_timeout=6, interrupt=False
            ),
            {
                "prompt_name": "menu.wav",
                "prompt_ref": "q1",
                "dtmf": True,
                "start_timeout": 6,
                "interrupt": False,
            },
        ),
    ],
)
def test_play_spec_wire_form(spec: PlaySpec, wire: dict[str, Any]) -> None:
    assert spec.to_json() == wire


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"prompt_ref": "x"}, "exactly one"),
        ({"prompt_ref": "x", "text": "a", "prompt_name": "b"}, "exactly one"),
        ({"prompt_ref": "x", "text": "  "}, "empty"),
        ({"prompt_ref": "x", "text": "a", "voice": "robot"}, "voice"),
        ({"prompt_ref": "x", "text": "a", "dtmf": True, "asr": True}, "not both"),
        ({"prompt_ref": "x", "text": "a", "start_timeout": 0}, "positive"),
    ],
)
def test_play_spec_refuses_nonsense(kwargs: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        PlaySpec(**kwargs)


# --- error mapping ---------------------------------------------------------------------

ERROR_BODY = {
    "result": 1,
    "status": "failed",
    "error_code": "INVALID_PARAM",
    "message": "from is not a virtual number of this app",
}


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "retry_after", "error_code", "text"),
    [
        (400, ERROR_BODY, {}, EnablexRejection, None, "INVALID_PARAM", "from is not a virtual"),
        (401, {**ERROR_BODY, "error_code": "AUTH"}, {}, EnablexRejection, None, "AUTH", "HTTP 401"),
        (404, ERROR_BODY, {}, EnablexRejection, None, "INVALID_PARAM", "HTTP 404"),
        (422, b"<html>bad</html>", {}, EnablexRejection, None, None, "<html>bad</html>"),
        (429, ERROR_BODY, {"Retry-After": "7"}, TransientEnablexError, 7.0, None, "rate limited"),
        (429, b"", {"Retry-After": "1.5"}, TransientEnablexError, 1.5, None, "HTTP 429"),
        (429, b"", {}, TransientEnablexError, None, None, "HTTP 429"),
        (
            429,
            b"",
            {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
            TransientEnablexError,
            None,
            None,
            "HTTP 429",
        ),
        (500, ERROR_BODY, {}, TransientEnablexError, None, None, "HTTP 500"),
        (503, b"", {"Retry-After": "30"}, TransientEnablexError, 30.0, None, "HTTP 503"),
    ],
)
async def test_error_answers(
    status: int,
    body: Any,
    headers: dict[str, str],
    error: type[EnablexError],
    retry_after: float | None,
    error_code: str | None,
    text: str,
) -> None:
    async with enablex(answer(status, body, **headers)) as (client, _):
        with pytest.raises(error) as caught:
            await create(client)
    exc = caught.value
    assert type(exc) is error  # e.g. a 5xx here is not "outcome unknown"
    assert text in str(exc)
    assert getattr(exc, "status_code", None) == status
    if isinstance(exc, TransientEnablexError):
        assert exc.retry_after == retry_after
    else:
        assert isinstance(exc, EnablexRejection)
        assert exc.error_code == error_code


async def test_rejection_falls_back_to_truncated_text() -> None:
    async with enablex(answer(400, b"x" * 5000)) as (client, _):
        with pytest.raises(EnablexRejection) as caught:
            await client.play("b", "v", PLAY)
    assert len(str(caught.value)) < 400
    assert "xxxx" in str(caught.value)


@pytest.mark.parametrize("status", [502, 504])
async def test_gateway_errors_on_create_leave_the_outcome_unknown(status: int) -> None:
    async with enablex(answer(status, b"")) as (client, _):
        with pytest.raises(OutcomeUnknownError) as caught:
            await create(client)
    assert caught.value.status_code == status
    # ... but on a play they are plain transient errors
    async with enablex(answer(status, b"")) as (client, _):
        with pytest.raises(TransientEnablexError) as plain:
            await client.play("b", "v", PLAY)
    assert not isinstance(plain.value, OutcomeUnknownError)


@pytest.mark.parametrize(
    ("exc_type", "create_error"),
    [
        (httpx.ConnectError, TransientEnablexError),
        (httpx.ConnectTimeout, TransientEnablexError),
        (httpx.PoolTimeout, TransientEnablexError),
        (httpx.ReadTimeout, OutcomeUnknownError),
        (httpx.WriteTimeout, OutcomeUnknownError),
        (httpx.ReadError, OutcomeUnknownError),
        (httpx.RemoteProtocolError, OutcomeUnknownError),
    ],
)
async def test_transport_failures(
    exc_type: type[httpx.RequestError], create_error: type[TransientEnablexError]
) -> None:
    async with enablex(fail_with(exc_type)) as (client, _):
        with pytest.raises(TransientEnablexError) as on_create:
            await create(client)
        with pytest.raises(TransientEnablexError) as on_play:
            await client.play("b", "v", PLAY)
        with pytest.raises(TransientEnablexError) as on_hangup:
            await client.hangup("b", "v")
    # a create that may have reached EnableX must not be resubmitted blindly
    assert type(on_create.value) is create_error
    assert type(on_play.value) is TransientEnablexError
    assert type(on_hangup.value) is TransientEnablexError
    for caught in (on_create, on_play, on_hangup):
        assert isinstance(caught.value.__cause__, exc_type)
        assert exc_type.__name__ in str(caught.value)
        assert caught.value.status_code is None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html>OK</html>", id="not json"),
        pytest.param(b"[1]", id="not an object"),
        pytest.param(json.dumps({"result": 0, "state": "initiated"}).encode(), id="no id"),
        pytest.param(json.dumps({"broadcast_id": ""}).encode(), id="empty id"),
    ],
)
async def test_unreadable_success_on_create_is_outcome_unknown(body: bytes) -> None:
    async with enablex(answer(200, body)) as (client, _):
        with pytest.raises(BroadcastOutcomeUnknown, match="may"):
            await create(client)
    async with enablex(answer(200, body)) as (client, _):
        with pytest.raises(BroadcastOutcomeUnknown, match="may"):
            await client.make_call(
                name="n",
                owner_ref="o",
                caller_id=CALLER,
                to=NUMBERS[0],
                play=PLAY,
                event_url=EVENT_URL,
            )


async def test_a_200_that_says_failed_is_a_rejection() -> None:
    async with enablex(answer(200, ERROR_BODY)) as (client, _):
        with pytest.raises(EnablexRejection) as on_create:
            await create(client)
        with pytest.raises(EnablexRejection) as on_play:
            await client.play("b", "v", PLAY)
    for caught in (on_create, on_play):
        assert caught.value.status_code == 200
        assert caught.value.error_code == "INVALID_PARAM"


# --- secrets and logs -------------------------------------------------------------------


async def test_repr_hides_credentials() -> None:
    async with enablex(answer(200, {})) as (client, _):
        text = repr(client)
    assert BASE in text
    for secret in SECRETS:
        assert secret not in text


SCENARIOS: list[Handler] = [
    answer(401, {"result": 1, "error_code": "AUTH", "message": "bad credentials"}),
    answer(400, b"plain text error"),
    answer(429, b"", **{"Retry-After": "2"}),
    answer(500, ERROR_BODY),
    answer(504, b""),
    answer(200, b"garbage"),
    fail_with(httpx.ReadTimeout),
    fail_with(httpx.ConnectError),
]


@pytest.mark.parametrize("handler", SCENARIOS)
async def test_errors_and_logs_carry_no_secrets_or_numbers(
    handler: Handler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="campaigns.enablex.client")
    async with enablex(handler) as (client, _):
        with pytest.raises(EnablexError) as caught:
            await create(client)
    texts = [str(caught.value), repr(caught.value), caplog.text]
    assert caplog.records  # the request was logged at DEBUG
    for text in texts:
        for secret in SECRETS:
            assert secret not in text
        for number in NUMBERS:
            assert number.lstrip("+") not in text


async def test_success_log_names_the_request_without_numbers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="campaigns.enablex.client")
    async with enablex(answer(200, OK_BROADCAST)) as (client, _):
        await create(client)
    assert "POST /broadcast" in caplog.text
    assert "2 numbers" in caplog.text
    assert "HTTP 200" in caplog.text
    for number in [*NUMBERS, CALLER]:
        assert number.lstrip("+") not in caplog.text
    for secret in SECRETS:
        assert secret not in caplog.text
