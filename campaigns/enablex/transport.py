"""A lean HTTP/1.1 keep-alive transport for httpx, on asyncio streams.

The IVR commands (`PUT .../play`, `DELETE .../call`) are small requests sent at the rate
calls progress: a few hundred per second for a busy poll. httpx's default transport
(httpcore over anyio) spends most of a request's CPU in its own machinery, about 0.6 ms
per request on the bench machine, several times the cost of applying the webhook that
asked for the command; this transport speaks HTTP/1.1 directly on pooled keep-alive
connections (TLS too) and keeps httpx's API, errors and timeouts above it. httpx's client,
request and response objects still cost about twice the exchange itself, so the worker
calls `exchange` instead, which takes the method, URL, headers and body and returns an
`Answer` (status, headers, body) with httpx's errors: 120 µs of CPU per command against
369 through httpx over this transport and 1,782 through httpx's own
(bench/command_bench.py).

Supported: one request at a time per connection, `Content-Length`, chunked and
read-to-close response bodies, interim 1xx answers (skipped), `Connection: close`, timeouts
from the request (`connect`, `read`, `write`, `pool`). Not supported (not used by the EnableX
API): request streaming, upgrades, proxies. A pooled connection the server closed while
idle is found stale before use; one found closed only when the answer is read (no byte
received) is sent again on a fresh connection for idempotent methods only (GET, HEAD,
OPTIONS, DELETE): a PUT of a play command raises `RemoteProtocolError` instead, and the
caller's visible retry decides. That last case is a race with the server's own idle
timeout, so a connection idle for `KEEPALIVE_SECONDS` is closed rather than reused, well
before the usual server timeouts (uvicorn's, which the simulator keeps, is 5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import defaultdict
from collections.abc import Mapping
from http import HTTPStatus
from typing import NamedTuple
from urllib.parse import urlsplit

import httpx

_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_BYTES = 16 * 1024 * 1024
# Requests sent again on a fresh connection when a pooled one turns out closed (a PUT of a
# play command is not: it would play the prompt twice).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
# A pooled connection idle this long is closed, not reused (see above); the worker's httpx
# pool for the other requests uses the same limit.
KEEPALIVE_SECONDS = 2.0


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0  # time.monotonic() when it went back to the pool

    def usable(self) -> bool:
        return not (self.writer.is_closing() or self.reader.at_eof())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Stale(Exception):
    """A reused connection gave no answer at all: the server had closed it."""


class Answer(NamedTuple):
    """An answer read by `KeepAliveTransport.exchange`: what the EnableX client reads of
    an httpx response, and no more."""

    status_code: int
    raw_headers: list[tuple[bytes, bytes]]
    content: bytes

    @property
    def headers(self) -> dict[str, str]:
        """Header names in lower case (the last of repeated ones)."""
        return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.raw_headers}

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    @property
    def reason_phrase(self) -> str:
        try:
            return HTTPStatus(self.status_code).phrase
        except ValueError:
            return ""


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 on asyncio streams, at most `max_connections` open at once."""

    def __init__(
        self,
        *,
        max_connections: int = 20,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_expiry: float = KEEPALIVE_SECONDS,
    ) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._expiry = keepalive_expiry
        self._idle: dict[tuple[str, str, int], list[_Connection]] = defaultdict(list)
        self._ssl = ssl_context
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("transport closed", request=request)
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}", request=request)
        port = url.port or (443 if url.scheme == "https" else 80)
        key = (url.scheme, url.host, port)
        timeouts = request.extensions.get("timeout", {})
        status, headers, content = await self._perform(
            request.method, key, _head(request, port), request.content, timeouts, request
        )
        return httpx.Response(
            status, headers=headers, content=content, request=request, extensions={}
        )

    async def exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        content: bytes | None = None,
        *,
        limit: float | None = None,
    ) -> Answer:
        """One request and its answer without httpx's request and response objects, on
        the same pool (the EnableX client's IVR commands: building those objects costs
        several times the exchange itself). `url` is absolute with its path already
        percent-encoded; `limit` (seconds) applies to each phase (pool, connect, write, read).
        Raises httpx's errors, as `handle_async_request` does (with no request attached)."""
        if self._closed:
            raise httpx.ConnectError("transport closed")
        parts = urlsplit(url)
        scheme = parts.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {scheme!r}")
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = _raw_head(method, target, _host_header(scheme, host, port), headers, content)
        timeouts = dict.fromkeys(("connect", "read", "write", "pool"), limit)
        status, raw, body = await self._perform(
            method, (scheme, host, port), head, content or b"", timeouts, None
        )
        return Answer(status, raw, body)

    async def _perform(
        self,
        method: str,
        key: tuple[str, str, int],
        head: bytes,
        body: bytes,
        timeouts: Mapping[str, float | None],
        request: httpx.Request | None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Send one request on a pooled (or new) connection: (status, headers, body)."""
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise httpx.PoolTimeout("no connection free in time", request=request) from exc
        try:
            conn = self._take(key)
            if conn is not None:
                try:
                    return await self._exchange(conn, key, method, head, body, timeouts, request)
                except _Stale as exc:
                    # The pooled connection was closed by the server: the request may or
                    # may not have reached it. Sent again only when that is harmless.
                    if method not in _IDEMPOTENT:
                        raise httpx.RemoteProtocolError(
                            "connection closed without an answer", request=request
                        ) from exc
            conn = await self._connect(key, request, timeouts.get("connect"))
            try:
                return await self._exchange(conn, key, method, head, body, timeouts, request)
            except _Stale as exc:
                raise httpx.RemoteProtocolError(
                    "server closed the connection without answering", request=request
                ) from exc
        finally:
            self._slots.release()

    def _take(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle[key]
        oldest = time.monotonic() - self._expiry
        while idle:
            conn = idle.pop()
            if conn.idle_since >= oldest and conn.usable():
                return conn
            conn.close()
        return None

    async def _connect(
        self, key: tuple[str, str, int], request: httpx.Request | None, limit: float | None
    ) -> _Connection:
        scheme, host, port = key
        context: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(limit):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=context, limit=_MAX_HEADER_BYTES
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"connecting to {host}:{port} timed out", request=request
            ) from exc
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"{host}:{port}: {exc}", request=request) from exc
        return _Connection(reader, writer)

    async def _exchange(
        self,
        conn: _Connection,
        key: tuple[str, str, int],
        method: str,
        head: bytes,
        body: bytes,
        timeouts: Mapping[str, float | None],
        request: httpx.Request | None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Send the request and read the answer; a stale connection raises _Stale."""
        try:
            conn.writer.write(head + body)
            async with asyncio.timeout(timeouts.get("write")):
                await conn.writer.drain()
        except TimeoutError as exc:
            conn.close()
            raise httpx.WriteTimeout("sending the request timed out", request=request) from exc
        except OSError as exc:
            conn.close()
            raise _Stale() from exc
        except BaseException:  # cancelled: the connection is in an unknown state
            conn.close()
            raise
        try:
            async with asyncio.timeout(timeouts.get("read")):
                status, headers, content, keep = await _read_response(conn.reader, method)
        except TimeoutError as exc:
            conn.close()
            raise httpx.ReadTimeout("reading the answer timed out", request=request) from exc
        except _Stale:
            conn.close()
            raise
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            conn.close()
            raise httpx.RemoteProtocolError(f"bad answer: {exc!r}", request=request) from exc
        except BaseException:
            conn.close()
            raise
        if keep and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle[key].append(conn)
        else:
            conn.close()
        return status, headers, content

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _head(request: httpx.Request, port: int) -> bytes:
    url = request.url
    target = url.raw_path.decode("ascii")
    lines = [f"{request.method} {target} HTTP/1.1"]
    names = {k.lower() for k in request.headers}
    if "host" not in names:
        default = 443 if url.scheme == "https" else 80
        lines.append(f"Host: {url.host}" + ("" if port == default else f":{port}"))
    lines += [f"{k}: {v}" for k, v in request.headers.multi_items()]
    if "content-length" not in names and request.method not in ("GET", "HEAD", "DELETE"):
        lines.append(f"Content-Length: {len(request.content)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _host_header(scheme: str, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == (443 if scheme == "https" else 80) else f"{shown}:{port}"


def _raw_head(
    method: str, target: str, host: str, headers: Mapping[str, str], content: bytes | None
) -> bytes:
    """The request line and headers for `exchange` (no CR or LF can slip into them)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if content is not None or method not in ("GET", "HEAD", "DELETE"):
        lines.append(f"Content-Length: {len(content or b'')}")
    if " " in target or any("\r" in line or "\n" in line for line in lines):
        raise httpx.LocalProtocolError("a space in the path, or a line break in a header")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_response(
    reader: asyncio.StreamReader, method: str
) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
    """(status, headers, body, keep the connection). Interim 1xx answers are skipped."""
    first = True
    while True:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if first and not exc.partial:
                raise _Stale() from exc
            raise
        first = False
        lines = raw[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(parts[1])
        if not 100 <= status < 200 or status == 101:
            break
    if status == 101:
        raise ValueError("the server switched protocols")
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = False
    keep = parts[0] == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip(), value.strip()
        headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length":
            length = int(value)
        elif lower == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif lower == b"connection":
            keep = value.lower() != b"close" and (keep or value.lower() == b"keep-alive")
    if method == "HEAD" or status in (204, 304):
        return status, headers, b"", keep
    if chunked:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                break
            if len(body) + size > _MAX_BODY_BYTES:
                raise ValueError("answer body too large")
            body += await reader.readexactly(size + 2)
            del body[-2:]
        return status, headers, bytes(body), keep
    if length is not None:
        if length > _MAX_BODY_BYTES:
            raise ValueError("answer body too large")
        return status, headers, await reader.readexactly(length), keep
    # No length: the body runs to the end of the connection.
    body = bytearray()
    while chunk := await reader.read(65536):
        body += chunk
        if len(body) > _MAX_BODY_BYTES:
            raise ValueError("answer body too large")
    return status, headers, bytes(body), False
