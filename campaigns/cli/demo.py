"""`campaign demo`: the whole job end to end on embedded defaults, in one command.

A private Redis (unless REDIS_URL is set), a fresh SQLite file, the bundled EnableX
simulator, the webhook ingester and one arq worker, all on loopback in this process. It
imports sample_lists/demo.csv, puts one of its numbers on the do-not-call list, runs the
two-question poll of sample_lists/demo_poll.toml to completion with a live progress view,
prints the report and writes the results CSV and the HTML report. Ctrl-C stops it cleanly.

The simulator plays calls `--speed` times faster than real time, and the workers, the
ingester and the simulator's event stamps share a clock that runs as fast, so retry
intervals and calling windows keep their meaning at demo speed. Pacing stays real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console
from sqlalchemy.engine import make_url

import campaigns
from campaigns import migrate
from campaigns.cli.progress import watch_campaign_async
from campaigns.config import Settings
from campaigns.db import async_session_factory, make_async_engine, make_engine
from campaigns.definition import definition_to_json, load_definition
from campaigns.enablex.simulator import SimulatorConfig, load_profile, run_simulator
from campaigns.errors import CampaignError
from campaigns.export import plan_export, write_export
from campaigns.importing import ImportOptions, ImportSummary, import_file
from campaigns.local_redis import redis_for
from campaigns.reporting import load_report, render_html, render_terminal
from campaigns.store import campaigns as campaign_store
from campaigns.store import contacts as contact_store
from campaigns.webhooks import serve_ingester

DEMO_DATABASE = "sqlite:///./campaigns-demo.db"
# The simulated people wait this long (simulated seconds) in silence for the next question
# before they hang up: at x10, one real second for each IVR turn of this single-process,
# single-core-bound demo (the default profile's 5 s suits real-time runs).
DEMO_PATIENCE = 10.0
# A number of demo.csv that asked not to be called: the demo shows it suppressed.
DNC_NUMBER = "+13125550101"


def register(main: click.Group) -> None:
    """Add this module's commands to the `campaign` group."""
    main.add_command(demo)


def sample_dir() -> Path:
    """sample_lists/ of this checkout (the package is installed from it in editable mode),
    else of the current directory."""
    for base in (Path(campaigns.__file__).resolve().parent.parent, Path.cwd()):
        candidate = base / "sample_lists"
        if (candidate / "demo.csv").is_file() and (candidate / "demo_poll.toml").is_file():
            return candidate
    raise CampaignError(
        "sample_lists/demo.csv and demo_poll.toml not found: run the demo from the "
        "project's checkout"
    )


def scaled_clock(speed: float, start: float | None = None) -> Callable[[], float]:
    """Epoch seconds that run `speed` times faster than real time from `start` (now)."""
    origin = time.time() if start is None else start
    return lambda: origin + (time.time() - origin) * speed


@dataclass
class DemoResult:
    campaign_id: int
    status: str
    imported: ImportSummary
    dials: int
    ivr_turn: dict[str, float | int]
    seconds: float
    ended: datetime  # on the demo's clock


def _fresh_sqlite(url: str) -> None:
    """The demo starts from an empty database: remove its SQLite file (and WAL files)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return
    for suffix in ("", "-wal", "-shm"):
        Path(parsed.database + suffix).unlink(missing_ok=True)


def _load(settings: Settings, samples: Path, console: Console) -> ImportSummary:
    """Migrate, put the DNC sample number on the list, import demo.csv."""
    migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with engine.begin() as conn:
            summary = import_file(
                conn,
                str(samples / "demo.csv"),
                "demo",
                ImportOptions(default_region="US"),
            )
            # Asked not to be called after the list was imported: suppressed at start.
            contact_store.add_dnc(conn, [DNC_NUMBER], source="demo", reason="asked not to call")
    finally:
        engine.dispose()
    console.print(
        f"imported [bold]{summary.imported}[/bold] contacts from sample_lists/demo.csv "
        f"({summary.invalid} invalid); {DNC_NUMBER} then asked not to be called "
        "(do-not-call list)"
    )
    return summary


async def _create_and_start(settings: Settings, toml: Path, now: datetime) -> tuple[int, int]:
    definition = load_definition(toml)
    engine = make_async_engine(settings.database_url)
    try:
        async with async_session_factory(engine)() as session, session.begin():
            list_id = await campaign_store.list_id_by_name(session, definition.list_name)
            campaign_id = await campaign_store.create_campaign(
                session,
                name=definition.name,
                list_id=list_id,
                caller_id=definition.caller_id,
                definition=definition_to_json(definition),
                source_file=str(toml),
                now=now,
            )
            campaign = await campaign_store.transition(session, campaign_id, "start", now)
            total = await campaign_store.fan_out_recipients(session, campaign, now)
        return campaign_id, total
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def _worker(
    settings: Settings, redis_url: str, clock: Callable[[], datetime]
) -> AsyncIterator[None]:
    from workers.settings import close_worker, make_worker

    worker = make_worker(settings, redis_url, clock=clock, handle_signals=False)
    task = asyncio.create_task(worker.async_run(), name="demo-worker")
    try:
        yield
    finally:
        await close_worker(worker)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _run(
    settings: Settings, redis_url: str, samples: Path, speed: float, seed: int, console: Console
) -> DemoResult:
    started = time.perf_counter()
    wall = scaled_clock(speed)

    def clock() -> datetime:
        return datetime.fromtimestamp(wall(), UTC)

    imported = await asyncio.to_thread(_load, settings, samples, console)
    token = secrets.token_urlsafe(24)
    sim_config = SimulatorConfig(
        app_id="demo-" + secrets.token_hex(8),
        app_key=secrets.token_urlsafe(16),
        seed=seed,
        speed=speed,
        profile=load_profile().replace(timing={"idle_hangup": DEMO_PATIENCE}),
        wall_clock=wall,
    )
    async with run_simulator(sim_config) as sim:
        # The ingester's port is known only once it listens: settings are completed in two
        # steps (the worker needs the event URL, the ingester needs the app id and token).
        base = Settings(
            database_url=settings.database_url,
            redis_url=redis_url,
            enablex_base_url=sim.base_url,
            enablex_app_id=sim.app_id,
            enablex_app_key=sim.app_key,
            webhook_token=token,
            webhook_accept_plaintext=False,
            queue_name=f"campaigns-demo:{secrets.token_hex(4)}",
            # Waits measured on the demo's clock keep their real length at demo speed.
            attempt_timeout_seconds=settings.attempt_timeout_seconds * speed,
            settle_grace_seconds=settings.settle_grace_seconds * speed,
            early_event_timeout_seconds=settings.early_event_timeout_seconds * speed,
            worker_poll_delay=0.01,
        )
        async with serve_ingester(base, clock=clock) as port:
            live = replace(base, webhook_public_url=f"http://127.0.0.1:{port}")
            console.print(
                f"EnableX simulator on {sim.base_url} (x{speed:g} speed, seed {seed}); "
                f"ingester on http://127.0.0.1:{port}/webhooks/enablex/…; one arq worker"
            )
            campaign_id, total = await _create_and_start(live, samples / "demo_poll.toml", clock())
            console.print(
                f"campaign {campaign_id} started: {total} recipients; "
                "calls, answers and retries follow:"
            )
            async with _worker(live, redis_url, clock):
                status = await watch_campaign_async(live, campaign_id, give_up_after=240)
                # Let the last hang-ups and their events arrive before stopping.
                with contextlib.suppress(TimeoutError):
                    await sim.wait_idle(limit=10)
        dials = len(sim.ledger())
        ivr_turn = sim.stats()["ivr_turn_seconds"]
    seconds = time.perf_counter() - started
    return DemoResult(campaign_id, status, imported, dials, ivr_turn, seconds, clock())


def _write_outputs(
    settings: Settings, campaign_id: int, now: datetime, out_dir: Path, console: Console
) -> tuple[Path, Path, int]:
    csv_path = out_dir / "demo-results.csv"
    html_path = out_dir / "demo-report.html"
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn, conn.begin():
            report = load_report(conn, campaign_id, now)
            plan = plan_export(conn, campaign_id, "recipients")
            with csv_path.open("wb") as out:
                rows = write_export(conn, plan, out, excel=False)
    finally:
        engine.dispose()
    render_terminal(report, console)
    html_path.write_text(render_html(report), encoding="utf-8")
    return csv_path, html_path, rows


@click.command()
@click.option(
    "--speed",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=1.0, max=100.0),
    help="How much faster than real time the calls and the campaign clock run.",
)
@click.option("--seed", default=1, show_default=True, type=int, help="The simulator's seed.")
@click.option(
    "--out-dir",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where demo-results.csv and demo-report.html are written.",
)
def demo(speed: float, seed: int, out_dir: Path) -> None:
    """Run a complete poll campaign on embedded defaults: no account, no network.

    Starts a private Redis (unless REDIS_URL is set), uses a fresh SQLite file
    (campaigns-demo.db, made anew each run; with DATABASE_URL set, that database is
    used as it is), the bundled EnableX simulator, the
    webhook ingester and a worker; imports sample_lists/demo.csv; runs the two-question
    poll of sample_lists/demo_poll.toml with AMD and retries; prints the report and writes
    demo-results.csv and demo-report.html. Everything it starts is stopped at the end.

    \b
    Example:
      campaign demo
      campaign demo --speed 50 --out-dir /tmp/demo
    """
    import os

    from campaigns.cli import load_settings

    settings = load_settings()
    if "DATABASE_URL" not in os.environ:
        settings = replace(settings, database_url=DEMO_DATABASE)
        _fresh_sqlite(DEMO_DATABASE)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = sample_dir()
    console = Console()
    console.rule("[bold]campaign demo")
    with redis_for(settings.redis_url) as redis_url:
        try:
            result = asyncio.run(_run(settings, redis_url, samples, speed, seed, console))
        except KeyboardInterrupt:
            console.print("demo interrupted: everything it started has been stopped")
            raise SystemExit(130) from None
    if result.status != "completed":
        raise CampaignError(
            f"campaign {result.campaign_id} did not complete within 4 minutes "
            f"(status {result.status})"
        )
    csv_path, html_path, rows = _write_outputs(
        settings, result.campaign_id, result.ended, out_dir, console
    )
    console.rule()
    db = make_url(settings.database_url).render_as_string()
    console.print(
        f"demo complete in {result.seconds:.1f} s: campaign {result.campaign_id}, "
        f"{result.imported.imported} contacts, {result.dials} calls placed by the simulator; "
        f"{rows} result rows in {csv_path}, charts in {html_path}"
    )
    turn = result.ivr_turn
    if turn["count"]:
        console.print(
            f"IVR turns (answer or prompt end → next prompt, as the simulator timed them): "
            f"{turn['count']}, p50 {turn['p50'] * 1000:.0f} ms, p95 {turn['p95'] * 1000:.0f} ms, "
            f"max {turn['max'] * 1000:.0f} ms"
        )
    console.print(
        f"look around: DATABASE_URL={db} campaign report {result.campaign_id} "
        f"(or: campaign export {result.campaign_id} -o results.csv --answers)"
    )
