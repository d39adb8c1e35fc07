"""Fixtures of the integration tier."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from async_jobs import JobApp
from async_jobs.stores import store_from_dsn


@pytest.fixture
async def app(any_dsn: str) -> AsyncIterator[JobApp]:
    """An app on each store in turn, opened and migrated, with no handlers yet."""
    jobs = JobApp(store=store_from_dsn(any_dsn))
    async with jobs:
        await jobs.migrate()
        yield jobs
