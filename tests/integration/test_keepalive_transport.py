"""The IVR commands' HTTP/1.1 keep-alive transport, against real loopback servers: the
simulator (through the EnableX client), and small asyncio servers that misbehave on
purpose (close idle connections, answer chunked, answer late, refuse)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from campaigns.enablex.client import EnablexClient, PlaySpec
from campaigns.enablex.simulator import SimulatorConfig, run_simulator
from campaigns.enablex.transport import KeepAliveTransport
from campaigns.errors import EnablexRejection, TransientEnablexError
from campaigns.local_redis import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + (await reader.readexactly(length) if length else b"")


def _answer(body: bytes, *, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


async def _serve(handler: Handler) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def test_requests_reuse_one_connection_and_survive_a_server_closing_it() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        served = 0
        try:
            while True:
                await _read_request(reader)
                served += 1
                writer.write(_answer(b'{"n": %d}' % served))
                await writer.drain()
                if served == 3:  # an idle keep-alive connection closed by the server
                    writer.close()
                    return
        except asyncio.IncompleteReadError:
            writer.close()

    async for base in _serve(handler):
        async with httpx.AsyncClient(transport=KeepAliveTransport()) as client:
            answers = []
            for _ in range(5):
                response = await client.put(f"{base}/x", content=b"{}")
                answers.append(response.json()["n"])
                await asyncio.sleep(0.01)
    assert answers == [1, 2, 3, 1, 2]  # the fourth went out on a fresh connection
    assert connections == 2


async def test_a_chunked_answer_is_read_whole() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\n\r\n"
            b'7\r\n{"play_\r\n10\r\nid": "p-123"}   \r\n0\r\n\r\n'
        )
        await writer.drain()
        writer.close()

    async for base in _serve(handler):
        async with httpx.AsyncClient(transport=KeepAliveTransport()) as client:
            response = await client.put(f"{base}/x", content=b"{}")
    assert response.json() == {"play_id": "p-123"}


async def test_interim_answers_are_skipped_and_a_body_may_run_to_the_close() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        writer.write(b'{"playstate":')
        await writer.drain()
        await asyncio.sleep(0.05)  # the rest of the body comes later
        writer.write(b' "initiated"}')
        await writer.drain()
        writer.close()

    async for base in _serve(handler):
        async with httpx.AsyncClient(transport=KeepAliveTransport()) as client:
            response = await client.put(f"{base}/x", content=b"{}")
    assert response.status_code == 200
    assert response.json() == {"playstate": "initiated"}


async def test_a_play_is_never_sent_twice_behind_the_callers_back() -> None:
    """A pooled connection closed after the request went out: the server may have acted on
    it, so a PUT (a prompt played) is an error for the caller; a DELETE goes again."""
    received: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                received.append(request.split(b" ", 1)[0])
                if len(received) in (2, 4):  # acted on, then gone without answering
                    writer.close()
                    return
                writer.write(_answer(b"{}"))
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    async for base in _serve(handler):
        async with httpx.AsyncClient(transport=KeepAliveTransport()) as client:
            await client.put(f"{base}/x", content=b"{}")
            with pytest.raises(httpx.RemoteProtocolError):
                await client.put(f"{base}/x", content=b"{}")
            await client.put(f"{base}/x", content=b"{}")
            response = await client.delete(f"{base}/x")
    assert response.status_code == 200
    assert received == [b"PUT", b"PUT", b"PUT", b"DELETE", b"DELETE"]


async def test_a_late_answer_is_a_read_timeout_and_a_closed_port_a_connect_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(2)
        writer.close()

    async for base in _serve(handler):
        # A patient connect: on a busy machine 0.2 s can pass before the connect is done.
        late = httpx.Timeout(0.2, connect=10)
        async with httpx.AsyncClient(transport=KeepAliveTransport(), timeout=late) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.put(f"{base}/x", content=b"{}")
    async with httpx.AsyncClient(transport=KeepAliveTransport(), timeout=1) as client:
        with pytest.raises(httpx.ConnectError):
            await client.put(f"http://127.0.0.1:{free_port()}/x", content=b"{}")


async def test_the_enablex_client_sends_ivr_commands_through_it_to_the_simulator() -> None:
    config = SimulatorConfig(app_id="app", app_key="key")
    async with (
        run_simulator(config) as sim,
        httpx.AsyncClient() as http,
        httpx.AsyncClient(transport=KeepAliveTransport()) as commands,
    ):
        client = EnablexClient(
            http, base_url=sim.base_url, app_id="app", app_key="key", command_http=commands
        )
        spec = PlaySpec(text="Hello", prompt_ref="msg")
        with pytest.raises(EnablexRejection) as gone:  # no such call: 404, as EnableX says
            await client.play("no-such-broadcast", "no-such-call", spec)
        assert gone.value.status_code == 404
        wrong = EnablexClient(
            http, base_url=sim.base_url, app_id="app", app_key="bad", command_http=commands
        )
        with pytest.raises(EnablexRejection) as refused:
            await wrong.hangup("no-such-broadcast", "no-such-call")
        assert refused.value.status_code == 401
    async with httpx.AsyncClient(transport=KeepAliveTransport(), timeout=1) as commands:
        down = EnablexClient(
            httpx.AsyncClient(),
            base_url=f"http://127.0.0.1:{free_port()}",
            app_id="app",
            app_key="key",
            command_http=commands,
        )
        with pytest.raises(TransientEnablexError):
            await down.play("b", "v", PlaySpec(text="Hello", prompt_ref="msg"))
