"""The ingester app against a real database and Redis (httpx.ASGITransport, no mocks)."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import cast

import httpx
import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from campaigns.applying import ApplyConfig, apply_events
from campaigns.config import Settings
from campaigns.db import async_session_factory, make_async_engine, make_engine
from campaigns.enablex.crypto import encrypt_payload
from campaigns.local_redis import free_port
from campaigns.models import WebhookEvent, utcnow
from campaigns.store.events import NewEvent
from campaigns.webhooks import MAX_GROUP, GroupWriter, create_app, feed_key

APP_ID = "5f1e99bf90ce3c3ccsc52e6462"
TOKEN = "tok-" + "x" * 28


def event(
    state: str = "connected", *, voice_id: str | None = None, **extra: object
) -> dict[str, object]:
    return {
        "voice_id": voice_id or str(uuid.uuid4()),
        "broadcast_id": "74a2c2c2-4d55-4b0d-a9f6-8ec09f3bcc35",
        "state": state,
        "from": "12025550100",
        "to": "12025550123",
        "timestamp": "2024-05-01T10:52:10.000Z",
        **extra,
    }


@dataclass
class Ingest:
    client: httpx.AsyncClient
    settings: Settings
    engine: AsyncEngine
    redis: ArqRedis
    database_url: str

    def stored(self) -> list[WebhookEvent]:
        engine = make_engine(self.database_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(select(WebhookEvent).order_by(WebhookEvent.id)).all()
        finally:
            engine.dispose()
        return [WebhookEvent(**row._mapping) for row in rows]

    async def post(
        self,
        data: dict[str, object] | bytes,
        *,
        token: str = TOKEN,
        app_id: str = APP_ID,
        encrypted: bool = True,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        if isinstance(data, bytes):
            body, sent = data, dict(headers or {})
        elif encrypted:
            sent, body = encrypt_payload(data, app_id)
        else:
            sent, body = {}, json.dumps(data).encode()
        return await self.client.post(f"/webhooks/enablex/{token}", content=body, headers=sent)


def make_settings(database_url: str, redis_url: str, **changes: object) -> Settings:
    base = Settings(
        database_url=database_url,
        redis_url=redis_url,
        enablex_app_id=APP_ID,
        webhook_token=TOKEN,
        queue_name=f"test-webhooks-{uuid.uuid4().hex[:8]}",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def ingest(database_url: str, redis_url: str) -> AsyncIterator[Ingest]:
    settings = make_settings(database_url, redis_url)
    engine = make_async_engine(database_url)
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    app = create_app(settings, engine=engine, redis=redis)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        yield Ingest(client, settings, engine, redis, database_url)
    await redis.aclose()
    await engine.dispose()


async def test_an_event_is_stored_then_acknowledged_and_handed_to_the_workers(
    ingest: Ingest,
) -> None:
    data = event("connected", amd_result="human")
    response = await ingest.post(data)
    assert response.status_code == 200
    (row,) = ingest.stored()
    assert row.payload == data
    assert row.voice_id == data["voice_id"]
    assert row.applied_at is None
    assert not row.quarantined
    # Handed to the workers right after the commit, on the apply feed they pop from (the
    # urgent one: the call's first prompt waits on `connected`).
    for _ in range(200):
        queued = await ingest.redis.lrange(feed_key(ingest.settings.queue_name, urgent=True), 0, -1)
        if queued:
            break
        await asyncio.sleep(0.01)
    assert queued == [f"[{row.id}]".encode()]
    assert await ingest.redis.llen(feed_key(ingest.settings.queue_name)) == 0


async def test_events_a_live_call_waits_on_go_on_the_urgent_feed(ingest: Ingest) -> None:
    voice_id = str(uuid.uuid4())

    def play(playstate: str, **extra: object) -> dict[str, object]:
        data = event(voice_id=voice_id, playstate=playstate, prompt_ref="q:r:1", play_id="p1")
        del data["state"]
        return {**data, **extra}

    urgent = [
        event("connected", voice_id=voice_id, amd_result="human"),
        play("playfinished"),
        play("digitcollected", digit="4"),
        play("menutimeout"),
        play("speech_recognized", text="yes"),
    ]
    later = [
        event("initiated", voice_id=voice_id),
        event("ringing", voice_id=voice_id),
        play("initiated"),
        event("disconnected", voice_id=voice_id, disconnect_reason="normal", amd_result="human"),
    ]
    for data in urgent + later:
        assert (await ingest.post(data)).status_code == 200
    stored = {json.dumps(row.payload, sort_keys=True): row.id for row in ingest.stored()}
    queue = ingest.settings.queue_name

    async def fed(urgent: bool) -> set[int]:
        entries = await ingest.redis.lrange(feed_key(queue, urgent=urgent), 0, -1)
        return {i for entry in entries for i in json.loads(entry)}

    for _ in range(200):
        if len(await fed(True) | await fed(False)) == len(stored):
            break
        await asyncio.sleep(0.01)
    assert await fed(True) == {stored[json.dumps(d, sort_keys=True)] for d in urgent}
    assert await fed(False) == {stored[json.dumps(d, sort_keys=True)] for d in later}


async def test_a_redelivered_copy_is_acknowledged_and_stored_once(ingest: Ingest) -> None:
    data = event("disconnected", disconnect_reason="normal")
    first = await ingest.post(data)
    again = await ingest.post(data)
    plain = await ingest.post({**data, "extra_delivery_field": 1}, encrypted=False)
    assert (first.status_code, again.status_code, plain.status_code) == (200, 200, 200)
    assert len(ingest.stored()) == 1


@pytest.mark.parametrize("token", ["wrong-" + "y" * 26, TOKEN[:-1], TOKEN + "z"])
async def test_a_wrong_path_token_is_404_and_nothing_is_stored(ingest: Ingest, token: str) -> None:
    response = await ingest.post(event(), token=token)
    assert response.status_code == 404
    assert response.content == b""
    assert ingest.stored() == []


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"not json at all", {}, 400),
        (b"[1, 2, 3]", {}, 400),
        (b'{"voice_id": "v", "note": "no state"}', {}, 400),  # not an event
        (b'{"encrypted_data": "!!!not base64!!!"}', {"x-algoritm": "aes256"}, 400),
        (b'{"encrypted_data": "abcd"}', {"x-algoritm": "aes256"}, 400),
        (b'{"encrypted_data": "zmBoizYbvOA4PKkriZv+w6NvqZ8oB0vw"}', {"x-algoritm": "rot13"}, 400),
    ],
)
async def test_junk_is_refused_and_nothing_is_stored(
    ingest: Ingest,
    body: bytes,
    headers: dict[str, str],
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    response = await ingest.post(body, headers=headers)
    assert response.status_code == status
    assert ingest.stored() == []
    assert body.decode() not in caplog.text  # refusals are logged without the payload


async def test_a_payload_encrypted_with_another_key_is_refused(ingest: Ingest) -> None:
    response = await ingest.post(event(), app_id="some-other-app-id")
    assert response.status_code == 400
    assert ingest.stored() == []


async def test_a_ten_megabyte_body_is_413_and_nothing_is_stored(ingest: Ingest) -> None:
    big = json.dumps({**event(), "padding": "x" * 10_000_000}).encode()
    response = await ingest.post(big)
    assert response.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: stop reading past the limit
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    streamed = await ingest.client.post(f"/webhooks/enablex/{TOKEN}", content=chunks())
    assert streamed.status_code == 413
    assert ingest.stored() == []


async def test_plaintext_is_refused_when_the_setting_says_so(
    database_url: str, redis_url: str
) -> None:
    settings = make_settings(database_url, redis_url, webhook_accept_plaintext=False)
    engine = make_async_engine(database_url)
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    app = create_app(settings, engine=engine, redis=redis)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://ingest"
        ) as client:
            ingest = Ingest(client, settings, engine, redis, database_url)
            refused = await ingest.post(event(), encrypted=False)
            accepted = await ingest.post(event())
    finally:
        await redis.aclose()
        await engine.dispose()
    assert refused.status_code == 415
    assert accepted.status_code == 200
    assert len(ingest.stored()) == 1


async def test_an_event_for_a_call_never_submitted_is_quarantined_never_applied(
    ingest: Ingest,
) -> None:
    assert (await ingest.post(event("connected"))).status_code == 200
    (row,) = ingest.stored()
    sessions = async_session_factory(ingest.engine)
    now = utcnow()
    config = ApplyConfig(early_timeout=timedelta(seconds=60))
    async with sessions() as session, session.begin():  # young: it may be early, so it waits
        early = await apply_events(session, [row.id], now=now, config=config)
    assert early.waiting == [row.id]
    later = now + timedelta(seconds=61)
    async with sessions() as session, session.begin():
        result = await apply_events(session, [row.id], now=later, config=config)
    assert (result.applied, result.quarantined) == (0, 1)
    (row,) = ingest.stored()
    assert row.quarantined
    assert row.applied_at is None
    async with sessions() as session, session.begin():  # and never applied afterwards
        again = await apply_events(session, [row.id], now=later, config=config)
    assert (again.applied, again.quarantined, again.waiting) == (0, 0, [])


async def test_healthz_reports_database_and_redis(ingest: Ingest) -> None:
    response = await ingest.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "redis": "ok", "status": "ok"}


async def test_outages_answer_503(ingest: Ingest) -> None:
    dead_port = free_port()
    dead_db = make_async_engine(f"postgresql://postgres@127.0.0.1:{dead_port}/nothing")
    dead_redis = ArqRedis(host="127.0.0.1", port=dead_port, socket_connect_timeout=1)
    app = create_app(ingest.settings, engine=dead_db, redis=dead_redis)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://ingest"
        ) as client:
            health = await client.get("/healthz")
            down = Ingest(client, ingest.settings, dead_db, dead_redis, ingest.database_url)
            posted = await down.post(event())
    finally:
        await dead_redis.aclose()
        await dead_db.dispose()
    assert health.status_code == 503
    assert health.json()["database"].startswith("error")
    assert health.json()["redis"].startswith("error")
    assert posted.status_code == 503  # EnableX redelivers later


async def test_concurrent_deliveries_are_all_stored(ingest: Ingest) -> None:
    events = [event("ringing") for _ in range(200)]
    responses = await asyncio.gather(*(ingest.post(e) for e in events + events[:50]))
    assert {r.status_code for r in responses} == {200}
    stored = ingest.stored()
    assert sorted(r.voice_id or "" for r in stored) == sorted(str(e["voice_id"]) for e in events)
    async with ingest.engine.connect() as conn:
        count = await conn.scalar(select(func.count()).select_from(WebhookEvent))
    assert count == 200


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"text": "yes\u0000no"}, "NUL"),
        ({"odd\u0000key": "x"}, "NUL"),
        ({"info": {"nested": ["deep\u0000"]}}, "NUL"),
        ({"text": "\ud800"}, "surrogate"),
        ({"confidence": float("nan")}, "NaN"),
        ({"confidence": float("inf")}, "NaN"),
        ({"voice_id": "v" * 65}, "voice_id longer than 64"),
        ({"broadcast_id": "b" * 65}, "broadcast_id longer than 64"),
    ],
)
async def test_a_payload_the_database_cannot_hold_is_400_on_every_backend(
    ingest: Ingest, extra: dict[str, object], why: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = event("connected")
    bad = {**event("connected"), **extra}
    responses = await asyncio.gather(ingest.post(bad), ingest.post(good))
    assert [r.status_code for r in responses] == [400, 200]  # its neighbour is stored
    assert why in responses[0].json()["error"]
    assert [row.voice_id for row in ingest.stored()] == [good["voice_id"]]
    assert why in caplog.text


@pytest.mark.parametrize(
    "body",
    [
        b'{"state": "connected", "x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",  # deep
        b'{"state": "connected", "x": 1' + b"0" * 5_000 + b"}",  # an int json will not read
    ],
)
async def test_json_past_the_parsers_limits_is_400_not_a_crash(ingest: Ingest, body: bytes) -> None:
    response = await ingest.post(body)
    assert response.status_code == 400
    assert ingest.stored() == []


async def test_the_webhook_path_takes_only_post(ingest: Ingest) -> None:
    response = await ingest.client.get(f"/webhooks/enablex/{TOKEN}")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    other = await ingest.client.post("/elsewhere", content=b"{}")
    assert other.status_code == 404
    assert ingest.stored() == []


async def test_a_body_in_many_chunks_is_read_whole(ingest: Ingest) -> None:
    headers, body = encrypt_payload(event("ringing"), APP_ID)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 7):
            yield body[start : start + 7]

    response = await ingest.client.post(
        f"/webhooks/enablex/{TOKEN}", content=chunks(), headers=headers
    )
    assert response.status_code == 200
    assert len(ingest.stored()) == 1


async def test_a_burst_is_written_in_groups_no_larger_than_the_limit(ingest: Ingest) -> None:
    writer = GroupWriter(ingest.engine, ingest.redis, ingest.settings.queue_name, writers=4)
    count = 2 * MAX_GROUP + 200
    now = utcnow()
    events = [
        NewEvent(f"k{i}", f"v{i}", "b", {"state": "ringing", "i": i}, now) for i in range(count)
    ]
    await asyncio.gather(*(writer.write(e) for e in events + events[:100]))  # and copies
    await writer.close()
    groups = [
        json.loads(entry)
        for entry in await ingest.redis.lrange(feed_key(ingest.settings.queue_name), 0, -1)
    ]
    ids = [i for group in groups for i in group]
    assert len(ids) == len(set(ids)) == count  # every event once, copies not handed on
    assert max(len(group) for group in groups) <= MAX_GROUP
    assert len(groups) >= 3
    assert len(ingest.stored()) == count


async def test_a_row_the_database_refuses_fails_alone_in_its_group(ingest: Ingest) -> None:
    writer = GroupWriter(ingest.engine, ingest.redis, ingest.settings.queue_name, writers=1)
    now = utcnow()
    good = [NewEvent(f"k{i}", f"v{i}", None, {"state": "ringing"}, now) for i in range(5)]
    refused = NewEvent(cast(str, None), "v-bad", None, {"state": "ringing"}, now)  # NOT NULL
    results = await asyncio.gather(
        *(writer.write(e) for e in [*good[:2], refused, *good[2:]]), return_exceptions=True
    )
    await writer.close()
    assert [isinstance(r, Exception) for r in results] == [False] * 2 + [True] + [False] * 3
    assert sorted(row.voice_id or "" for row in ingest.stored()) == [f"v{i}" for i in range(5)]


async def test_the_writer_replaces_a_connection_the_database_dropped(ingest: Ingest) -> None:
    """A pooled connection that died (terminated by the server, as in a restart) fails the
    INSERT once; the writer retries on a new connection and the event is stored. No
    pre-ping here, so that the dead connection really reaches the INSERT."""
    engine = make_async_engine(ingest.database_url, pool_pre_ping=False)
    writer = GroupWriter(engine, ingest.redis, ingest.settings.queue_name, writers=1)
    now = utcnow()
    try:
        await writer.write(NewEvent("k-before", "v1", None, {"state": "ringing"}, now))
        if engine.dialect.name == "postgresql":
            killer = make_engine(ingest.database_url)
            with killer.begin() as conn:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            killer.dispose()
        await writer.write(NewEvent("k-after", "v2", None, {"state": "ringing"}, now))
    finally:
        await writer.close()
        await engine.dispose()
    assert [row.dedupe_key for row in ingest.stored()] == ["k-before", "k-after"]


def test_the_ingester_command_on_a_port_in_use_is_one_line(database_url: str) -> None:
    from click.testing import CliRunner

    from campaigns.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            main,
            ["webhooks", "--port", str(port)],
            env={
                "DATABASE_URL": database_url,
                "REDIS_URL": "redis://127.0.0.1:1/0",  # never reached: the port fails first
                "WEBHOOK_TOKEN": "t" * 32,
            },
        )
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_a_redis_that_never_answers_is_one_line_without_its_password(redis_url: str) -> None:
    from campaigns.errors import CampaignError
    from campaigns.local_redis import require

    require(redis_url, tries=1)  # the real one answers
    port = free_port()
    with pytest.raises(CampaignError) as caught:
        require(f"redis://:hunter2@127.0.0.1:{port}/0", tries=2, pause=0.05)
    message = str(caught.value)
    assert message.startswith(f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0: ")
    assert "hunter2" not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:pw@redis.example:6380/2", "redis://u:***@redis.example:6380/2"),
        ("rediss://:pw@redis.example/0", "rediss://:***@redis.example/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_a_redis_url_is_shown_without_its_password(url: str, shown: str) -> None:
    from campaigns.local_redis import shown_url

    assert shown_url(url) == shown
