"""Ingest-only profile: the `campaign webhooks` process alone, under load, with its CPU cost.

Run by hand (never in the test suite):

    BENCH_REDIS_URL=redis://127.0.0.1:6379/14 python bench/ingest_profile.py
    python bench/ingest_profile.py --seconds 8 --rate 2000 --profile /tmp/ingester.prof

A scratch PostgreSQL database (Alembic), Redis (BENCH_REDIS_URL, flushed at start) and the
real ingester: `python -m campaigns.cli webhooks` in its own process, configured exactly
as an operator runs it. The load generator is `ingest_bench.py`'s (its own process, raw
asyncio HTTP/1.1 on keep-alive connections, bodies encrypted beforehand). Events are
synthetic 10-event call lives for made-up calls: the ingester stores any well-formed event
(matching it to a submitted call is the worker's job), and no worker runs here.

Per run: acked/s, ack p50/p99, commit groups (entries on the apply feed) and events per
group, and the ingester process's CPU seconds (user + system, from /proc) per 1,000 acked events, the figure to compare across changes on a shared
machine. Two loads: `max` (64 connections, closed loop) and `rate` (open loop at `--rate`
events/s, latency from each request's scheduled send time). `--profile FILE` samples the
ingester with py-spy during the load (`pip install py-spy`; collapsed stacks to
FILE.<mode>, and the top functions by own and total samples printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchdoc import machine
from dispatch_bench import REDIS_URL, flush_redis, scratch_database, stop, worker_env
from ingest_bench import EVENTS_PER_CALL, event_stream, go, max_event_id, run_load, wait_healthy

from campaigns.local_redis import free_port

QUEUE = "bench-ingest-only"


def feed_length(queue: str) -> int:
    """Entries on the apply feed: one per commit group (no worker pops them here)."""
    import redis

    from campaigns.webhooks import feed_key

    client = redis.Redis.from_url(REDIS_URL)
    try:
        return int(client.llen(feed_key(queue)))
    finally:
        client.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def fake_calls(count: int) -> list[dict[str, Any]]:
    broadcast = str(uuid.uuid4())
    return [
        {"voice_id": str(uuid.uuid4()), "broadcast_id": broadcast, "number": f"+1202555{i:04d}"}
        for i in range(count)
    ]


def start_ingester(env: dict[str, str], port: int, code: str | None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "campaigns.cli", "webhooks"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    if code:  # another source tree: first on the path (`-m` puts the working directory first)
        env = {**env, "PYTHONPATH": code}
    return subprocess.Popen(command, env=env, cwd=code, stderr=subprocess.DEVNULL)


def start_profiler(pid: int, seconds: float, path: str) -> subprocess.Popen[bytes]:
    command = ["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, int(seconds)))]
    command += ["--format", "raw", "--nonblocking", "--rate", "200", "-o", path]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise_profile(path: str, top: int = 25) -> None:
    """Print the functions with the most own and total samples from py-spy's raw output."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        samples += n
        frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1] for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + n
    for title, table in (("own", own), ("total", total)):
        print(f"-- {title} samples (of {samples})")
        for frame, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"{100 * n / samples:5.1f} %  {frame}")


async def one_run(
    url: str, args: argparse.Namespace, mode: str, rate: float, conns: int
) -> dict[str, Any]:
    port = free_port()
    env = worker_env(url, "http://127.0.0.1:9", f"http://127.0.0.1:{port}", QUEUE)
    profile = f"{args.profile}.{mode}" if args.profile else None
    ingester = start_ingester(env, port, args.code)
    try:
        await wait_healthy(port)
        budget = rate if mode == "rate" else args.max_rate
        calls = fake_calls(int(args.seconds * budget / EVENTS_PER_CALL) + 1)
        proc, path = await run_load(
            port, event_stream(calls), mode=mode, rate=rate, seconds=args.seconds, conns=conns
        )
        before_id = await max_event_id(url)
        cpu_before = cpu_seconds(ingester.pid)
        sampler = start_profiler(ingester.pid, args.seconds, profile) if profile else None
        result = await go(proc, path)
        cpu = cpu_seconds(ingester.pid) - cpu_before
        if sampler is not None and profile is not None:
            await asyncio.to_thread(sampler.wait)
            summarise_profile(profile)
        stored = await max_event_id(url) - before_id
        groups = feed_length(QUEUE)
    finally:
        await asyncio.to_thread(stop, [ingester])
    ok = result["ok"]
    return {
        "mode": mode,
        "offered": rate if mode == "rate" else None,
        "acked": ok,
        "stored": stored,
        "commit_groups": groups,
        "events_per_group": round(stored / groups, 1) if groups else None,
        "non_200": result["sent"] - ok,
        "acked_per_s": round(result["ack_rate"]),
        "p50_ms": round(result["p50_ms"], 1),
        "p99_ms": round(result["p99_ms"], 1),
        "max_ms": round(result["max_ms"], 1),
        "ingester_cpu_s": round(cpu, 2),
        "cpu_s_per_1000": round(1000 * cpu / ok, 3) if ok else None,
        "loadgen_cpu_s": round(result["cpu_seconds"], 2),
    }


async def main(args: argparse.Namespace) -> None:
    flush_redis()
    print(machine(), f"load {os.getloadavg()[0]:.1f}", flush=True)
    runs = [("max", 0.0, 64), ("rate", args.rate, 128)]
    with scratch_database("ingest_profile") as url:
        for _ in range(args.repeat):
            for mode, rate, conns in runs:
                if args.only and mode != args.only:
                    continue
                started = time.monotonic()
                figures = await one_run(url, args, mode, rate, conns)
                figures["wall_s"] = round(time.monotonic() - started, 1)
                print(json.dumps(figures), flush=True)
                flush_redis()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each load run")
    parser.add_argument("--rate", type=float, default=2000, help="open-loop events/s")
    parser.add_argument("--max-rate", type=float, default=20000, help="events/s to prepare for")
    parser.add_argument("--only", choices=["max", "rate"], help="one of the two loads")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--profile", metavar="FILE", help="sample the ingester to FILE.<mode>")
    parser.add_argument(
        "--code",
        metavar="DIR",
        help="run the ingester from this source tree instead, for before/after figures "
        "(e.g. `git archive OLD campaigns migrations alembic.ini | tar -x -C DIR`)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
