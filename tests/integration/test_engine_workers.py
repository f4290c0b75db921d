"""The campaign engine end to end with real arq workers, Redis, SQL and the simulator.

The webhook side is a plain receiver here (answers 200, applies nothing): these tests are
about who gets dialled, when and how often — the simulator's ledger is the ground truth.
Attempts are settled by the sweeper (outcome `unknown`) where a test needs retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from campaigns.config import Settings
from campaigns.db import async_session_factory, make_async_engine
from campaigns.enablex.sim_calls import peak_in_window
from campaigns.enablex.simulator import RunningSimulator
from campaigns.models import Batch, Campaign, Recipient
from campaigns.store import campaigns as campaign_store
from tests.integration.factories import (
    campaign_toml,
    create_campaign,
    make_list,
    running_workers,
    us_numbers,
)
from tests.integration.sim_helpers import TEST_APP_ID, TEST_APP_KEY, serve_app, start_simulator

TOKEN = "engine-test-token-0123456789"


@contextlib.asynccontextmanager
async def null_ingester() -> AsyncIterator[str]:
    """Answers 200 to every webhook; yields the public URL to configure."""

    async def ok(_request: Request) -> Response:
        return Response(status_code=200)

    app = Starlette(routes=[Route("/webhooks/enablex/{token}", ok, methods=["POST"])])
    async with serve_app(app) as port:
        yield f"http://127.0.0.1:{port}"


def settings_for(
    database_url: str, redis_url: str, sim: RunningSimulator, hooks: str, **extra: object
) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "enablex_base_url": sim.base_url,
        "enablex_app_id": TEST_APP_ID,
        "enablex_app_key": TEST_APP_KEY,
        "enablex_timeout": 2.0,
        "webhook_public_url": hooks,
        "webhook_token": TOKEN,
        "queue_name": f"test:{uuid.uuid4().hex[:8]}",
        "worker_poll_delay": 0.01,
    }
    values.update(extra)
    return Settings(**values)  # type: ignore[arg-type]


def dials(sim: RunningSimulator) -> Counter[str]:
    return Counter(d["number"] for d in sim.ledger())


async def wait_until(predicate: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(0.05)


async def campaign_status(database_url: str, campaign_id: int) -> str:
    engine = make_async_engine(database_url)
    try:
        async with async_session_factory(engine)() as session:
            return str(
                await session.scalar(select(Campaign.status).where(Campaign.id == campaign_id))
            )
    finally:
        await engine.dispose()


async def transition(database_url: str, campaign_id: int, command: str) -> None:
    engine = make_async_engine(database_url)
    try:
        async with async_session_factory(engine)() as session, session.begin():
            await campaign_store.transition(session, campaign_id, command, datetime.now(UTC))
            if command == "cancel":
                await campaign_store.cancel_open_recipients(session, campaign_id, datetime.now(UTC))
    finally:
        await engine.dispose()


def assert_paced(ledger: list[dict[str, object]], rate: int) -> None:
    """The simulator's dials never went over `rate` per second, and were not far under it.

    The pacer holds the calls *sent* in any ADMIT_WINDOW (1.05 s) to the rate
    (test_pacing.py). The simulator counts *arrivals*, and in this one-loop harness on a
    busy machine a POST can arrive 50-100 ms after its admission, moving a whole batch into
    the next second (CI once counted 427 in one second at 400/s). Over two seconds that
    jitter stays inside the design's +5 % (the pacer allows at most 2 x rate in 2.1 s),
    while workers pacing on their own (2 x rate for two) would be far over.

    Throughput is by design a little under the rate (slots 3 % apart, a 1.05 s window) and
    further slowed here by the shared loop (CI measured 4.4/s at 5/s); the floor catches a
    pacer that serialises the workers or waits whole windows, not a slow machine."""
    times = sorted(float(d["t"]) for d in ledger)  # type: ignore[arg-type]
    assert peak_in_window(times, 2.0) <= max(2 * rate * 1.05, 2 * rate + 1)
    measured = (len(times) - 1) / (times[-1] - times[0])
    assert 0.75 * rate <= measured <= rate * 1.05


async def test_two_workers_dial_every_recipient_exactly_once_within_the_rate(
    database_url: str, redis_url: str
) -> None:
    phones = us_numbers(1200)
    make_list(database_url, phones)
    # Workers, simulator and receiver share one event loop here, which carries about 250-400
    # calls/s (with their webhooks) depending on the machine: the rate stays below that.
    rate = 200
    await create_campaign(database_url, campaign_toml(cps=rate, batch_size=25, max_concurrent=5000))
    async with null_ingester() as hooks, start_simulator(speed=500) as sim:
        settings = settings_for(database_url, redis_url, sim, hooks)
        async with running_workers(settings, redis_url, count=2):
            await wait_until(lambda: len(sim.ledger()) >= 1200, 60, "1,200 dials")
            await asyncio.sleep(1.0)  # nothing more may come
        counts = dials(sim)
        ledger = sim.ledger()
    assert set(counts) == set(phones)
    assert set(counts.values()) == {1}
    assert_paced(ledger, rate)


@pytest.mark.parametrize("rate", [5, 50])
async def test_measured_rate_follows_the_setting(
    database_url: str, redis_url: str, rate: int
) -> None:
    count = rate * 4
    make_list(database_url, us_numbers(count))
    campaign_id = await create_campaign(
        database_url, campaign_toml(cps=rate, batch_size=max(1, rate // 5))
    )
    assert campaign_id
    async with null_ingester() as hooks, start_simulator(speed=500) as sim:
        settings = settings_for(database_url, redis_url, sim, hooks)
        async with running_workers(settings, redis_url, count=2):
            await wait_until(lambda: len(sim.ledger()) >= count, 30, f"{count} dials")
        ledger = sim.ledger()
    assert_paced(ledger, rate)


async def test_pause_stops_new_dials_within_a_tick_and_resume_continues(
    database_url: str, redis_url: str
) -> None:
    phones = us_numbers(300)
    make_list(database_url, phones)
    campaign_id = await create_campaign(database_url, campaign_toml(cps=40, batch_size=10))
    async with null_ingester() as hooks, start_simulator(speed=500) as sim:
        settings = settings_for(database_url, redis_url, sim, hooks)
        async with running_workers(settings, redis_url, count=1):
            await wait_until(lambda: len(sim.ledger()) >= 40, 20, "first dials")
            await transition(database_url, campaign_id, "pause")
            paused_at = time.time()
            await asyncio.sleep(3.0)
            after_pause = [d for d in sim.ledger() if _epoch(d["time"]) > paused_at + 1.0]
            dialled_while_paused = len(sim.ledger())
            assert after_pause == []
            assert dialled_while_paused < 300
            await transition(database_url, campaign_id, "resume")
            await wait_until(lambda: len(sim.ledger()) >= 300, 30, "all dials after resume")
            await asyncio.sleep(0.5)
        counts = dials(sim)
    assert set(counts) == set(phones)
    assert set(counts.values()) == {1}


async def test_cancel_ends_the_campaign_and_nobody_else_is_called(
    database_url: str, redis_url: str
) -> None:
    make_list(database_url, us_numbers(200))
    campaign_id = await create_campaign(database_url, campaign_toml(cps=40, batch_size=10))
    async with null_ingester() as hooks, start_simulator(speed=500) as sim:
        settings = settings_for(database_url, redis_url, sim, hooks)
        async with running_workers(settings, redis_url, count=1):
            await wait_until(lambda: len(sim.ledger()) >= 20, 20, "first dials")
            await transition(database_url, campaign_id, "cancel")
            cancelled_at = time.time()
            await asyncio.sleep(2.5)
        late = [d for d in sim.ledger() if _epoch(d["time"]) > cancelled_at + 1.0]
        total = len(sim.ledger())
    assert late == []
    assert total < 200
    assert await campaign_status(database_url, campaign_id) == "cancelled"
    engine = make_async_engine(database_url)
    async with async_session_factory(engine)() as session:
        statuses = Counter((await session.scalars(select(Recipient.status))).all())
    await engine.dispose()
    assert statuses["cancelled"] >= 200 - total - 10  # those claimed at cancel are released
    assert statuses["pending"] == 0
    assert statuses["waiting_retry"] == 0


async def test_retries_come_when_due_and_never_beyond_max_attempts(
    database_url: str, redis_url: str
) -> None:
    """No final events arrive (a null ingester): the sweeper settles every attempt as
    `unknown` after the timeout, and the retry rules call each number again one minute
    later, exactly `max_attempts` times in all. The workers' clock runs 60x fast."""
    phones = us_numbers(60)
    make_list(database_url, phones)
    campaign_id = await create_campaign(
        database_url, campaign_toml(cps=200, batch_size=20, max_attempts=3, interval="1m")
    )
    t0 = time.monotonic()
    real_start = datetime.now(UTC)

    def fast_clock() -> datetime:
        return real_start + timedelta(seconds=(time.monotonic() - t0) * 60)

    async with null_ingester() as hooks, start_simulator(speed=500) as sim:
        settings = settings_for(database_url, redis_url, sim, hooks, attempt_timeout_seconds=30.0)
        async with running_workers(settings, redis_url, count=2, clock=fast_clock):
            await wait_until(lambda: len(sim.ledger()) >= 180, 60, "three rounds of dials")
            await wait_until(lambda: asyncio.get_running_loop() is not None, 1, "")
            for _ in range(100):
                if await campaign_status(database_url, campaign_id) == "completed":
                    break
                await asyncio.sleep(0.2)
        ledger = sim.ledger()
    counts = Counter(d["number"] for d in ledger)
    assert set(counts.values()) == {3}
    assert set(counts) == set(phones)
    # Each number's dials are at least the retry interval apart on the workers' clock:
    # one minute = one real second here.
    by_number: dict[str, list[float]] = {}
    for d in ledger:
        by_number.setdefault(d["number"], []).append(_epoch(d["time"]))
    for times in by_number.values():
        times.sort()
        assert all(b - a >= 1.0 for a, b in itertools.pairwise(times))
    assert await campaign_status(database_url, campaign_id) == "completed"


async def test_a_429_and_5xx_storm_delays_but_loses_nothing(
    database_url: str, redis_url: str
) -> None:
    phones = us_numbers(300)
    make_list(database_url, phones)
    await create_campaign(database_url, campaign_toml(cps=200, batch_size=20))
    async with (
        null_ingester() as hooks,
        start_simulator(speed=500, faults={"calls_per_second": 60, "api_5xx_share": 0.3}) as sim,
    ):
        settings = settings_for(database_url, redis_url, sim, hooks)
        async with running_workers(settings, redis_url, count=2):
            await wait_until(lambda: len(sim.ledger()) >= 300, 90, "all dials through the storm")
            await asyncio.sleep(0.5)
        counts = dials(sim)
        stats = sim.stats()
    assert set(counts) == set(phones)
    assert set(counts.values()) == {1}
    assert stats["api"]["429"] > 0 or stats.get("rate_limited", 0) > 0


def _epoch(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def _unknown_size(database_url: str) -> int:
    """Numbers in batches whose submission outcome is unknown (cut off mid-POST)."""
    engine = make_async_engine(database_url)
    try:
        async with async_session_factory(engine)() as session:
            unknown = await session.scalar(
                select(func.coalesce(func.sum(Batch.size), 0)).where(Batch.state == "unknown")
            )
    finally:
        await engine.dispose()
    return int(unknown or 0)


async def test_kill_9_of_a_worker_mid_campaign_loses_and_duplicates_nothing(
    database_url: str, redis_url: str
) -> None:
    phones = us_numbers(400)
    make_list(database_url, phones)
    campaign_id = await create_campaign(database_url, campaign_toml(cps=100, batch_size=10))
    async with null_ingester() as hooks, start_simulator(speed=500) as sim:
        settings = settings_for(database_url, redis_url, sim, hooks)
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "ENABLEX_BASE_URL": sim.base_url,
            "ENABLEX_APP_ID": TEST_APP_ID,
            "ENABLEX_APP_KEY": TEST_APP_KEY,
            "ENABLEX_TIMEOUT": "1",
            "WEBHOOK_PUBLIC_URL": hooks,
            "WEBHOOK_TOKEN": TOKEN,
            "QUEUE_NAME": settings.queue_name,
            "WORKER_POLL_DELAY": "0.01",
        }
        command = [sys.executable, "-m", "campaigns.cli", "worker"]

        def spawn() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )

        first = spawn()
        try:
            await wait_until(lambda: len(sim.ledger()) >= 80, 30, "first dials")
            first.send_signal(signal.SIGKILL)
            first.wait()
            second = spawn()
            try:
                # The dead worker's claimed batches are re-enqueued by the sweeper (after
                # the submit timeout, 7 s here); a batch cut off mid-POST is marked unknown.
                # Wait until every number is dialled or in an unknown batch.
                async with asyncio.timeout(90):
                    while len(dials(sim)) + await _unknown_size(database_url) < 400:  # noqa: ASYNC110 - polls the sim and SQL
                        await asyncio.sleep(0.5)
                await asyncio.sleep(2.0)  # and nothing more comes
            finally:
                second.terminate()
                second.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
        counts = dials(sim)
    assert set(counts.values()) == {1}
    unknown = await _unknown_size(database_url)
    # Everyone is dialled once, except members of a batch cut off mid-POST whose broadcast
    # never reached EnableX: those are never dialled blindly a second time.
    assert len(counts) >= 400 - unknown
    assert campaign_id
