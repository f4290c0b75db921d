"""`campaign create|start|pause|resume|cancel|list|status`: the campaign lifecycle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from campaigns.cli.common import echo_json, run_in_session
from campaigns.cli.progress import watch_campaign
from campaigns.definition import definition_to_json, load_definition
from campaigns.models import RecipientStatus, utcnow
from campaigns.store import campaigns as store


def register(main: click.Group) -> None:
    for command in (create, start, pause, resume, cancel, list_campaigns, status):
        main.add_command(command)


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def create(file: Path, as_json: bool) -> None:
    """Create a draft campaign from a campaign file (TOML).

    \b
    Example:
      campaign create sample_lists/poll.toml
    """
    from campaigns.cli import load_settings

    definition = load_definition(file)

    async def work(session: AsyncSession) -> int:
        list_id = await store.list_id_by_name(session, definition.list_name)
        return await store.create_campaign(
            session,
            name=definition.name,
            list_id=list_id,
            caller_id=definition.caller_id,
            definition=definition_to_json(definition),
            source_file=str(file),
            now=utcnow(),
        )

    campaign_id = run_in_session(load_settings(), work)
    if as_json:
        echo_json(
            {
                "campaign_id": campaign_id,
                "name": definition.name,
                "list": definition.list_name,
                "status": "draft",
            }
        )
    else:
        click.echo(
            f"created campaign {campaign_id} ({definition.name!r}, list "
            f"{definition.list_name!r}); start it with: campaign start {campaign_id}"
        )


@click.command()
@click.argument("campaign_id", type=int)
def start(campaign_id: int) -> None:
    """Start a draft campaign: freeze its script and create one recipient per contact.

    \b
    Example:
      campaign start 1
    """
    from campaigns.cli import load_settings

    async def work(session: AsyncSession) -> tuple[int, int]:
        now = utcnow()
        campaign = await store.transition(session, campaign_id, "start", now)
        total = await store.fan_out_recipients(session, campaign, now)
        counts = await store.status_counts(session, campaign_id)
        return total, counts.by_status.get(RecipientStatus.SUPPRESSED, 0)

    total, suppressed = run_in_session(load_settings(), work)
    click.echo(
        f"campaign {campaign_id} running: {total} recipients "
        f"({suppressed} suppressed by the do-not-call list)"
    )


def _simple_transition(command: str, done: str) -> click.Command:
    @click.command(name=command)
    @click.argument("campaign_id", type=int)
    def run(campaign_id: int) -> None:
        from campaigns.cli import load_settings

        async def work(session: AsyncSession) -> int:
            now = utcnow()
            await store.transition(session, campaign_id, command, now)
            if command == "cancel":
                return await store.cancel_open_recipients(session, campaign_id, now)
            return 0

        cancelled = run_in_session(load_settings(), work)
        extra = f"; {cancelled} recipients not yet called were cancelled" if cancelled else ""
        click.echo(f"campaign {campaign_id} {done}{extra}")

    run.help = {
        "pause": "Pause a running campaign: nothing more is submitted from the next tick on; "
        "calls already live finish normally.\n\n\b\nExample:\n  campaign pause 1",
        "resume": "Resume a paused campaign.\n\n\b\nExample:\n  campaign resume 1",
        "cancel": "Cancel a campaign for good: recipients not yet called are cancelled."
        "\n\n\b\nExample:\n  campaign cancel 1",
    }[command]
    return run


pause = _simple_transition("pause", "paused")
resume = _simple_transition("resume", "resumed")
cancel = _simple_transition("cancel", "cancelled")


@click.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_campaigns(as_json: bool) -> None:
    """List every campaign with its status.

    \b
    Example:
      campaign list --json
    """
    from campaigns.cli import load_settings

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        return [
            {
                "id": c.id,
                "name": c.name,
                "status": c.status,
                "recipients": c.recipients_total,
                "created_at": c.created_at.isoformat(),
                "started_at": c.started_at.isoformat() if c.started_at else None,
            }
            for c in await store.list_campaigns(session)
        ]

    rows = run_in_session(load_settings(), work, write=False)
    if as_json:
        echo_json(rows)
        return
    table = Table(title=f"{len(rows)} campaign(s)")
    for column in ("id", "name", "status", "recipients", "created_at"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("id", "name", "status", "recipients", "created_at")))
    Console().print(table)


@click.command()
@click.argument("campaign_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--watch", is_flag=True, help="Show a live progress bar until the campaign ends.")
def status(campaign_id: int, as_json: bool, watch: bool) -> None:
    """Counts by recipient status and outcome, and attempts.

    \b
    Example:
      campaign status 1 --watch
    """
    from campaigns.cli import load_settings

    settings = load_settings()
    if watch:
        watch_campaign(settings, campaign_id)

    async def work(session: AsyncSession) -> dict[str, Any]:
        campaign = await store.get_campaign(session, campaign_id)
        counts = await store.status_counts(session, campaign_id)
        return {
            "campaign_id": campaign_id,
            "name": campaign.name,
            "status": campaign.status,
            "recipients": counts.total,
            "finished": counts.finished,
            "by_status": counts.by_status,
            "by_outcome": counts.by_outcome,
            "attempts": counts.attempts,
            "attempts_open": counts.attempts_open,
            "started_at": campaign.started_at.isoformat() if campaign.started_at else None,
            "ended_at": campaign.ended_at.isoformat() if campaign.ended_at else None,
        }

    data = run_in_session(settings, work, write=False)
    if as_json:
        echo_json(data)
        return
    console = Console()
    console.print(
        f"[bold]campaign {campaign_id}[/bold] {data['name']!r}: {data['status']}, "
        f"{data['finished']}/{data['recipients']} finished, "
        f"{data['attempts']} attempts ({data['attempts_open']} open)"
    )
    table = Table()
    table.add_column("recipient status")
    table.add_column("count", justify="right")
    for key, value in sorted(data["by_status"].items()):
        table.add_row(key, str(value))
    console.print(table)
    if data["by_outcome"]:
        outcomes = Table()
        outcomes.add_column("final outcome")
        outcomes.add_column("count", justify="right")
        for key, value in sorted(data["by_outcome"].items()):
            outcomes.add_row(key, str(value))
        console.print(outcomes)
