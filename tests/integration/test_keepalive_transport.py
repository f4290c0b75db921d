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


def _acting_server(
    received: list[bytes], *, drop_after: tuple[int, ...] = (), late_after: tuple[int, ...] = ()
) -> Handler:
    """A server that records each request's method and answers it, except the n-th ones
    it acts on and then drops without answering (`drop_after`) or answers 2 s late
    (`late_after`)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                received.append(request.split(b" ", 1)[0])
                if len(received) in drop_after:
                    writer.close()
                    return
                if len(received) in late_after:
                    await asyncio.sleep(2)
                    return
                writer.write(_answer(b"{}"))
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    return handler


async def test_a_play_is_never_sent_twice_behind_the_callers_back() -> None:
    """A pooled connection closed after the request went out: the server may have acted on
    it, so a PUT (a prompt played) is an error for the caller; a DELETE goes again."""
    received: list[bytes] = []
    handler = _acting_server(received, drop_after=(2, 4))
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


def _client(
    http: httpx.AsyncClient, base: str, transport: KeepAliveTransport, lean: bool, key: str = "key"
) -> EnablexClient:
    """The EnableX client with its IVR commands on `transport`: directly (lean, as the
    worker sends them) or through an httpx client."""
    if lean:
        return EnablexClient(
            http, base_url=base, app_id="app", app_key=key, command_transport=transport
        )
    commands = httpx.AsyncClient(transport=transport, timeout=1)
    return EnablexClient(http, base_url=base, app_id="app", app_key=key, command_http=commands)


@pytest.mark.parametrize("lean", [True, False], ids=["transport-directly", "through-httpx"])
async def test_the_enablex_client_sends_ivr_commands_through_it_to_the_simulator(
    lean: bool,
) -> None:
    config = SimulatorConfig(app_id="app", app_key="key")
    transport = KeepAliveTransport()
    async with run_simulator(config) as sim, httpx.AsyncClient() as http:
        client = _client(http, sim.base_url, transport, lean)
        spec = PlaySpec(text="Hello", prompt_ref="msg")
        with pytest.raises(EnablexRejection) as gone:  # no such call: 404, as EnableX says
            await client.play("no-such-broadcast", "no-such-call", spec)
        assert gone.value.status_code == 404
        assert "no call with voice_id no-such-call" in str(gone.value)  # the body was read
        wrong = _client(http, sim.base_url, transport, lean, key="bad")
        with pytest.raises(EnablexRejection) as refused:
            await wrong.hangup("no-such-broadcast", "no-such-call")
        assert refused.value.status_code == 401
    down = _client(httpx.AsyncClient(), f"http://127.0.0.1:{free_port()}", transport, lean)
    with pytest.raises(TransientEnablexError):
        await down.play("b", "v", PlaySpec(text="Hello", prompt_ref="msg"))
    await transport.aclose()


def _parsed(request: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head, _, body = request.partition(b"\r\n\r\n")
    first, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return first, headers, body


class _Steady:
    """A server handler answering every request with `answer`, on as many requests per
    connection as the client sends: it counts the connections and keeps the requests."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.connections = 0
        self.received: list[bytes] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                self.received.append(await _read_request(reader))
                writer.write(self.answer)
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()


async def test_exchange_sends_what_the_httpx_path_sends_on_one_connection() -> None:
    handler = _Steady(_answer(b'{"play_id": "p-1"}', extra=b"Retry-After: 3\r\n"))
    received = handler.received

    headers = {"Authorization": "Basic YXBwOmtleQ==", "Content-Type": "application/json"}
    body = b'{"text":"Hello"}'
    transport = KeepAliveTransport()
    async for base in _serve(handler):
        url = f"{base}/voice/v1/broadcast/b%2F1/call/v-1/play"
        answer = await transport.exchange("PUT", url, headers, body, limit=5)
        gone = await transport.exchange("DELETE", f"{base}/voice/v1/broadcast/b/call/v", headers)
        async with httpx.AsyncClient(transport=transport) as client:
            await client.put(url, content=body, headers=headers)
            await client.delete(f"{base}/voice/v1/broadcast/b/call/v", headers=headers)
    await transport.aclose()
    assert answer.status_code == 200
    assert answer.content == b'{"play_id": "p-1"}'
    assert answer.headers["retry-after"] == "3"
    assert answer.reason_phrase == "OK"
    assert gone.status_code == 200
    lean_put, lean_delete, httpx_put, httpx_delete = (_parsed(r) for r in received)
    assert lean_put[0] == b"PUT /voice/v1/broadcast/b%2F1/call/v-1/play HTTP/1.1"
    assert lean_put[2] == body
    assert lean_delete[0] == b"DELETE /voice/v1/broadcast/b/call/v HTTP/1.1"
    assert b"content-length" not in lean_delete[1]
    for lean, through_httpx in ((lean_put, httpx_put), (lean_delete, httpx_delete)):
        assert lean[0] == through_httpx[0]
        assert lean[2] == through_httpx[2]
        # httpx adds its own defaults (user agent, accept-encoding, connection); every
        # header the lean path sends, httpx sends the same
        assert {k: v for k, v in through_httpx[1].items() if k in lean[1]} == lean[1]
    assert handler.connections == 1


async def test_exchange_never_sends_a_play_twice_and_times_out_reading() -> None:
    received: list[bytes] = []
    handler = _acting_server(received, drop_after=(2,), late_after=(4,))
    transport = KeepAliveTransport()
    async for base in _serve(handler):
        await transport.exchange("PUT", f"{base}/x", {}, b"{}", limit=10)
        with pytest.raises(httpx.RemoteProtocolError):  # not sent again behind our back
            await transport.exchange("PUT", f"{base}/x", {}, b"{}", limit=10)
        await transport.exchange("PUT", f"{base}/x", {}, b"{}", limit=10)  # a fresh connection
        with pytest.raises(httpx.ReadTimeout):  # on the pooled connection: no connect
            await transport.exchange("PUT", f"{base}/x", {}, b"{}", limit=0.2)
    await transport.aclose()
    assert received == [b"PUT", b"PUT", b"PUT", b"PUT"]


async def test_exchange_refuses_line_breaks_in_headers_and_spaces_in_the_path() -> None:
    transport = KeepAliveTransport()
    with pytest.raises(httpx.LocalProtocolError):
        await transport.exchange("PUT", "http://127.0.0.1:9/x", {"X-A": "1\r\nX-B: 2"}, b"{}")
    with pytest.raises(httpx.LocalProtocolError):
        await transport.exchange("DELETE", "http://127.0.0.1:9/a b", {})
    with pytest.raises(httpx.UnsupportedProtocol):
        await transport.exchange("DELETE", "ftp://127.0.0.1:9/x", {})
    await transport.aclose()
    with pytest.raises(httpx.ConnectError):
        await transport.exchange("DELETE", "http://127.0.0.1:9/x", {})


async def test_a_command_does_not_wait_behind_a_slow_broadcast_for_a_slot() -> None:
    """The broadcasts' requests share `max_in_flight` slots; the IVR commands on the
    keep-alive transport wait only for its connections: a person's next question is not
    held up by a submission the platform is slow to answer."""
    release = asyncio.Event()
    posted = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                request = await _read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            if request.startswith(b"POST"):
                posted.set()
                await release.wait()
                writer.write(_answer(b'{"voice_id":"v-1","state":"initiated"}'))
            else:
                writer.write(_answer(b'{"playstate":"initiated","play_id":"p-1"}'))
            await writer.drain()
        writer.close()

    async for base in _serve(handler):
        transport = KeepAliveTransport(max_connections=4)
        async with httpx.AsyncClient(timeout=10) as http:
            client = EnablexClient(
                http,
                base_url=base,
                app_id="app",
                app_key="key",
                max_in_flight=1,
                command_transport=transport,
            )
            spec = PlaySpec(text="Hello", prompt_ref="msg")
            slow = asyncio.create_task(
                client.make_call(
                    name="n",
                    owner_ref="o",
                    caller_id="+12025550100",
                    to="+12025550101",
                    play=spec,
                    event_url="http://127.0.0.1/hook",
                )
            )
            await asyncio.wait_for(posted.wait(), timeout=5)
            started = await asyncio.wait_for(client.play("b-1", "v-1", spec), timeout=5)
            assert started.play_id == "p-1"
            assert not slow.done()
            release.set()
            assert (await asyncio.wait_for(slow, timeout=5)).voice_id == "v-1"
        await transport.aclose()


async def test_a_connection_idle_past_the_expiry_is_not_reused() -> None:
    """A connection the server may be closing (its own idle timeout) is not raced: past
    `keepalive_expiry` the next request opens a new one; within it, the idle one serves."""
    handler = _Steady(_answer(b"{}"))
    async for base in _serve(handler):
        short = KeepAliveTransport(keepalive_expiry=0.2)
        await short.exchange("GET", f"{base}/a", {}, limit=5)
        await asyncio.sleep(0.4)
        await short.exchange("GET", f"{base}/b", {}, limit=5)
        await short.aclose()
        assert handler.connections == 2
        kept = KeepAliveTransport()
        await kept.exchange("GET", f"{base}/a", {}, limit=5)
        await asyncio.sleep(0.4)
        await kept.exchange("GET", f"{base}/b", {}, limit=5)
        await kept.aclose()
        assert handler.connections == 3  # one more connection, reused after 0.4 s idle
