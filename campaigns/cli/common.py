"""Helpers shared by the CLI commands: the database session for one command, output."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncSession

from campaigns import migrate
from campaigns.config import Settings
from campaigns.db import async_session_factory, make_async_engine

T = TypeVar("T")


def run_in_session(
    settings: Settings, work: Callable[[AsyncSession], Awaitable[T]], *, write: bool = True
) -> T:
    """Run `work` in one transaction on DATABASE_URL (schema checked/applied first)."""
    migrate.ensure_schema(settings.database_url)

    async def main() -> T:
        engine = make_async_engine(settings.database_url)
        try:
            sessions = async_session_factory(engine)
            async with sessions() as session:
                if write:
                    async with session.begin():
                        return await work(session)
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def is_tty() -> bool:
    return sys.stdout.isatty()
