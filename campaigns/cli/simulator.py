"""`campaign simulator`: the local EnableX Voice API simulator, until Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import click

from campaigns.enablex.simulator import SimulatorConfig, load_profile, run_simulator


def summary_line(stats: dict[str, Any]) -> str:
    """One line that says what the simulator did."""
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(stats["outcomes"].items())) or "none"
    hooks = stats["webhooks"]
    return (
        f"simulator stopped: {stats['dials']} dials ({outcomes}); webhooks delivered "
        f"{hooks['delivered']}, failed {hooks['failed']}, redelivered {hooks['redelivered']}, "
        f"given up {hooks['given_up']}, pending {hooks['pending']}; peak "
        f"{stats['peak_calls_per_second']} calls/s, {stats['peak_concurrency']} concurrent"
    )


async def _serve(config: SimulatorConfig) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with run_simulator(config) as sim:
        click.echo(f"EnableX simulator listening on {sim.base_url}")
        click.echo(f"  ledger: {sim.root_url}/_sim/ledger   stats: {sim.root_url}/_sim/stats")
        click.echo(f"  faults: {sim.root_url}/_sim/faults   reset: POST {sim.root_url}/_sim/reset")
        mode = (
            "plaintext" if config.plaintext or not config.profile.webhooks.encrypt else "encrypted"
        )
        click.echo(
            f"  app id {config.app_id}, seed {config.seed}, speed x{config.speed:g}, "
            f"{mode} webhooks; Ctrl-C to stop"
        )
        await stop.wait()
        return sim.stats()


def register(main: click.Group) -> None:
    """Add this module's commands to the `campaign` group."""

    @main.command("simulator")
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
    @click.option("--port", default=8900, show_default=True, type=int, help="0: a free port.")
    @click.option("--app-id", default=None, help="APP_ID [default: ENABLEX_APP_ID or sim-app-id]")
    @click.option(
        "--app-key", default=None, help="APP_KEY [default: ENABLEX_APP_KEY or sim-app-key]"
    )
    @click.option("--seed", default=0, show_default=True, type=int, help="Seed of every draw.")
    @click.option(
        "--speed",
        default=1.0,
        show_default=True,
        type=click.FloatRange(min=0.001),
        help="Time divisor: 10 makes a 30 s call last 3 s.",
    )
    @click.option(
        "--profile",
        "profile_path",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="TOML profile (outcome shares, timings, answers, faults); default: built in.",
    )
    @click.option("--plaintext", is_flag=True, help="Send webhooks unencrypted.")
    def simulator(
        host: str,
        port: int,
        app_id: str | None,
        app_key: str | None,
        seed: int,
        speed: float,
        profile_path: Path | None,
        plaintext: bool,
    ) -> None:
        """Run a local EnableX Voice API simulator until Ctrl-C.

        It answers the Voice API under /voice/v1, plays every call out in scaled time,
        sends encrypted webhooks to each broadcast's event_url and keeps a ledger of every
        dial (GET /_sim/ledger, /_sim/stats).

        \b
        Example:
          campaign simulator --port 8900 --seed 1 --speed 10 --profile my_profile.toml
          ENABLEX_BASE_URL=http://127.0.0.1:8900/voice/v1 campaign worker
        """
        from campaigns.cli import load_settings

        settings = load_settings()
        config = SimulatorConfig(
            app_id=app_id or settings.enablex_app_id or "sim-app-id",
            app_key=app_key or settings.enablex_app_key or "sim-app-key",
            seed=seed,
            speed=speed,
            profile=load_profile(profile_path),
            plaintext=plaintext,
            host=host,
            port=port,
        )
        try:
            stats = asyncio.run(_serve(config))
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        click.echo(summary_line(stats))
