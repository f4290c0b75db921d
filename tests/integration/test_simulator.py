"""The EnableX simulator over a real loopback port, into a real webhook receiver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from campaigns.enablex.sim_profile import load_profile
from campaigns.enablex.simulator import RunningSimulator, SimulatorConfig, SimulatorThread
from campaigns.errors import ConfigError
from tests.integration.sim_helpers import (
    ONLY_HUMANS,
    TEST_APP_ID,
    basic_auth,
    broadcast_body,
    phones,
    start_receiver,
    start_simulator,
    tts,
)

AUTH = basic_auth()
# Calls that ring for ten minutes: they stay live for the whole test.
SLOW = {"speed": 1.0, "outcomes": ONLY_HUMANS, "timing": {"ring_min": 600.0, "ring_max": 600.0}}


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    async with start_simulator() as sim:
        yield sim


@pytest.fixture
async def slow_simulator() -> AsyncIterator[RunningSimulator]:
    async with start_simulator(**SLOW) as sim:  # type: ignore[arg-type]
        yield sim


UNREACHABLE = "http://127.0.0.1:9/hook"  # nothing listens on the discard port


def expected_story(dial: dict[str, Any]) -> list[str]:
    """The event sequence a call with this ledger record must produce, in order."""
    steps = ["initiated"]
    if dial["outcome"] in ("human", "machine", "no-answer", "rejected"):
        steps.append("ringing")
    if dial["answered"]:
        steps.append("connected")
        for prompt, given in zip(dial["prompts"], [*dial["inputs"], None, None], strict=False):
            steps.append("play:initiated")
            if prompt["input"] is None:
                steps.append("play:playfinished")
            elif given is not None and given.get("silence"):
                steps.append("play:menutimeout")
            elif prompt["input"] == "dtmf":
                steps.append("play:digitcollected")
            else:
                steps.append("play:speech_recognized")
    steps.append("disconnected")
    return steps


def step(event: dict[str, Any]) -> str:
    return f"play:{event['playstate']}" if "playstate" in event else str(event["state"])


def assert_events_tell_the_ledger(dial: dict[str, Any], events: list[dict[str, Any]]) -> None:
    assert [step(e) for e in events] == expected_story(dial), dial["number"]
    assert {e["to"] for e in events} == {dial["number"].lstrip("+")}
    last = events[-1]
    assert last["disconnect_reason"] == dial["disconnect_reason"]
    connected = [e for e in events if e.get("state") == "connected"]
    if dial["answered"]:
        assert connected[0]["amd_result"] == dial["amd_result"]
    digits = [e["digit"] for e in events if e.get("playstate") == "digitcollected"]
    assert digits == [i["digits"] for i in dial["inputs"] if "digits" in i]
    texts = [e["text"] for e in events if e.get("playstate") == "speech_recognized"]
    assert texts == [i["text"] for i in dial["inputs"] if "text" in i]
    refs = [e.get("prompt_ref") for e in events if e.get("playstate") == "initiated"]
    assert refs == [p["prompt_ref"] for p in dial["prompts"]]


async def post_broadcast(
    sim: RunningSimulator, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(
            sim.base_url + "/broadcast", json=body, headers=AUTH if headers is None else headers
        )


def assert_error_shape(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    body: dict[str, Any] = response.json()
    assert body["status"] == "failed"
    assert body["result"] != 0
    assert isinstance(body["error_code"], str)
    assert body["error_code"]
    assert isinstance(body["message"], str)
    return body


# -- the API's answers --------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic_auth(TEST_APP_ID, "wrong-key"),
        basic_auth("someone-else", "test-app-key-not-secret"),
        {"Authorization": "Bearer abc"},
        {"Authorization": "Basic not-base64!!"},
    ],
)
async def test_bad_credentials_get_401_and_nothing_is_dialled(
    simulator: RunningSimulator, headers: dict[str, str]
) -> None:
    response = await post_broadcast(simulator, broadcast_body(phones(2), UNREACHABLE), headers)
    assert_error_shape(response, 401)
    async with httpx.AsyncClient() as http:
        play = await http.put(simulator.base_url + "/call/x/play", json=tts(), headers=headers)
    assert_error_shape(play, 401)
    assert simulator.ledger() == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"from": None}, "from"),
        ({"from": "+12025550000"}, "from"),
        ({"broadcastnumbersjson": None}, "broadcastnumbersjson"),
        ({"broadcastnumbersjson": "[{'phone': '1'}"}, "broadcastnumbersjson"),
        ({"broadcastnumbersjson": "[]"}, "broadcastnumbersjson"),
        ({"broadcastnumbersjson": '[{"phone": "+12025550101"}]'}, "broadcastnumbersjson[0].phone"),
        (
            {"broadcastnumbersjson": '[{"phone": "1"}, {"tel": "2"}]'},
            "broadcastnumbersjson[1].phone",
        ),
        ({"event_url": None}, "event_url"),
        ({"event_url": "ftp://example.com/x"}, "event_url"),
        ({"action_on_connect": {}}, "action_on_connect.play"),
        ({"action_on_connect": {"play": {"voice": "female"}}}, "action_on_connect.play"),
        ({"action_on_connect": {"play": tts(dtmf=True, asr=True)}}, "action_on_connect.play"),
        ({"action_on_connect": {"play": tts(dtmf="yes")}}, "action_on_connect.play.dtmf"),
        ({"action_on_connect": {"play": tts(start_timeout=-1)}}, "start_timeout"),
        ({"call_param": {"NumberOfRetries": -1}}, "call_param.NumberOfRetries"),
    ],
)
async def test_invalid_body_gets_400_naming_the_field(
    simulator: RunningSimulator, change: dict[str, Any], field: str
) -> None:
    body = broadcast_body(phones(2), UNREACHABLE)
    for key, value in change.items():
        if value is None:
            del body[key]
        else:
            body[key] = value
    response = await post_broadcast(simulator, body)
    error = assert_error_shape(response, 400)
    assert field in error["message"]
    assert simulator.ledger() == []


async def test_body_that_is_not_json_gets_400(simulator: RunningSimulator) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(simulator.base_url + "/broadcast", content=b"{", headers=AUTH)
    assert "body" in assert_error_shape(response, 400)["message"]


async def test_numbers_as_a_real_array_are_accepted(simulator: RunningSimulator) -> None:
    body = broadcast_body(phones(2), UNREACHABLE)
    body["broadcastnumbersjson"] = [{"phone": n} for n in phones(2)]
    response = await post_broadcast(simulator, body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["result"] == 0
    assert answer["state"] == "broadcastcall_initiated"
    assert [d["number"] for d in simulator.ledger()] == ["+12025550000", "+12025550001"]
    assert {d["broadcast_id"] for d in simulator.ledger()} == {answer["broadcast_id"]}


async def test_unknown_ids_get_404(simulator: RunningSimulator) -> None:
    response = await post_broadcast(simulator, broadcast_body(phones(1), UNREACHABLE))
    broadcast_id = response.json()["broadcast_id"]
    voice_id = simulator.ledger()[0]["voice_id"]
    base = simulator.base_url
    async with httpx.AsyncClient(headers=AUTH) as http:
        answers = [
            await http.put(f"{base}/broadcast/{broadcast_id}/call/nope/play", json=tts()),
            await http.delete(f"{base}/broadcast/{broadcast_id}/call/nope"),
            await http.put(f"{base}/broadcast/other/call/{voice_id}/play", json=tts()),
            await http.delete(f"{base}/call/nope"),
            await http.put(f"{base}/call/nope/play", json=tts()),
        ]
    for answer in answers:
        assert assert_error_shape(answer, 404)["error_code"] == "not_found"


async def test_rate_limit_fault_answers_429_with_retry_after(
    slow_simulator: RunningSimulator,
) -> None:
    simulator = slow_simulator
    simulator.set_faults(calls_per_second=5)
    first = await post_broadcast(simulator, broadcast_body(phones(3), UNREACHABLE))
    assert first.status_code == 200
    second = await post_broadcast(simulator, broadcast_body(phones(3, 10), UNREACHABLE))
    assert_error_shape(second, 429)
    assert int(second.headers["retry-after"]) >= 1
    too_big = await post_broadcast(simulator, broadcast_body(phones(6, 20), UNREACHABLE))
    assert "broadcastnumbersjson" in assert_error_shape(too_big, 400)["message"]
    assert len(simulator.ledger()) == 3

    # a concurrency cap, switched on and off over HTTP at run time
    async with httpx.AsyncClient() as http:
        root = simulator.root_url
        changed = await http.post(
            f"{root}/_sim/faults", json={"calls_per_second": 0, "max_concurrent_calls": 4}
        )
        assert changed.json()["faults"]["max_concurrent_calls"] == 4
        capped = await post_broadcast(simulator, broadcast_body(phones(2, 30), UNREACHABLE))
        assert_error_shape(capped, 429)
        assert capped.headers["retry-after"] == "1"
        await http.post(f"{root}/_sim/faults", json={"max_concurrent_calls": 0})
        refused = await http.post(f"{root}/_sim/faults", json={"no_such_fault": 1})
        assert "no_such_fault" in assert_error_shape(refused, 400)["message"]
    assert (await post_broadcast(simulator, broadcast_body(phones(2, 30), UNREACHABLE))).is_success
    stats = simulator.stats()
    assert stats["api"]["429"] == 2
    assert stats["peak_concurrency"] == 5


async def test_5xx_faults_before_and_after_applying(simulator: RunningSimulator) -> None:
    simulator.set_faults(api_5xx_share=1.0)
    response = await post_broadcast(simulator, broadcast_body(phones(2), UNREACHABLE))
    assert_error_shape(response, 503)
    assert simulator.ledger() == []
    simulator.set_faults(api_5xx_share=0.0, api_5xx_after_share=1.0)
    response = await post_broadcast(simulator, broadcast_body(phones(2), UNREACHABLE))
    assert_error_shape(response, 502)
    assert len(simulator.ledger()) == 2  # the platform acted although it answered 502


# -- calls played out into a receiver -------------------------------------------------------


async def test_broadcast_plays_out_fully_into_the_receiver() -> None:
    async with start_receiver() as rx, start_simulator(speed=400) as sim:
        dtmf = await post_broadcast(sim, broadcast_body(phones(30), rx.url))
        asr = await post_broadcast(
            sim, broadcast_body(phones(10, 100), rx.url, tts("Say yes or no", asr=True))
        )
        recorded = await post_broadcast(
            sim,
            broadcast_body(phones(5, 200), rx.url, {"prompt_name": "notice", "prompt_ref": "n"}),
        )
        await sim.wait_idle()
    assert rx.errors == []
    assert all("x-algoritm" in d.headers for d in rx.deliveries)
    calls = rx.by_voice_id()
    ledger = sim.ledger()
    assert len(ledger) == 45
    for dial in ledger:
        assert_events_tell_the_ledger(dial, calls[dial["voice_id"]])
        assert dial["hangup_by"] in ("person", "platform")
    outcomes = {d["outcome"] for d in ledger}
    assert {"human", "machine"} <= outcomes
    assert outcomes - {"human", "machine"}, "some numbers must fail to connect"
    completions = {c["broadcast_id"]: c for c in rx.completions()}
    for answer, size in ((dtmf, 30), (asr, 10), (recorded, 5)):
        info = completions[answer.json()["broadcast_id"]]["broadcast_call_info"]
        assert info["total_calls"] == size
        assert info["successful_calls"] + info["failed_calls"] == size
    asr_events = [e for e in rx.accepted if e.get("playstate") == "speech_recognized"]
    assert {e["reason"] for e in asr_events} <= {"RecognizedSpeech", "NoMatch"}
    assert all(e["prompt_ref"] == "q1" for e in asr_events)
    stats = sim.stats()
    assert stats["webhooks"]["delivered"] == len(rx.accepted)
    assert stats["dials"] == 45
    assert stats["peak_calls_per_second"] == 45


async def test_play_and_hangup_commands_change_a_live_call() -> None:
    long_calls = {"idle_hangup": 3600.0}
    async with (
        start_receiver() as rx,
        start_simulator(speed=200, outcomes=ONLY_HUMANS, timing=long_calls) as sim,
        httpx.AsyncClient(headers=AUTH) as http,
    ):
        body = broadcast_body(phones(1), rx.url, tts("Welcome", prompt_ref="hello"))
        broadcast_id = (await post_broadcast(sim, body)).json()["broadcast_id"]
        await rx.wait_for(lambda ev: any(e.get("playstate") == "playfinished" for e in ev))
        voice_id = rx.accepted[0]["voice_id"]
        call = f"{sim.base_url}/broadcast/{broadcast_id}/call/{voice_id}"
        answer = await http.put(call + "/play", json=tts("Press 1", prompt_ref="q2", dtmf=True))
        assert answer.status_code == 200
        assert answer.json()["playstate"] == "initiated"
        await rx.wait_for(lambda ev: any(e.get("playstate") == "digitcollected" for e in ev))
        # a play cut short by a newer one, then the application hangs up mid-prompt
        long_text = "A goodbye that takes a while to say. " * 60  # 110 s of speech
        await http.put(call + "/play", json=tts(long_text, prompt_ref="bye"))
        await http.put(call + "/play", json=tts(long_text, prompt_ref="bye2"))
        assert (await http.delete(call)).status_code == 200
        await sim.wait_idle()
        again = await http.delete(call)
        late_play = await http.put(call + "/play", json=tts())
    assert assert_error_shape(again, 404)["error_code"] == "call_not_active"
    assert assert_error_shape(late_play, 404)["error_code"] == "call_not_active"
    (dial,) = sim.ledger()
    assert [p["prompt_ref"] for p in dial["prompts"]] == ["hello", "q2", "bye", "bye2"]
    assert [p["source"] for p in dial["prompts"]] == ["connect", "app", "app", "app"]
    assert [p["interrupted"] for p in dial["prompts"]] == [False, False, True, True]
    assert dial["inputs"][0]["prompt_ref"] == "q2"
    assert dial["disconnect_reason"] == "cancelled"
    assert dial["hangup_by"] == "app"
    events = rx.by_voice_id()[voice_id]
    assert events[-1]["disconnect_reason"] == "cancelled"
    digit = next(e for e in events if e.get("playstate") == "digitcollected")
    assert digit["digit"] == dial["inputs"][0]["digits"]


async def test_single_call_form_and_person_hangs_up_normally() -> None:
    async with (
        start_receiver() as rx,
        start_simulator(outcomes=ONLY_HUMANS, webhooks={"digit_field": "both"}) as sim,
        httpx.AsyncClient(headers=AUTH) as http,
    ):
        body = {
            "name": "one call",
            "owner_ref": "single",
            "from": "12025550000",
            "to": "447700900123",
            "action_on_connect": {"play": tts(dtmf=True)},
            "event_url": rx.url,
        }
        created = await http.post(sim.base_url + "/call", json=body)
        assert created.json()["state"] == "initiated"
        voice_id = created.json()["voice_id"]
        await sim.wait_idle()
        ended = await http.delete(f"{sim.base_url}/call/{voice_id}")
    assert ended.status_code == 404
    (dial,) = sim.ledger()
    assert dial["voice_id"] == voice_id
    assert dial["number"] == "+447700900123"
    assert dial["broadcast_id"] is None
    assert dial["disconnect_reason"] == "normal"
    assert dial["hangup_by"] == "person"
    events = rx.by_voice_id()[voice_id]
    assert_events_tell_the_ledger(dial, events)
    collected = [e for e in events if e.get("playstate") == "digitcollected"]
    assert all(e["digit"] == e["digits"] for e in collected)


async def run_once(seed: int, speed: float, count: int) -> dict[str, tuple[Any, ...]]:
    async with start_receiver() as rx, start_simulator(seed=seed, speed=speed) as sim:
        for half in (phones(count // 2), phones(count - count // 2, count // 2)):
            await post_broadcast(sim, broadcast_body(half, rx.url))
        await post_broadcast(sim, broadcast_body(phones(count // 4), rx.url))  # dial again
        await sim.wait_idle()
    return {
        f"{d['number']}#{d['attempt']}": (
            d["outcome"],
            d["amd_result"],
            d["disconnect_reason"],
            tuple((i["result"], i.get("digits")) for i in d["inputs"]),
        )
        for d in sim.ledger()
    }


async def test_same_seed_same_outcomes_whatever_the_speed() -> None:
    first = await run_once(seed=11, speed=300, count=40)
    second = await run_once(seed=11, speed=900, count=40)
    other = await run_once(seed=12, speed=900, count=40)
    assert len(first) == 50
    assert first == second
    assert first != other
    # a number dialled again draws afresh: retries can reach a different outcome
    assert any(first[f"+1202555{i:04d}#1"] != first[f"+1202555{i:04d}#2"] for i in range(10))


async def test_redelivery_after_the_receiver_answers_500() -> None:
    async with start_receiver(fail_first=4) as rx, start_simulator(outcomes=ONLY_HUMANS) as sim:
        await post_broadcast(sim, broadcast_body(phones(3), rx.url))
        await sim.wait_idle()
    assert [d.status for d in rx.deliveries[:4]] == [500] * 4
    webhooks = sim.stats()["webhooks"]
    assert webhooks["failed"] == 4
    assert webhooks["redelivered"] == 4
    assert webhooks["given_up"] == 0
    calls = rx.by_voice_id()
    for dial in sim.ledger():  # every event arrived, still in order per call
        assert_events_tell_the_ledger(dial, calls[dial["voice_id"]])


async def test_receiver_that_never_answers_2xx_is_given_up() -> None:
    webhooks = {"max_attempts": 3, "retry_initial": 0.01, "retry_max": 0.01}
    async with (
        start_receiver(status=lambda event: 503) as rx,
        start_simulator(outcomes=ONLY_HUMANS, webhooks=webhooks) as sim,
    ):
        await post_broadcast(sim, broadcast_body(phones(1), rx.url))
        await sim.wait_idle()
    stats = sim.stats()["webhooks"]
    assert stats["given_up"] == stats["events"]
    assert len(rx.deliveries) == 3 * stats["events"]


async def test_webhook_faults_drop_duplicate_and_reorder() -> None:
    async with start_receiver() as rx, start_simulator(faults={"webhook_drop_share": 1.0}) as sim:
        await post_broadcast(sim, broadcast_body(phones(5), rx.url))
        await sim.wait_idle()
    assert rx.deliveries == []
    assert sim.stats()["webhooks"]["dropped"] > 5

    async with (
        start_receiver() as rx,
        start_simulator(faults={"webhook_duplicate_share": 1.0}) as sim,
    ):
        await post_broadcast(sim, broadcast_body(phones(5), rx.url))
        await sim.wait_idle()
    events = [json.dumps(e, sort_keys=True) for e in rx.accepted]
    assert len(events) == 2 * len(set(events))

    faults = {"webhook_reorder_share": 0.5}
    async with start_receiver() as rx, start_simulator(outcomes=ONLY_HUMANS, faults=faults) as sim:
        await post_broadcast(sim, broadcast_body(phones(20), rx.url))
        await sim.wait_idle()
    calls = rx.by_voice_id()
    stories = [[step(e) for e in calls[d["voice_id"]]] for d in sim.ledger()]
    assert all(
        sorted(s) == sorted(expected_story(d)) for s, d in zip(stories, sim.ledger(), strict=True)
    )
    assert any(s != expected_story(d) for s, d in zip(stories, sim.ledger(), strict=True))


async def test_delayed_webhooks_arrive_late_and_plaintext_option() -> None:
    faults = {"webhook_delay_share": 1.0, "webhook_delay": 0.3}
    async with start_receiver() as rx, start_simulator(plaintext=True, faults=faults) as sim:
        await post_broadcast(sim, broadcast_body(phones(3), rx.url))
        await sim.wait_idle()
    assert rx.deliveries
    stats = sim.stats()["webhooks"]
    assert stats["delayed"] == stats["events"]
    for delivery in rx.deliveries:  # each arrived at least the delay after it happened
        happened = datetime.fromisoformat(delivery.event["timestamp"]).timestamp()
        assert delivery.received - happened >= 0.25
    assert all("x-algoritm" not in d.headers for d in rx.deliveries)
    assert all(json.loads(d.body) == d.event for d in rx.deliveries)


async def test_platform_retries_redial_failed_numbers() -> None:
    busy = {**ONLY_HUMANS, "human": 0.0, "busy": 1.0}
    async with start_receiver() as rx, start_simulator(outcomes=busy) as sim:
        body = broadcast_body(phones(2), rx.url)
        body["call_param"] = {"IntervalBetweenRetries": 1000, "NumberOfRetries": 2}
        await post_broadcast(sim, body)
        await sim.wait_idle()
    ledger = sim.ledger()
    assert sorted((d["number"], d["platform_attempt"]) for d in ledger) == [
        (n, a) for n in ("+12025550000", "+12025550001") for a in (1, 2, 3)
    ]
    initiated = [e for e in rx.accepted if e.get("state") == "initiated"]
    assert sorted(e["attempt"] for e in initiated) == [1, 1, 2, 2, 3, 3]
    (complete,) = rx.completions()
    assert complete["broadcast_call_info"]["failed_calls"] == 2
    assert rx.accepted[-1]["state"] == "broadcastcall_complete"


async def test_ledger_and_stats_over_http_and_reset(slow_simulator: RunningSimulator) -> None:
    simulator = slow_simulator
    await post_broadcast(simulator, broadcast_body(phones(3), UNREACHABLE))
    root = simulator.root_url
    async with httpx.AsyncClient() as http:
        one = (await http.get(f"{root}/_sim/ledger", params={"number": "+12025550001"})).json()
        stats = (await http.get(f"{root}/_sim/stats")).json()
        assert (await http.post(f"{root}/_sim/reset")).status_code == 200
        after = (await http.get(f"{root}/_sim/ledger")).json()
    assert [d["number"] for d in one["dials"]] == ["+12025550001"]
    assert one["dials"][0]["owner_ref"] == "batch-1"
    assert stats["dials"] == 3
    assert stats["live_calls"] == 3
    assert after == {"dials": []}
    assert simulator.stats()["live_calls"] == 0


async def test_thousand_number_broadcast_events_match_the_ledger() -> None:
    numbers = phones(1000, prefix="1303555")
    async with start_receiver() as rx, start_simulator(speed=1000, seed=3) as sim:
        for chunk in range(0, 1000, 250):
            answer = await post_broadcast(sim, broadcast_body(numbers[chunk : chunk + 250], rx.url))
            assert answer.status_code == 200
        await sim.wait_idle(limit=90)
    assert rx.errors == []
    ledger = sim.ledger()
    assert sorted(d["number"] for d in ledger) == sorted("+" + n for n in numbers)
    calls = rx.by_voice_id()
    assert len(calls) == 1000
    for dial in ledger:
        assert_events_tell_the_ledger(dial, calls[dial["voice_id"]])
    assert len(rx.completions()) == 4
    counts = sim.stats()["outcomes"]
    assert counts["human"] > counts["machine"] > counts["busy"] > counts["invalid-number"]


# -- the profile and the CLI ----------------------------------------------------------------


def test_profile_file_errors_are_listed_together(tmp_path: Path) -> None:
    path = tmp_path / "profile.toml"
    path.write_text('[outcomes]\nhuman = "lots"\nghost = 1\n[faults]\napi_5xx_share = 2\n[nope]\n')
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    text = str(caught.value)
    for problem in ("outcomes.human", "outcomes.ghost", "faults.api_5xx_share", "[nope]"):
        assert problem in text


def test_cli_serves_until_interrupted(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    zero = "\n".join(f"{k} = 0" for k in ONLY_HUMANS if k not in ("human", "busy"))
    profile.write_text(f"[outcomes]\nbusy = 1\nhuman = 0\n{zero}\n")
    command = [str(Path(sys.executable).parent / "campaign"), "simulator", "--port", "0"]
    command += ["--seed", "5", "--speed", "100", "--profile", str(profile)]
    command += ["--app-id", TEST_APP_ID, "--app-key", "test-app-key-not-secret"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in first, first
        base_url = first.split()[-1]
        body = broadcast_body(phones(2), UNREACHABLE)
        response = httpx.post(base_url + "/broadcast", json=body, headers=AUTH)
        assert response.status_code == 200
        root = base_url.removesuffix("/voice/v1")
        ledger = httpx.get(root + "/_sim/ledger").json()["dials"]
        assert [d["outcome"] for d in ledger] == ["busy", "busy"]
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "2 dials (busy 2)" in rest.splitlines()[-1]


def test_simulator_in_a_background_thread_for_sync_callers() -> None:
    config = SimulatorConfig(app_id=TEST_APP_ID, app_key="test-app-key-not-secret", speed=1)
    with SimulatorThread(config) as sim:
        body = broadcast_body(phones(2), UNREACHABLE)
        response = httpx.post(sim.base_url + "/broadcast", json=body, headers=AUTH)
        assert response.status_code == 200
        assert [d["number"] for d in sim.ledger()] == ["+12025550000", "+12025550001"]
        assert sim.stats()["live_calls"] == 2
        sim.set_faults(api_5xx_share=1.0)
        assert httpx.post(sim.base_url + "/broadcast", json=body, headers=AUTH).status_code == 503
        sim.reset()
        assert sim.ledger() == []
