"""`campaign webhooks`: serve the webhook ingester (uvicorn, no access log)."""

from __future__ import annotations

import logging

import click

from campaigns import migrate
from campaigns.errors import CampaignError
from campaigns.local_redis import redis_for, require

log = logging.getLogger(__name__)


def register(main: click.Group) -> None:
    main.add_command(webhooks)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8800, show_default=True, type=int, help="Port to listen on.")
def webhooks(host: str, port: int) -> None:
    """Receive EnableX webhooks: store each event, then hand it to the workers.

    EnableX posts to WEBHOOK_PUBLIC_URL + /webhooks/enablex/WEBHOOK_TOKEN (the
    `event_url` the workers send with every broadcast). Run as many as you like behind a
    load balancer; GET /healthz reports database and Redis reachability.

    \b
    Example:
      DATABASE_URL=postgresql://... REDIS_URL=redis://... ENABLEX_APP_ID=... \\
        WEBHOOK_TOKEN=... campaign webhooks --host 0.0.0.0 --port 8800
    """
    import uvicorn

    from campaigns.cli import load_settings
    from campaigns.webhooks import create_app, listening_socket, server_options

    settings = load_settings()
    migrate.ensure_schema(settings.database_url)
    if not settings.webhook_token:
        raise click.UsageError("WEBHOOK_TOKEN is unset: the webhook path needs a secret token")
    try:  # bound here, handed to uvicorn: a port in use is one line, exit code 1
        sock = listening_socket(host, port)
    except OSError as exc:
        raise CampaignError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    if not settings.redis_url:
        click.echo("REDIS_URL is unset: starting a private Redis (workers must share it)", err=True)
    with sock, redis_for(settings.redis_url) as redis_url:
        from dataclasses import replace

        require(redis_url)
        app = create_app(replace(settings, redis_url=redis_url))
        click.echo(f"ingesting webhooks on http://{host}:{port}/webhooks/enablex/<token>", err=True)
        server = uvicorn.Server(
            uvicorn.Config(
                **server_options(app), log_level=settings.log_level.lower(), lifespan="on"
            )
        )
        server.run(sockets=[sock])
    if not server.started:
        raise CampaignError("the ingester did not start (its log above says why)")
