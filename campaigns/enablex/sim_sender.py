"""The simulator's webhook sender: ordered per call, redelivered with backoff, fault-injected.

Each call leg has a `Channel`: its events go out one at a time, in order, and the next one
waits until the previous is acknowledged (2xx) or given up after `max_attempts`. A fixed pool
of sender tasks takes ready channels from one queue; each task owns its own keep-alive
connection per receiver. The default transport is a minimal HTTP/1.1 client on asyncio
streams (`RawConnections`): measured in bench/simulator_bench.py it is the fastest correct
option; `HttpxConnections` (one `httpx.AsyncClient` per task) is kept as the alternative and
is used for https receivers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from campaigns.enablex.crypto import encrypt_payload
from campaigns.enablex.sim_draws import DeliveryFaults
from campaigns.enablex.sim_profile import Webhooks

logger = logging.getLogger(__name__)


class _NoResponse(Exception):
    """The connection closed before any byte of the answer arrived."""


class Connections(Protocol):
    async def post(self, url: str, headers: dict[str, str], body: bytes) -> int: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    head: bytes  # request line and fixed headers, up to Content-Length


@lru_cache(maxsize=256)
def _target(url: str) -> _Target | None:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return None
    port = parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rsplit("@", 1)[-1]
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: enablex-simulator\r\n"
        "Content-Type: application/json\r\n"
    ).encode("latin-1")
    return _Target(parts.hostname, port, head)


_Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class RawConnections:
    """HTTP/1.1 POSTs over keep-alive asyncio streams, one connection per receiver."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._streams: dict[tuple[str, int], _Stream] = {}
        self._fallback: HttpxConnections | None = None

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> int:
        target = _target(url)
        if target is None:  # https or odd URLs: let httpx do it
            if self._fallback is None:
                self._fallback = HttpxConnections(self._timeout)
            return await self._fallback.post(url, headers, body)
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k != "content-type")
        request = b"%sContent-Length: %d\r\n%s\r\n%s" % (
            target.head,
            len(body),
            extra.encode("latin-1"),
            body,
        )
        key = (target.host, target.port)
        async with asyncio.timeout(self._timeout):
            stream = self._streams.pop(key, None)
            if stream is not None:
                try:
                    return await self._exchange(key, stream, request)
                except (_NoResponse, ConnectionError):
                    pass  # a stale keep-alive connection: once more on a fresh one
            stream = await asyncio.open_connection(target.host, target.port)
            return await self._exchange(key, stream, request)

    async def _exchange(self, key: tuple[str, int], stream: _Stream, request: bytes) -> int:
        reader, writer = stream
        try:
            writer.write(request)
            await writer.drain()
            try:
                line = await reader.readuntil(b"\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise _NoResponse from exc
                raise
            status, keep = await _read_rest(reader, line)
        except BaseException:
            writer.close()
            raise
        if keep:
            self._streams[key] = stream
        else:
            writer.close()
        return status

    async def close(self) -> None:
        for _, writer in self._streams.values():
            writer.close()
        self._streams.clear()
        if self._fallback is not None:
            await self._fallback.close()


async def _read_rest(reader: asyncio.StreamReader, line: bytes) -> tuple[int, bool]:
    """Read the rest of one response after its status line; (status, keep-alive)."""
    while True:
        version, _, rest = line.partition(b" ")
        status = int(rest[:3])
        length: int | None = None
        chunked = False
        keep = version == b"HTTP/1.1"
        while True:
            header = await reader.readuntil(b"\r\n")
            if header == b"\r\n":
                break
            name, _, value = header.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                keep = b"close" not in value and (keep or b"keep-alive" in value)
        if 100 <= status < 200:  # interim answer: the real one follows
            line = await reader.readuntil(b"\r\n")
            continue
        if chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass
                    break
                await reader.readexactly(size + 2)
        elif length is not None:
            await reader.readexactly(length)
        elif status not in (204, 304):
            await reader.read()
            keep = False
        return status, keep


class HttpxConnections:
    """The alternative transport: one httpx.AsyncClient holding one keep-alive connection."""

    def __init__(self, timeout: float, client: httpx.AsyncClient | None = None) -> None:
        self._own = client is None
        self._client = client or httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> int:
        response = await self._client.post(url, content=body, headers=headers)
        return response.status_code

    async def close(self) -> None:
        if self._own:
            await self._client.aclose()


@dataclass
class SenderStats:
    events: int = 0  # events handed to the sender
    sent: int = 0  # HTTP POSTs made
    delivered: int = 0  # deliveries acknowledged with a 2xx
    failed: int = 0  # POSTs answered non-2xx, or not at all
    redelivered: int = 0  # POSTs that repeated an earlier failed one
    given_up: int = 0  # deliveries abandoned after max_attempts
    dropped: int = 0  # fault: never sent
    duplicated: int = 0  # fault: sent twice
    reordered: int = 0  # fault: swapped with the next event of the call
    delayed: int = 0  # fault: sent late, out of order


class _Delivery:
    __slots__ = ("attempts", "body", "event", "headers")

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event
        self.attempts = 0
        self.body: bytes | None = None
        self.headers: dict[str, str] = {}


class Channel:
    """The ordered delivery queue of one call leg."""

    __slots__ = ("generation", "held", "queue", "scheduled", "url")

    def __init__(self, url: str, generation: int) -> None:
        self.url = url
        self.generation = generation
        self.queue: deque[_Delivery] = deque()
        self.scheduled = False  # in the ready queue, being sent, or waiting for a retry
        self.held: list[_Delivery] | None = None  # reorder fault: waits for the next event


class WebhookSender:
    """Delivers events to their `event_url`; `pending` counts deliveries not yet settled."""

    def __init__(
        self,
        settings: Webhooks,
        app_id: str,
        *,
        encrypt: bool,
        connections: Callable[[], Connections] | None = None,
    ) -> None:
        self.settings = settings
        self.app_id = app_id
        self.encrypt = encrypt
        self.stats = SenderStats()
        self.pending = 0
        self.delay_seconds = 5.0
        self._generation = 0
        self._make_connections = connections or self._default_connections
        self._ready: asyncio.Queue[Channel] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._connections: list[Connections] = []

    def _default_connections(self) -> Connections:
        if self.settings.transport == "httpx":
            return HttpxConnections(self.settings.timeout)
        return RawConnections(self.settings.timeout)

    async def start(self) -> None:
        for n in range(self.settings.senders):
            connections = self._make_connections()
            self._connections.append(connections)
            self._tasks.append(asyncio.create_task(self._work(connections), name=f"sender-{n}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for connections in self._connections:
            await connections.close()
        self._tasks.clear()
        self._connections.clear()

    def reset(self) -> None:
        """Forget every pending delivery (stale channels are skipped when they come up)."""
        self._generation += 1
        self.pending = 0
        self.stats = SenderStats()

    def channel(self, url: str) -> Channel:
        return Channel(url, self._generation)

    def push(self, channel: Channel, event: dict[str, Any], faults: DeliveryFaults) -> None:
        """Queue one event on a call's channel, applying the webhook faults drawn for it."""
        self.stats.events += 1
        if faults.drop:
            self.stats.dropped += 1
            return
        deliveries = [_Delivery(event)]
        if faults.duplicate:
            self.stats.duplicated += 1
            deliveries.append(_Delivery(event))
        self.pending += len(deliveries)
        if faults.delay:
            self.stats.delayed += 1
            loose = Channel(channel.url, channel.generation)
            loose.queue.extend(deliveries)
            loose.scheduled = True
            asyncio.get_running_loop().call_later(self.delay_seconds, self._requeue, loose)
            return
        if faults.reorder and channel.held is None:
            self.stats.reordered += 1
            channel.held = deliveries
            return
        self._append(channel, deliveries)
        self.release(channel)

    def release(self, channel: Channel) -> None:
        """Send what the reorder fault holds back (called after a leg's last event)."""
        if channel.held is not None:
            held, channel.held = channel.held, None
            self._append(channel, held)

    def _append(self, channel: Channel, deliveries: list[_Delivery]) -> None:
        channel.queue.extend(deliveries)
        if not channel.scheduled:
            channel.scheduled = True
            self._ready.put_nowait(channel)

    def _requeue(self, channel: Channel) -> None:
        if channel.generation == self._generation:
            self._ready.put_nowait(channel)

    def _encode(self, delivery: _Delivery) -> None:
        if self.encrypt:
            headers, body = encrypt_payload(
                delivery.event,
                self.app_id,
                algorithm=self.settings.algorithm,
                fmt=self.settings.format,
            )
            delivery.headers = {"content-type": "application/json", **headers}
            delivery.body = body
        else:
            delivery.headers = {"content-type": "application/json"}
            delivery.body = json.dumps(delivery.event, separators=(",", ":")).encode()

    async def _work(self, connections: Connections) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        while True:
            channel = await self._ready.get()
            if channel.generation != self._generation:
                continue
            delivery = channel.queue[0]
            if delivery.body is None:
                self._encode(delivery)
            assert delivery.body is not None
            delivery.attempts += 1
            self.stats.sent += 1
            if delivery.attempts > 1:
                self.stats.redelivered += 1
            try:
                status = await connections.post(channel.url, delivery.headers, delivery.body)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                logger.debug("webhook to %s failed: %r", channel.url, exc)
                status = 0
            except httpx.HTTPError as exc:
                logger.debug("webhook to %s failed: %r", channel.url, exc)
                status = 0
            if channel.generation != self._generation:
                continue
            ok = 200 <= status < 300
            if ok:
                self.stats.delivered += 1
            else:
                self.stats.failed += 1
            if ok or delivery.attempts >= s.max_attempts:
                if not ok:
                    self.stats.given_up += 1
                    logger.info(
                        "gave up on a webhook to %s after %d tries", channel.url, s.max_attempts
                    )
                channel.queue.popleft()
                self.pending -= 1
                if channel.queue:
                    self._ready.put_nowait(channel)
                else:
                    channel.scheduled = False
            else:
                wait = min(s.retry_max, s.retry_initial * s.retry_factor ** (delivery.attempts - 1))
                loop.call_later(wait, self._requeue, channel)

    def stats_dict(self) -> dict[str, int]:
        return {**asdict(self.stats), "pending": self.pending}
