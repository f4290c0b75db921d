"""Event apply benchmark: the applier's own cost, in one process, against one event per job.

Run by hand (never in the test suite):

    python bench/apply_bench.py                 # writes the `apply` section of docs/benchmarks.md
    python bench/apply_bench.py --calls 500 --rounds 1 --no-doc   # quick look

`bench/ingest_bench.py` measures the whole path (ingester, Redis, worker processes) but on
a shared two-core machine its apply rate moves more between runs than most changes do.
This isolates the applier: in a scratch PostgreSQL database, `--calls` calls of a started
poll campaign, each with the ingest benchmark's 10-event life (answered, message, a DTMF
question, an ASR question, hung up), are stored as the ingester stores them; then, timed,
they are applied the way the worker's apply feed takes them (groups of 500 event ids,
each call's events spread over consecutive groups, one step of 500 calls per group; one
transaction per group) and every group's IVR commands are sent as the worker sends them,
to a minimal HTTP server in another process (bench/command_bench.py's; 404 for each).

Baseline: one `apply_events` transaction per event (what one arq job per event does, the
naive ingester's path in bench/ingest_bench.py), on its own calls, same commands. Each
variant alternates `--rounds` times on fresh calls; the table gives each one's median
round: events/s, this process's CPU per event (user + system), and where the time went.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchdoc import code_version, load_note, machine, publish
from command_bench import _cpu, _start_server
from dispatch_bench import POLL, campaign_toml, create_campaign, make_list, numbers
from dispatch_bench import scratch_database as scratch_db
from ingest_bench import EVENTS_PER_CALL, call_events

from campaigns import applying, collector
from campaigns.config import Settings
from campaigns.db import async_session_factory, make_async_engine
from campaigns.enablex.events import dedupe_key
from campaigns.store import calls
from campaigns.store import events as store
from workers.context import build_deps, close_deps

SECTION = "apply"
GROUP = 500
CONFIG = applying.ApplyConfig(settle_grace=timedelta(seconds=3), early_timeout=timedelta(hours=1))
# The statements timed per step (module functions of campaigns.store.calls).
STEPS = ("claim_unapplied", "lock_attempt_rows", "history_of_calls", "write_attempts")


async def _calls(url: str, count: int, start: int) -> list[tuple[str, str, str]]:
    """`count` dialled calls of a started poll campaign: (voice_id, broadcast_id, number)."""
    from dispatch_bench import start_campaigns
    from sqlalchemy import insert, select, update

    from campaigns.models import Batch, BatchState, CallAttempt, Recipient, RecipientStatus

    name = f"apply-{uuid.uuid4().hex[:8]}"
    phones = numbers(count, start)
    make_list(url, name, phones)
    campaign_id = await create_campaign(
        url, campaign_toml(name, cps=100, batch_size=100, poll=POLL)
    )
    await start_campaigns(url, [campaign_id])
    engine = make_async_engine(url)
    broadcast_id, batch_id = f"bc-{name}", str(uuid.uuid4())
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            insert(Batch).values(
                id=batch_id,
                campaign_id=campaign_id,
                size=count,
                broadcast_id=broadcast_id,
                submitted_at=now,
                state=BatchState.SUBMITTED,
            )
        )
        await conn.execute(
            update(Recipient)
            .where(Recipient.campaign_id == campaign_id)
            .values(status=RecipientStatus.IN_FLIGHT, attempts=1)
        )
        rows = (
            await conn.execute(
                select(Recipient.id, Recipient.phone).where(Recipient.campaign_id == campaign_id)
            )
        ).all()
        made = [(str(uuid.uuid4()), rid, phone) for rid, phone in rows]
        await conn.execute(
            insert(CallAttempt),
            [
                {
                    "recipient_id": rid,
                    "campaign_id": campaign_id,
                    "batch_id": batch_id,
                    "attempt_no": 1,
                    "phone": phone,
                    "state": "queued",
                    "voice_id": voice_id,
                }
                for voice_id, rid, phone in made
            ],
        )
    await engine.dispose()
    return [(voice_id, broadcast_id, phone) for voice_id, _, phone in made]


async def _stored_groups(url: str, lives: list[tuple[str, str, str]]) -> list[list[int]]:
    """The calls' events stored as the ingester stores them, as the feed's groups: 500
    calls at a time, step by step."""
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    stream: list[dict[str, Any]] = []
    for start in range(0, len(lives), GROUP):
        chunk = [call_events(v, b, n, t0) for v, b, n in lives[start : start + GROUP]]
        for step in range(EVENTS_PER_CALL):
            stream += [life[step] for life in chunk]
    engine = make_async_engine(url)
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        ids = await store.insert_events(
            conn,
            [
                store.NewEvent(dedupe_key(e), e["voice_id"], e["broadcast_id"], e, now)
                for e in stream
            ],
        )
    await engine.dispose()
    return [ids[i : i + GROUP] for i in range(0, len(ids), GROUP)]


def _timed_steps(spent: Counter[str]) -> Callable[[], None]:
    """Time the applier's main statements (wrapping the module functions); returns undo."""
    originals = {name: getattr(calls, name) for name in STEPS}

    def wrap(name: str, func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await func(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - started

        return timed

    for name, func in originals.items():
        setattr(calls, name, wrap(name, func))

    def undo() -> None:
        for name, func in originals.items():
            setattr(calls, name, func)

    return undo


async def _run(url: str, base: str, groups: list[list[int]], *, per_event: bool) -> dict[str, Any]:
    settings = replace(
        Settings(database_url=url),
        enablex_base_url=base,
        enablex_app_id="app",
        enablex_app_key="key",
    )
    deps = await build_deps(settings, None)  # type: ignore[arg-type]  # no Redis needed
    sessions = async_session_factory(deps.engine)
    units = [[i] for g in groups for i in g] if per_event else groups
    spent: Counter[str] = Counter()
    undo = _timed_steps(spent)
    events = commands = 0
    cpu, started = _cpu(), time.perf_counter()
    try:
        for ids in units:
            async with sessions() as session, session.begin():
                result = await applying.apply_events(
                    session, ids, now=datetime.now(UTC), config=CONFIG
                )
            await applying.send_commands(deps.enablex, result.commands)
            events += result.applied
            commands += len(result.commands)
    finally:
        seconds, cpu = time.perf_counter() - started, _cpu() - cpu
        undo()
        await close_deps(deps)
    return {
        "events": events,
        "commands": commands,
        "per_s": events / seconds,
        "cpu_us": cpu / events * 1e6,
        "steps": {k: v / events * 1e6 for k, v in spent.items()},
    }


VARIANTS = [
    ("`apply_events`, groups of 500 as the apply feed takes them (the worker)", False),
    ("baseline: one `apply_events` transaction per event (one arq job per event)", True),
]


def report(args: argparse.Namespace, rounds: list[list[dict[str, Any]]]) -> str:
    rows = []
    medians = []
    for index, (label, _) in enumerate(VARIANTS):
        runs = sorted((r[index] for r in rounds), key=lambda run: run["per_s"])
        mid = runs[len(runs) // 2]
        medians.append(mid)
        steps = " / ".join(f"{mid['steps'].get(name, 0):,.0f}" for name in STEPS)
        rows.append(
            f"| {label} | {mid['events']:,} | {mid['per_s']:,.0f} | {mid['cpu_us']:,.0f} | "
            f"{steps} | {mid['commands']:,} |"
        )
    ours, naive = medians
    spread = ", ".join(f"{r[0]['per_s']:,.0f}" for r in rounds)
    return "\n".join(
        [
            "## Applying events: the applier alone",
            "",
            f"Machine: {machine()}; {load_note()}. Command: "
            f"`{' '.join(['python bench/apply_bench.py', *args.argv])}`, "
            f"on commit {code_version()}.",
            "",
            f"{args.calls:,} calls per round ({args.baseline_calls:,} for the baseline; "
            f"{EVENTS_PER_CALL} events each: "
            "answered, message, a DTMF and an ASR question, hung up), stored as the ingester "
            "stores them, then applied in one process on PostgreSQL and each transaction's "
            "IVR commands sent as the worker sends them (to a minimal server in another "
            "process). No Redis, no worker process, no ingest load: the applier's own cost. "
            + (
                "Python's default garbage-collector settings. "
                if args.default_gc
                else "The garbage collector set as `campaign worker` sets it "
                "(`campaigns.collector.for_service`). "
            )
            + f"Variants alternate, {args.rounds} rounds, median round shown.",
            "",
            "| how the events are applied | events | events/s | CPU µs per event "
            "(this process) | µs per event in: claim / lock attempts / read call histories / "
            "write attempts | IVR commands sent |",
            "|---|---:|---:|---:|---|---:|",
            *rows,
            "",
            f"Grouped: {ours['per_s'] / naive['per_s']:.1f}× the events/s of one transaction "
            f"per event ({spread} events/s in the {len(rounds)} rounds). The whole "
            "path with the ingester and worker processes is in the ingest section.",
        ]
    )


async def main(args: argparse.Namespace) -> None:
    if not args.default_gc:
        collector.for_service()  # as `campaign worker` sets its process
    rounds: list[list[dict[str, Any]]] = []
    start = 0
    with scratch_db("apply_bench") as url:
        proc, base = _start_server()
        try:
            for number in range(args.rounds):
                results = []
                for _, per_event in VARIANTS:
                    count = args.baseline_calls if per_event else args.calls
                    groups = await _stored_groups(url, await _calls(url, count, start))
                    start += count
                    results.append(await _run(url, base, groups, per_event=per_event))
                rounds.append(results)
                print(
                    f"round {number + 1}: "
                    + ", ".join(
                        f"{r['per_s']:,.0f} events/s, {r['cpu_us']:,.0f} µs" for r in results
                    ),
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(10)
    publish(SECTION, report(args, rounds), no_doc=args.no_doc)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--baseline-calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="Keep Python's default collector settings (the worker sets its own).",
    )
    args = parser.parse_args()
    args.argv = [a for a in sys.argv[1:] if a != "--no-doc"]
    return args


if __name__ == "__main__":
    asyncio.run(main(parse()))
