"""The `campaign` command. Each concern registers its subcommands from its own module."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from campaigns import __version__
from campaigns.config import Settings
from campaigns.errors import CampaignError


class CampaignGroup(click.Group):
    """Turns every CampaignError into one clear line on stderr and exit code 1."""

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


def _register() -> None:
    from campaigns.cli import campaign, demo, imports, report, simulator, webhooks, worker

    for module in (imports, simulator, campaign, worker, webhooks, report, demo):
        module.register(main)


_register()
