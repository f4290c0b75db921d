"""Shared helpers for integration tests that need the EnableX simulator or a webhook receiver.

Everything runs for real over loopback: the simulator (campaigns.enablex.simulator) on a free
port, and a small Starlette/uvicorn receiver that decrypts each delivery with
`campaigns.enablex.crypto.decrypt_payload` and records it.

Context managers (work in any async test, nothing to import but these):

    from tests.integration.sim_helpers import start_receiver, start_simulator

    async def test_something() -> None:
        async with start_receiver() as rx, start_simulator(speed=500, seed=3) as sim:
            # sim.base_url -> http://127.0.0.1:PORT/voice/v1, sim.app_id / sim.app_key
            # rx.url       -> give it as event_url
            ...
            await sim.wait_idle()          # no live call, no webhook left to deliver
            sim.ledger(number="+12025550101"), sim.stats(), sim.set_faults(...)

`start_simulator(**profile_sections, speed=, seed=, app_id=, app_key=, plaintext=)` starts
from FAST_PROFILE (the default profile with short timings) and changes keys per section,
e.g. `start_simulator(outcomes={"human": 1, "machine": 0, ...}, faults={"api_latency": 0.1})`.
`start_receiver(fail_first=3)` answers 500 to its first three deliveries;
`start_receiver(status=lambda event: 200)` decides per event.

Fixtures: import them into a conftest.py (importing them into a test module makes ruff
report F811 where a test takes them as arguments):

    # tests/integration/conftest.py
    from tests.integration.sim_helpers import simulator, webhook_receiver  # noqa: F401

    async def test_x(simulator: RunningSimulator, webhook_receiver: Receiver) -> None: ...

`simulator` is FAST_PROFILE at speed 500, seed 7, app id/key TEST_APP_ID/TEST_APP_KEY;
`webhook_receiver` decrypts with TEST_APP_ID.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from campaigns.enablex.crypto import decrypt_payload
from campaigns.enablex.simulator import (
    Profile,
    RunningSimulator,
    SimulatorConfig,
    load_profile,
    run_simulator,
)

TEST_APP_ID = "5f1e99bf90ce3c3ccsc52e6462"
TEST_APP_KEY = "test-app-key-not-secret"
CALLER_ID = "12025550000"

# The default outcome shares and answers, with every timing short so a call is quick even at
# modest speeds, and fast webhook redelivery.
FAST_PROFILE: Profile = load_profile().replace(
    timing={
        "setup": 0.2,
        "ring_min": 0.5,
        "ring_max": 2.0,
        "no_answer_after": 5.0,
        "reject_after": 1.0,
        "busy_after": 0.5,
        "failed_after": 0.3,
        "invalid_after": 0.2,
        "tts_chars_per_second": 20.0,
        "min_prompt": 0.5,
        "recorded_prompt": 1.0,
        "input_min": 0.2,
        "input_max": 1.0,
        "start_timeout": 2.0,
        "idle_hangup": 1.0,
    },
    webhooks={"retry_initial": 0.02, "retry_factor": 1.5, "retry_max": 0.2, "timeout": 5.0},
)

ONLY_HUMANS = {
    "human": 1.0,
    "machine": 0.0,
    "no_answer": 0.0,
    "busy": 0.0,
    "rejected": 0.0,
    "failed": 0.0,
    "invalid": 0.0,
}


@contextlib.asynccontextmanager
async def start_simulator(
    *,
    speed: float = 500.0,
    seed: int = 7,
    app_id: str = TEST_APP_ID,
    app_key: str = TEST_APP_KEY,
    plaintext: bool = False,
    profile: Profile | None = None,
    wall_clock: Callable[[], float] = time.time,
    **sections: dict[str, Any],
) -> AsyncIterator[RunningSimulator]:
    """A simulator on a free loopback port, FAST_PROFILE (or `profile`) with `sections` changed;
    `wall_clock` stamps its events (a sped-up clock shared with the workers)."""
    base = profile or FAST_PROFILE
    config = SimulatorConfig(
        app_id=app_id,
        app_key=app_key,
        seed=seed,
        speed=speed,
        plaintext=plaintext,
        profile=base.replace(**sections) if sections else base,
        wall_clock=wall_clock,
    )
    async with run_simulator(config) as sim:
        yield sim


@dataclass
class Delivery:
    """One POST the receiver got: raw headers and body, the decrypted event, the answer."""

    headers: dict[str, str]
    body: bytes
    event: dict[str, Any]
    status: int
    received: float  # time.time() on arrival


@dataclass
class Receiver:
    url: str
    app_id: str
    deliveries: list[Delivery] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    fail_first: int = 0
    status: Callable[[dict[str, Any]], int] | None = None

    @property
    def accepted(self) -> list[dict[str, Any]]:
        """Events answered 2xx, in arrival order (a redelivered event appears once)."""
        return [d.event for d in self.deliveries if 200 <= d.status < 300]

    def by_voice_id(self) -> dict[str, list[dict[str, Any]]]:
        calls: dict[str, list[dict[str, Any]]] = {}
        for event in self.accepted:
            if "voice_id" in event:
                calls.setdefault(event["voice_id"], []).append(event)
        return calls

    def completions(self) -> list[dict[str, Any]]:
        return [e for e in self.accepted if e.get("state") == "broadcastcall_complete"]

    async def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], limit: float = 30.0
    ) -> None:
        """Wait until `predicate(accepted events)` holds (TimeoutError after `limit` s)."""
        async with asyncio.timeout(limit):
            while not predicate(self.accepted):  # noqa: ASYNC110
                await asyncio.sleep(0.005)

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        try:
            event = decrypt_payload(headers, body, self.app_id)
        except Exception as exc:  # noqa: BLE001 - recorded, and the test asserts none happened
            self.errors.append(repr(exc))
            return Response(status_code=400)
        if len(self.deliveries) < self.fail_first:
            status = 500
        elif self.status is not None:
            status = self.status(event)
        else:
            status = 200
        self.deliveries.append(Delivery(headers, body, event, status, time.time()))
        return Response(status_code=status)


@contextlib.asynccontextmanager
async def serve_app(app: Starlette) -> AsyncIterator[int]:
    """Serve an ASGI app on a free loopback port on the running loop; yields the port."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", ws="none", backlog=1024
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.002)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


@contextlib.asynccontextmanager
async def start_receiver(
    *,
    app_id: str = TEST_APP_ID,
    fail_first: int = 0,
    status: Callable[[dict[str, Any]], int] | None = None,
) -> AsyncIterator[Receiver]:
    """A webhook receiver on a free loopback port that decrypts and records every event."""
    receiver = Receiver(url="", app_id=app_id, fail_first=fail_first, status=status)
    app = Starlette(routes=[Route("/hook/{token}", receiver._handle, methods=["POST"])])
    async with serve_app(app) as port:
        receiver.url = f"http://127.0.0.1:{port}/hook/test-token"
        yield receiver


def basic_auth(app_id: str = TEST_APP_ID, app_key: str = TEST_APP_KEY) -> dict[str, str]:
    token = base64.b64encode(f"{app_id}:{app_key}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def phones(count: int, start: int = 0, prefix: str = "1202555") -> list[str]:
    """`count` distinct wire-format numbers (digits, country code first)."""
    return [f"{prefix}{i:04d}" for i in range(start, start + count)]


def tts(text: str = "Hello. Press 1 for yes, 2 for no.", **extra: Any) -> dict[str, Any]:
    return {"text": text, "voice": "female", "language": "en-US", "prompt_ref": "q1", **extra}


def broadcast_body(
    numbers: Sequence[str], event_url: str, play: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """A valid POST /broadcast body, as the samples send it (numbers as a JSON string)."""
    body: dict[str, Any] = {
        "name": "test campaign",
        "owner_ref": "batch-1",
        "from": CALLER_ID,
        "broadcastnumbersjson": json.dumps([{"phone": n} for n in numbers]),
        "action_on_connect": {"play": play if play is not None else tts(dtmf=True)},
        "call_param": {"IntervalBetweenRetries": 0, "NumberOfRetries": 0},
        "event_url": event_url,
        "callhandler_url": event_url,
        "call_handler_url": event_url,
    }
    body.update(extra)
    return body


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    """A running simulator: FAST_PROFILE, speed 500, seed 7, TEST_APP_ID/TEST_APP_KEY."""
    async with start_simulator() as sim:
        yield sim


@pytest.fixture
async def webhook_receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver decrypting with TEST_APP_ID; `.url` is its event_url."""
    async with start_receiver() as receiver:
        yield receiver
