"""The local EnableX Voice API simulator (spec: ../shared/enablex-voice-api.md §5).

A loopback ASGI server (Starlette on uvicorn) that answers the Voice API like the platform,
plays every dialled number out in scaled real time, sends the events to `event_url`
encrypted like EnableX (or plaintext), injects faults, and keeps a ledger of every dial —
the ground truth for tests, the demo and benchmarks.

Run it: `campaign simulator --port 8900 --seed 1 --speed 10`, or in-process:

    async with run_simulator(SimulatorConfig(seed=1, speed=200)) as sim:
        client = EnablexClient(http, base_url=sim.base_url, app_id=sim.app_id, ...)
        ...
        await sim.wait_idle()
        sim.ledger()  # or GET {sim.root_url}/_sim/ledger

and `SimulatorThread(config)` does the same in a background thread for sync callers.

Modules: sim_profile (settings), sim_draws (seeded, pure draws), sim_calls (timelines,
ledger, stats), sim_sender (webhook delivery), sim_api (HTTP routes and validation).

HTTP: `{root}/voice/v1/...` is the API of spec §2–§3. `GET /_sim/ledger[?number=+1...&
broadcast_id=...&owner_ref=...]` → `{"dials": [...]}`, one record per dial: number (E.164),
time, t (seconds since start/reset), broadcast_id, voice_id, owner_ref, attempt (dials of that
number so far), platform_attempt, outcome (human, machine, no-answer, busy, rejected, failed,
invalid-number), amd_result, answered, prompts [{play_id, prompt_ref, text | prompt_name,
source connect/app, input dtmf/asr/null, interrupted}], inputs [{play_id, prompt_ref, kind,
result digit/invalid_digit/silence/phrase/noise, valid, digits | text | silence}],
disconnect_reason, hangup_by (person, platform, app), ended_t. `GET /_sim/stats`: counts per
outcome, webhooks sent/delivered/failed/redelivered/..., peak calls per second (most dials in
any 1-second window) and peak concurrent live calls. `POST /_sim/reset` forgets everything
(live calls stop silently). `GET|POST /_sim/faults` reads or changes the `[faults]` keys.

Profile (TOML; every key optional; defaults in `default_profile.toml`):

- `[outcomes]` human, machine, no_answer, busy, rejected, failed, invalid: shares of dials,
  normalised. Numbers shorter than 8 or longer than 15 digits are always invalid.
- `[amd]` field (event field name, default amd_result), unknown_share (answered calls reported
  `unknown`), only_when_requested (report AMD only when the body sets
  answering_machine_detection).
- `[timing]` seconds of simulated time, divided by the speed: setup, ring_min/ring_max,
  no_answer_after, reject_after, busy_after, failed_after, invalid_after,
  tts_chars_per_second, min_prompt, recorded_prompt, input_min/input_max (answer delay after
  the prompt), start_timeout (silence → menutimeout when the play gives none), idle_hangup (a
  person hangs up, `normal`, when nothing more plays).
- `[dtmf]` digits = {"1" = 0.3, ...} (weights of valid answers), invalid_digit_share
  (a key not in `digits`), silence_share (→ menutimeout).
- `[asr]` phrases = {"yes" = 0.5, ...}, noise_share (→ speech_recognized, NoMatch),
  silence_share, confidence_min/confidence_max.
  Machines never answer input prompts (menutimeout).
- `[webhooks]` encrypt, algorithm (aes256...), format (base64/hex/latin1), digit_field
  (digit/digits/both), max_attempts, retry_initial/retry_factor/retry_max and timeout (real
  seconds), senders (concurrent deliveries), transport (raw/httpx).
- `[faults]` calls_per_second and max_concurrent_calls (429 + Retry-After on POST /broadcast
  and /call; a broadcast larger than calls_per_second is refused with 400), api_5xx_share
  (503, nothing done), api_5xx_after_share (502 after the request WAS applied), api_latency
  (real seconds), webhook_duplicate_share, webhook_reorder_share, webhook_delay_share with
  webhook_delay (real seconds), webhook_drop_share (never delivered).
- `[api]` max_numbers_per_broadcast, max_platform_retries.

Determinism: outcomes, timings, answers and webhook faults are drawn per (seed, number, dial
count of that number, prompt index / event index), so a run with the same seed and the same
dials gives the same results whatever the timing; the n-th dial of a number may differ from
its first, so retries are observable. Ids (broadcast_id, voice_id, play_id) are random.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import uvicorn

from campaigns.enablex.sim_api import API_PREFIX, SimulatorApi
from campaigns.enablex.sim_calls import CallEngine
from campaigns.enablex.sim_profile import Profile, load_profile
from campaigns.enablex.sim_sender import Connections, WebhookSender

__all__ = [
    "Profile",
    "RunningSimulator",
    "SimulatorConfig",
    "SimulatorThread",
    "load_profile",
    "run_simulator",
]
T = TypeVar("T")


@dataclass(frozen=True)
class SimulatorConfig:
    app_id: str = "sim-app-id"
    app_key: str = field(default="sim-app-key", repr=False)
    seed: int = 0
    speed: float = 1.0  # time divisor: 10 makes a 30 s call last 3 s
    profile: Profile = field(default_factory=load_profile)
    plaintext: bool = False  # send the events unencrypted
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    # Epoch seconds stamped on events and the ledger; the demo passes a clock sped up like
    # the calls, so that event times and the workers' clock agree.
    wall_clock: Callable[[], float] = time.time


class RunningSimulator:
    """A started simulator: its URLs and in-process access to its engine."""

    def __init__(
        self,
        config: SimulatorConfig,
        engine: CallEngine,
        port: int,
        server: uvicorn.Server | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.port = port
        self.root_url = f"http://{config.host}:{port}"
        self.base_url = self.root_url + API_PREFIX
        self.server = server

    @property
    def app_id(self) -> str:
        return self.config.app_id

    @property
    def app_key(self) -> str:
        return self.config.app_key

    def ledger(self, **filters: str) -> list[dict[str, Any]]:
        return self.engine.select(**filters)

    def stats(self) -> dict[str, Any]:
        return self.engine.stats()

    def reset(self) -> None:
        self.engine.reset()

    def set_faults(self, **changes: Any) -> None:
        """Change fault settings now, e.g. `set_faults(calls_per_second=5)`."""
        self.engine.profile = self.engine.profile.with_faults(changes)

    async def wait_idle(self, limit: float = 60.0, poll: float = 0.01) -> None:
        """Wait until no call is live and every webhook is delivered or given up.

        Raises TimeoutError after `limit` seconds.
        """
        async with asyncio.timeout(limit):
            # Idleness spans the engine, the sender and pending redials: polled, not signalled.
            while not self.engine.idle:  # noqa: ASYNC110
                await asyncio.sleep(poll)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def run_simulator(
    config: SimulatorConfig | None = None,
    *,
    connections: Callable[[], Connections] | None = None,
) -> AsyncIterator[RunningSimulator]:
    """Serve the simulator on the running loop until the block exits."""
    config = config or SimulatorConfig()
    if config.speed <= 0:
        raise ValueError("speed must be > 0")
    profile = config.profile
    sender = WebhookSender(
        profile.webhooks,
        config.app_id,
        encrypt=profile.webhooks.encrypt and not config.plaintext,
        connections=connections,
    )
    engine = CallEngine(
        profile, sender, seed=config.seed, speed=config.speed, wall=config.wall_clock
    )
    app = SimulatorApi(engine, app_id=config.app_id, app_key=config.app_key, seed=config.seed).app()
    sock = _bind(config.host, config.port)
    uv_config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=2,
        backlog=2048,
    )
    server = uvicorn.Server(uv_config)
    await sender.start()
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="simulator-server")
    try:
        while not server.started:
            if serving.done():
                serving.result()
                raise RuntimeError("the simulator server stopped while starting")
            await asyncio.sleep(0.002)
        yield RunningSimulator(config, engine, sock.getsockname()[1], server)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        engine.stop()
        await sender.close()
        sock.close()


class SimulatorThread:
    """The simulator on its own event loop in a background thread, for sync callers.

    `with SimulatorThread(config) as sim:` gives `sim.base_url`, `sim.root_url` and
    thread-safe `ledger()`, `stats()`, `reset()`, `set_faults()`, `wait_idle()`.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sim: RunningSimulator | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="enablex-simulator", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                async with run_simulator(self.config) as sim:
                    self._sim = sim
                    self._ready.set()
                    await self._stop.wait()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                raise

        with contextlib.suppress(BaseException):
            asyncio.run(main())

    def __enter__(self) -> SimulatorThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None or self._sim is None:
            raise RuntimeError("the simulator did not start") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    @property
    def running(self) -> RunningSimulator:
        assert self._sim is not None
        return self._sim

    @property
    def base_url(self) -> str:
        return self.running.base_url

    @property
    def root_url(self) -> str:
        return self.running.root_url

    def _call(self, fn: Callable[[], T]) -> T:
        assert self._loop is not None

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    def ledger(self, **filters: str) -> list[dict[str, Any]]:
        return self._call(lambda: self.running.ledger(**filters))

    def stats(self) -> dict[str, Any]:
        return self._call(self.running.stats)

    def reset(self) -> None:
        self._call(self.running.reset)

    def set_faults(self, **changes: Any) -> None:
        self._call(lambda: self.running.set_faults(**changes))

    def wait_idle(self, limit: float = 60.0) -> None:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self.running.wait_idle(limit), self._loop)
        future.result(limit + 5)


def with_profile(config: SimulatorConfig, **sections: dict[str, Any]) -> SimulatorConfig:
    """A copy of `config` whose profile has some keys changed, per section."""
    return dataclasses.replace(config, profile=config.profile.replace(**sections))
