"""The `campaign` command. Each concern registers its subcommands from its own module,
loaded when one of its commands runs (`COMMAND_MODULES`): `campaign import` does not load
the simulator, the ingester or the reports (the CLI started in 1.4 s when it loaded them
all)."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import click

from campaigns import __version__, collector
from campaigns.config import Settings
from campaigns.errors import CampaignError

# command -> the module of campaigns.cli whose `register(main)` adds it (with its siblings)
COMMAND_MODULES = {
    "import": "imports",
    "dnc": "imports",
    "simulator": "simulator",
    "create": "campaign",
    "start": "campaign",
    "pause": "campaign",
    "resume": "campaign",
    "cancel": "campaign",
    "list": "campaign",
    "status": "campaign",
    "worker": "worker",
    "webhooks": "webhooks",
    "report": "report",
    "export": "report",
    "demo": "demo",
}


class CampaignGroup(click.Group):
    """Turns every CampaignError into one clear line on stderr and exit code 1, and loads
    each command's module when the command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f"campaigns.cli.{module}").register(self)
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CampaignError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


def load_settings() -> Settings:
    """Settings from the process environment (the CLI's only entry point for config).
    LOG_LEVEL applies from here on, unless `-v` asked for DEBUG."""
    settings = Settings.from_env(os.environ)
    root = logging.getLogger()
    if root.level != logging.DEBUG:
        root.setLevel(settings.log_level.upper())
    return settings


@click.group(cls=CampaignGroup)
@click.version_option(__version__, prog_name="campaign")
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def main(verbose: bool) -> None:
    """Bulk voice-broadcast campaigns on the EnableX Voice API.

    \b
    Example:
      campaign import sample_lists/clean.csv --country US
      campaign demo
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration to DATABASE_URL.

    \b
    Example:
      DATABASE_URL=postgresql://postgres@127.0.0.1/test campaign db upgrade
    """
    from campaigns import migrate

    settings = load_settings()
    before = migrate.current_revision(settings.database_url)
    migrate.upgrade(settings.database_url)
    after = migrate.current_revision(settings.database_url)
    click.echo(f"schema: {before or 'empty'} -> {after}")


def run() -> None:
    """The `campaign` console script: `main`, with the modules of the command asked for
    loaded first, under `collector.loading()` (no collections while they load, then out
    of every later collection's sight). Tests call `main` itself."""
    with collector.loading():
        name = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "")
        module = COMMAND_MODULES.get(name)
        if module is not None:
            importlib.import_module(f"campaigns.cli.{module}")
    main(prog_name="campaign")
