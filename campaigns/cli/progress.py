"""The live progress view of a campaign, shared by `campaign status --watch` and the demo."""

from __future__ import annotations

import asyncio
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from campaigns.config import Settings
from campaigns.db import async_session_factory, make_async_engine
from campaigns.models import CampaignStatus
from campaigns.store import campaigns as store

FINAL = {CampaignStatus.COMPLETED, CampaignStatus.CANCELLED}


async def watch_campaign_async(
    settings: Settings,
    campaign_id: int,
    *,
    give_up_after: float | None = None,
    interval: float = 0.5,
) -> str:
    """Show a progress bar until the campaign completes or is cancelled; return its status."""
    engine = make_async_engine(settings.database_url)
    sessions = async_session_factory(engine)
    deadline = None if give_up_after is None else time.monotonic() + give_up_after
    try:
        with Progress(
            TextColumn("[bold]campaign {task.fields[cid]}[/bold] {task.fields[state]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
        ) as progress:
            task = progress.add_task("", total=None, cid=campaign_id, state="", detail="")
            while True:
                async with sessions() as session:
                    campaign = await store.get_campaign(session, campaign_id)
                    counts = await store.status_counts(session, campaign_id)
                detail = (
                    f"in flight {counts.by_status.get('in_flight', 0)}, "
                    f"retry {counts.by_status.get('waiting_retry', 0)}, "
                    f"attempts {counts.attempts}"
                )
                progress.update(
                    task,
                    total=counts.total or None,
                    completed=counts.finished,
                    state=campaign.status,
                    detail=detail,
                )
                if campaign.status in FINAL:
                    return campaign.status
                if deadline is not None and time.monotonic() > deadline:
                    return campaign.status
                await asyncio.sleep(interval)
    finally:
        await engine.dispose()


def watch_campaign(settings: Settings, campaign_id: int) -> str:
    return asyncio.run(watch_campaign_async(settings, campaign_id))
