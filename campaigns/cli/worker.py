"""`campaign worker`: run an arq worker (dispatch ticks, submissions, events, sweeper)."""

from __future__ import annotations

import logging

import click

from campaigns import collector, migrate
from campaigns.local_redis import redis_for, require

log = logging.getLogger(__name__)


def register(main: click.Group) -> None:
    main.add_command(worker)


@click.command()
@click.option("--burst", is_flag=True, help="Stop when the queue is empty.")
def worker(burst: bool) -> None:
    """Run a worker process; start as many as you like, on as many machines.

    \b
    Example:
      DATABASE_URL=postgresql://... REDIS_URL=redis://... ENABLEX_APP_ID=... \\
        ENABLEX_APP_KEY=... WEBHOOK_PUBLIC_URL=https://hooks.example.com \\
        WEBHOOK_TOKEN=... campaign worker
    """
    from campaigns.cli import load_settings
    from workers.settings import make_worker

    settings = load_settings()
    if not settings.webhook_token:
        raise click.UsageError(
            "WEBHOOK_TOKEN is unset: the event URL sent with every broadcast needs the "
            "ingester's secret path token (the same value `campaign webhooks` runs with)"
        )
    migrate.ensure_schema(settings.database_url)
    if not settings.redis_url:
        click.echo("REDIS_URL is unset: starting a private Redis for this worker only", err=True)
    with redis_for(settings.redis_url) as redis_url:
        require(redis_url)
        arq_worker = make_worker(settings, redis_url, burst=burst)
        collector.for_service()
        arq_worker.run()
        click.echo(
            f"worker stopped: {arq_worker.jobs_complete} jobs complete, "
            f"{arq_worker.jobs_failed} failed, {arq_worker.jobs_retried} retried"
        )
