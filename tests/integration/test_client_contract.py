"""Contract: campaigns.enablex.client and events against the simulator, over loopback.

Every endpoint the client calls, and every error class it maps (401, 400, 404, 429 with
Retry-After, 5xx before and after the platform acted, timeouts), against the real simulator;
and every event the simulator sends parses into a known event type.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from campaigns.enablex.client import EnablexClient, PlaySpec
from campaigns.enablex.events import (
    BroadcastComplete,
    CallConnected,
    CallDisconnected,
    DigitCollected,
    UnknownEvent,
    parse_event,
)
from campaigns.enablex.simulator import RunningSimulator
from campaigns.errors import EnablexRejection, OutcomeUnknownError, TransientEnablexError
from tests.integration.sim_helpers import (
    ONLY_HUMANS,
    TEST_APP_ID,
    TEST_APP_KEY,
    start_receiver,
    start_simulator,
)

CALLER = "+12025550000"
NUMBERS = ["+12025550101", "+447700900123", "+919999911111"]
QUESTION = PlaySpec.tts("Press 1 for yes, 2 for no.", prompt_ref="q1", dtmf=True)
UNREACHABLE = "http://127.0.0.1:9/hook"
# Calls that stay connected for an hour after their prompts, and recorded prompts that play
# for ten minutes: commands find them live.
LIVE = {
    "outcomes": ONLY_HUMANS,
    "timing": {"ring_min": 0.1, "ring_max": 0.1, "idle_hangup": 3600.0, "recorded_prompt": 600.0},
}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def client_for(
    http: httpx.AsyncClient, sim: RunningSimulator, *, key: str = TEST_APP_KEY, timeout: float = 10
) -> EnablexClient:
    return EnablexClient(
        http, base_url=sim.base_url, app_id=TEST_APP_ID, app_key=key, timeout=timeout
    )


async def broadcast(client: EnablexClient, event_url: str = UNREACHABLE) -> str:
    created = await client.create_broadcast(
        name="contract",
        owner_ref="batch-42",
        caller_id=CALLER,
        numbers=NUMBERS,
        play=QUESTION,
        event_url=event_url,
    )
    return created.broadcast_id


async def test_create_broadcast_dials_every_number_and_events_parse(
    http: httpx.AsyncClient,
) -> None:
    async with start_receiver() as rx, start_simulator(speed=500) as sim:
        client = client_for(http, sim)
        broadcast_id = await broadcast(client, rx.url)
        await sim.wait_idle()
    ledger = sim.ledger()
    assert sorted(d["number"] for d in ledger) == sorted(NUMBERS)
    assert {d["broadcast_id"] for d in ledger} == {broadcast_id}
    assert {d["owner_ref"] for d in ledger} == {"batch-42"}
    assert all(d["prompts"][0]["prompt_ref"] == "q1" for d in ledger if d["answered"])
    events = [parse_event(e) for e in rx.accepted]
    assert not [e for e in events if isinstance(e, UnknownEvent)]
    by_voice = {d["voice_id"]: d for d in ledger}
    for event in events:
        if isinstance(event, BroadcastComplete):
            assert event.broadcast_id == broadcast_id
            assert event.successful_calls == sum(d["answered"] for d in ledger)
            continue
        assert event.voice_id is not None
        dial = by_voice[event.voice_id]
        assert event.to_number == dial["number"]
        assert event.from_number == CALLER
        if isinstance(event, CallConnected):
            assert event.amd_result == dial["amd_result"]
        if isinstance(event, CallDisconnected):
            assert event.disconnect_reason == dial["disconnect_reason"]
        if isinstance(event, DigitCollected):
            assert [event.digits] == [i["digits"] for i in dial["inputs"]]
    assert sum(isinstance(e, BroadcastComplete) for e in events) == 1


async def test_play_and_hangup_on_a_live_call(http: httpx.AsyncClient) -> None:
    async with start_receiver() as rx, start_simulator(speed=200, **LIVE) as sim:  # type: ignore[arg-type]
        client = client_for(http, sim)
        broadcast_id = await broadcast(client, rx.url)
        await rx.wait_for(lambda ev: sum(e.get("state") == "connected" for e in ev) == 3)
        voice_id = sim.ledger(number=NUMBERS[0])[0]["voice_id"]
        started = await client.play(
            broadcast_id, voice_id, PlaySpec.recorded("thanks", prompt_ref="bye")
        )
        assert started.playstate == "initiated"
        assert started.play_id
        await client.hangup(broadcast_id, voice_id)
        with pytest.raises(EnablexRejection) as ended:
            await client.hangup(broadcast_id, voice_id)
        with pytest.raises(EnablexRejection) as late:
            await client.play(broadcast_id, voice_id, QUESTION)
    (dial,) = sim.ledger(number=NUMBERS[0])
    last = dict(dial["prompts"][-1])
    assert last.pop("t") >= dial["connected_t"]  # when it started, in the ledger's seconds
    assert last == {
        "play_id": started.play_id,
        "prompt_ref": "bye",
        "source": "app",
        "prompt_name": "thanks",
        "input": None,
        "interrupted": True,
    }
    assert dial["disconnect_reason"] == "cancelled"
    assert dial["hangup_by"] == "app"
    assert ended.value.status_code == 404
    assert ended.value.error_code == "call_not_active"
    assert late.value.status_code == 404


async def test_make_call(http: httpx.AsyncClient) -> None:
    async with start_simulator(speed=500) as sim:
        created = await client_for(http, sim).make_call(
            name="one", owner_ref="single", caller_id=CALLER, to=NUMBERS[1], play=QUESTION,
            event_url=UNREACHABLE,
        )  # fmt: skip
        (dial,) = sim.ledger()
    assert created.voice_id == dial["voice_id"]
    assert created.state == "initiated"
    assert dial["number"] == NUMBERS[1]


async def test_bad_credentials_are_a_rejection(http: httpx.AsyncClient) -> None:
    async with start_simulator() as sim:
        with pytest.raises(EnablexRejection) as caught:
            await broadcast(client_for(http, sim, key="wrong"))
        assert sim.ledger() == []
    assert caught.value.status_code == 401
    assert caught.value.error_code == "unauthorized"


async def test_invalid_body_is_a_rejection_naming_the_field(http: httpx.AsyncClient) -> None:
    async with start_simulator() as sim:
        with pytest.raises(EnablexRejection) as caught:
            await broadcast(client_for(http, sim), event_url="ftp://example.com/hook")
        too_long = PlaySpec.tts("Hi", prompt_ref="q", dtmf=True, start_timeout=3600)
        with pytest.raises(EnablexRejection) as bad_play:
            await client_for(http, sim).create_broadcast(
                name="x", owner_ref="y", caller_id=CALLER, numbers=NUMBERS, play=too_long,
                event_url=UNREACHABLE,
            )  # fmt: skip
    assert caught.value.status_code == 400
    assert "event_url" in str(caught.value)
    assert bad_play.value.status_code == 400
    assert "action_on_connect.play.start_timeout" in str(bad_play.value)


async def test_unknown_ids_are_a_404_rejection(http: httpx.AsyncClient) -> None:
    async with start_simulator() as sim:
        client = client_for(http, sim)
        broadcast_id = await broadcast(client)
        with pytest.raises(EnablexRejection) as play:
            await client.play(broadcast_id, "no-such-voice-id", QUESTION)
        with pytest.raises(EnablexRejection) as hangup:
            await client.hangup("no-such-broadcast", sim.ledger()[0]["voice_id"])
    for caught in (play, hangup):
        assert caught.value.status_code == 404
        assert caught.value.error_code == "not_found"


async def test_rate_limit_is_transient_with_retry_after(http: httpx.AsyncClient) -> None:
    async with start_simulator(speed=1, **LIVE) as sim:  # type: ignore[arg-type]
        client = client_for(http, sim)
        sim.set_faults(max_concurrent_calls=4)
        await broadcast(client)
        with pytest.raises(TransientEnablexError) as caught:
            await broadcast(client)
        assert len(sim.ledger()) == 3
    assert not isinstance(caught.value, OutcomeUnknownError)
    assert caught.value.status_code == 429
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 1


async def test_5xx_before_acting_is_transient_after_acting_is_outcome_unknown(
    http: httpx.AsyncClient,
) -> None:
    async with start_simulator(speed=1, **LIVE) as sim:  # type: ignore[arg-type]
        client = client_for(http, sim)
        sim.set_faults(api_5xx_share=1.0)
        with pytest.raises(TransientEnablexError) as before:
            await broadcast(client)
        assert sim.ledger() == []
        with pytest.raises(TransientEnablexError) as play:
            await client.play("b", "v", QUESTION)
        sim.set_faults(api_5xx_share=0.0, api_5xx_after_share=1.0)
        with pytest.raises(OutcomeUnknownError) as after:
            await broadcast(client)
        assert len(sim.ledger()) == 3  # the platform did call: never resubmit blindly
    assert not isinstance(before.value, OutcomeUnknownError)
    assert before.value.status_code == 503
    assert play.value.status_code == 503
    assert after.value.status_code == 502


async def test_slow_answers_time_out(http: httpx.AsyncClient) -> None:
    async with start_simulator(speed=1, **LIVE) as sim:  # type: ignore[arg-type]
        # Open the pooled connection first, with a patient client: the 0.2 s timeout below
        # must expire while waiting for an answer, not while a busy machine accepts the
        # connection (a connect timeout proves nothing was sent: a different error).
        with pytest.raises(EnablexRejection):
            await client_for(http, sim).hangup("unknown-broadcast", "unknown-voice")
        sim.set_faults(api_latency=1.0)
        client = client_for(http, sim, timeout=0.2)
        with pytest.raises(OutcomeUnknownError):
            await broadcast(client)
        with pytest.raises(TransientEnablexError) as play:
            await client.play("b", "v", QUESTION)
    assert not isinstance(play.value, OutcomeUnknownError)
