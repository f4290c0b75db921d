"""Factories for integration tests: contact lists, campaigns, and real in-process arq workers.

Rows are written through the project's own store functions or plain SQL inserts into the
migrated schema; workers are real `arq.worker.Worker`s on real Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime

from arq.worker import Worker
from sqlalchemy import insert

from campaigns.config import Settings
from campaigns.db import async_session_factory, make_async_engine, make_engine
from campaigns.definition import definition_to_json, parse_definition
from campaigns.models import Contact, ContactList, utcnow
from campaigns.store import campaigns as campaign_store


def make_list(
    database_url: str,
    phones: Sequence[str],
    *,
    name: str = "test-list",
    zones: str | Callable[[str], str] = "America/New_York",
) -> int:
    """A contact list with the given E.164 numbers; returns its id."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            list_id = conn.execute(
                insert(ContactList)
                .values(name=name, rows_total=len(phones), imported=len(phones))
                .returning(ContactList.id)
            ).scalar_one()
            conn.execute(
                insert(Contact),
                [
                    {
                        "list_id": list_id,
                        "phone": phone,
                        "name": f"Person {i}",
                        "attributes": {"city": "Springfield"},
                        "region": "US",
                        "time_zones": zones(phone) if callable(zones) else zones,
                        "source_row": i + 2,
                    }
                    for i, phone in enumerate(phones)
                ],
            )
        return int(list_id)
    finally:
        engine.dispose()


def us_numbers(count: int, start: int = 0) -> list[str]:
    """Distinct, well-formed US numbers (+1 AAA 555 NNNN)."""
    return [f"+1{202 + (start + i) // 10000}555{(start + i) % 10000:04d}" for i in range(count)]


def campaign_toml(
    *,
    list_name: str = "test-list",
    cps: float = 1000,
    max_concurrent: int = 5000,
    batch_size: int = 100,
    max_attempts: int = 1,
    interval: str = "1m",
    retry_on: str = '["no_answer", "busy", "failed", "machine", "unknown"]',
    window: str = 'days = "mon-sun"\nstart = "00:00"\nend = "23:59"\ntimezone = "recipient"',
    poll: str = "",
    amd: str = 'behaviour = "hangup_and_retry"',
) -> str:
    return f"""
name = "test campaign"
list = "{list_name}"
caller_id = "+12025550100"

[message]
text = "Hello, this is a test message."

{poll}

[amd]
{amd}

[retry]
interval = "{interval}"
max_attempts = {max_attempts}
retry_on = {retry_on}

[pacing]
calls_per_second = {cps}
max_concurrent = {max_concurrent}
batch_size = {batch_size}

[window]
{window}
"""


async def create_campaign(
    database_url: str, toml_text: str, *, start: bool = True, now: datetime | None = None
) -> int:
    definition = parse_definition(toml_text, source="test.toml")
    engine = make_async_engine(database_url)
    try:
        sessions = async_session_factory(engine)
        async with sessions() as session, session.begin():
            list_id = await campaign_store.list_id_by_name(session, definition.list_name)
            stamp = now or utcnow()
            campaign_id = await campaign_store.create_campaign(
                session,
                name=definition.name,
                list_id=list_id,
                caller_id=definition.caller_id,
                definition=definition_to_json(definition),
                source_file=None,
                now=stamp,
            )
            if start:
                campaign = await campaign_store.transition(session, campaign_id, "start", stamp)
                await campaign_store.fan_out_recipients(session, campaign, stamp)
        return campaign_id
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def running_workers(
    settings: Settings, redis_url: str, count: int = 1, *, clock: Callable[[], datetime] = utcnow
) -> AsyncIterator[list[Worker]]:
    """`count` real arq workers on one queue, in this event loop; stopped on exit."""
    from workers.settings import close_worker, make_worker

    workers = [
        make_worker(settings, redis_url, clock=clock, handle_signals=False) for _ in range(count)
    ]
    tasks = [asyncio.create_task(w.async_run()) for w in workers]
    try:
        yield workers
    finally:
        for w in workers:
            await close_worker(w)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
