"""IVR command benchmark: the worker's play commands, three ways, against the simulator.

Run by hand (never in the test suite):

    python bench/command_bench.py             # writes the `commands` section of docs/benchmarks.md
    python bench/command_bench.py --count 2000 --rounds 1 --no-doc   # quick look

Every digit a person presses becomes one `PUT .../play` command from a worker, so the CPU
a worker spends per command comes straight out of its apply rate (bench/ingest_bench.py:
about a third of the events ask for a command). This sends `--count` play commands
through `EnablexClient.play`, 20 in flight (the worker's `HTTP_CONNECTIONS`), to a
minimal HTTP/1.1 server in its own process that answers each as the simulator answers a
play for a call that has ended (404 and a JSON error body, which the client reads as it
reads any answer; the simulator itself serves only ~450 requests/s, and would measure
itself), and measures this process's CPU per command and the commands per second:

1. baseline: `httpx.AsyncClient` with its default transport (httpcore), what one
   reaches for first;
2. `httpx.AsyncClient` over the project's `KeepAliveTransport` (the worker until now);
3. `KeepAliveTransport.exchange` directly, no httpx client, request or response objects
   (the worker now: `EnablexClient(command_transport=...)`).

The variants alternate, `--rounds` times; the table gives each one's median round.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchdoc import code_version, load_note, machine, publish

from campaigns.enablex.client import EnablexClient, PlaySpec
from campaigns.enablex.transport import KeepAliveTransport
from campaigns.errors import EnablexRejection
from campaigns.local_redis import free_port

SECTION = "commands"
IN_FLIGHT = 20
SPEC = PlaySpec.tts("Press 1 for good, 2 for bad.", prompt_ref="q:rating:1", dtmf=True)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _send_all(client: EnablexClient, count: int) -> int:
    """`count` play commands, IN_FLIGHT at a time; how many got the simulator's 404."""
    slots = asyncio.Semaphore(IN_FLIGHT)
    refused = 0

    async def one(i: int) -> None:
        nonlocal refused
        async with slots:
            try:
                await client.play("bench-broadcast", f"voice-{i}", SPEC)
            except EnablexRejection as exc:
                refused += exc.status_code == 404

    await asyncio.gather(*(one(i) for i in range(count)))
    return refused


Variant = Callable[[str], Awaitable[tuple[EnablexClient, Callable[[], Awaitable[None]]]]]


async def _httpx_default(base: str) -> tuple[EnablexClient, Callable[[], Awaitable[None]]]:
    http = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    )
    client = EnablexClient(
        http, base_url=base, app_id="app", app_key="key", max_in_flight=IN_FLIGHT
    )
    return client, http.aclose


async def _keepalive(
    base: str, *, direct: bool
) -> tuple[EnablexClient, Callable[[], Awaitable[None]]]:
    """The commands on `KeepAliveTransport`: directly, or through an httpx client."""
    http = httpx.AsyncClient()
    transport = KeepAliveTransport(max_connections=IN_FLIGHT)
    commands = None if direct else httpx.AsyncClient(transport=transport)
    client = EnablexClient(
        http,
        base_url=base,
        app_id="app",
        app_key="key",
        max_in_flight=IN_FLIGHT,
        command_http=commands,
        command_transport=transport if direct else None,
    )

    async def close() -> None:
        if commands is not None:
            await commands.aclose()
        await transport.aclose()
        await http.aclose()

    return client, close


async def _httpx_keepalive(base: str) -> tuple[EnablexClient, Callable[[], Awaitable[None]]]:
    return await _keepalive(base, direct=False)


async def _transport_direct(base: str) -> tuple[EnablexClient, Callable[[], Awaitable[None]]]:
    return await _keepalive(base, direct=True)


VARIANTS: list[tuple[str, Variant]] = [
    ("baseline: `httpx.AsyncClient`, default transport (httpcore)", _httpx_default),
    ("`httpx.AsyncClient` over `KeepAliveTransport` (the worker before)", _httpx_keepalive),
    ("`KeepAliveTransport.exchange` directly (the worker now)", _transport_direct),
]


async def _round(base: str, count: int) -> list[dict[str, float]]:
    results = []
    for _, make in VARIANTS:
        client, close = await make(base)
        await _send_all(client, 200)  # connections open, code paths warm
        cpu, started = _cpu(), time.perf_counter()
        refused = await _send_all(client, count)
        seconds, cpu = time.perf_counter() - started, _cpu() - cpu
        await close()
        if refused != count:
            raise RuntimeError(f"{refused} of {count} commands got the expected 404")
        results.append({"per_s": count / seconds, "cpu_us": cpu / count * 1e6})
    return results


NOT_FOUND = b'{"result":1,"error_code":"404","msg":"no call with voice_id v in broadcast b"}'
ANSWER = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(NOT_FOUND), NOT_FOUND)
)


def run_server(port: int) -> None:
    """Role `server`: answer every request on keep-alive connections, as fast as it can."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":", 1)[1]))
                writer.write(ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def _start_server() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--role", "server", "--port", str(port)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    if b"ready" not in proc.stdout.readline():
        proc.kill()
        raise RuntimeError("the answering server did not start")
    return proc, f"http://127.0.0.1:{port}/voice/v1"


def report(args: argparse.Namespace, rounds: list[list[dict[str, float]]]) -> str:
    rows = []
    medians = []
    for index, (label, _) in enumerate(VARIANTS):
        cpu = statistics.median(r[index]["cpu_us"] for r in rounds)
        rate = statistics.median(r[index]["per_s"] for r in rounds)
        medians.append(cpu)
        rows.append(f"| {label} | {cpu:,.0f} | {rate:,.0f} |")
    base, before, now = medians
    return "\n".join(
        [
            "## IVR commands: CPU per play command",
            "",
            f"Machine: {machine()}; {load_note()}. Command: "
            f"`{' '.join(['python bench/command_bench.py', *args.argv])}`, "
            f"on commit {code_version()}.",
            "",
            f"{args.count:,} `EnablexClient.play` commands per variant and round, {IN_FLIGHT} "
            "in flight, to a minimal HTTP/1.1 server in its own process (each answered 404 "
            "with the JSON body the simulator gives for an ended call, read as a real "
            f"answer); the variants alternate, {args.rounds} rounds, median round shown. CPU "
            "is this process's (user + system) per command; commands/s is with the server "
            "on the other core.",
            "",
            "| how the commands are sent | client CPU µs / command | commands/s |",
            "|---|---:|---:|",
            *rows,
            "",
            f"The worker's commands now cost {now:,.0f} µs of CPU each: "
            f"{before / now:.1f}× less than through httpx over the same transport, "
            f"{base / now:.1f}× less than httpx's default transport. About a third of the "
            "webhook events of a poll ask for a command, so this is CPU the worker gets back "
            "for applying events (see the ingest section).",
        ]
    )


async def main(args: argparse.Namespace) -> None:
    proc, base = _start_server()
    try:
        rounds = []
        for number in range(args.rounds):
            rounds.append(await _round(base, args.count))
            print(f"round {number + 1}: " + ", ".join(f"{r['cpu_us']:.0f} µs" for r in rounds[-1]))
    finally:
        proc.terminate()
        proc.wait(10)
    publish(SECTION, report(args, rounds), no_doc=args.no_doc)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.argv = [a for a in sys.argv[1:] if a != "--no-doc"]
    return args


if __name__ == "__main__":
    options: Any = parse()
    if options.role == "server":
        run_server(options.port)
    else:
        asyncio.run(main(options))
