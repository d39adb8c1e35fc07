"""Shared fixtures: a fresh PostgreSQL database per test, cloned from a migrated template,
and one ``store`` fixture that runs a test against every store."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from async_jobs.ports import JobStore
from async_jobs.stores import store_from_dsn
from async_jobs.stores.postgres import PostgresStore
from tests.helpers import SqsServer

PG_ADMIN_DSN = os.environ.get("ASYNC_JOBS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
RUN_ID = uuid.uuid4().hex[:8]
TEMPLATE_DB = f"aj_template_{RUN_ID}"


def dsn_for(database: str) -> str:
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    return f"{base}/{database}"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated database that per-test databases are cloned from (cheap: a file copy)."""

    async def build() -> None:
        await _admin(f'CREATE DATABASE "{TEMPLATE_DB}"')
        store = PostgresStore(dsn_for(TEMPLATE_DB))
        await store.open()
        try:
            await store.migrate()
        finally:
            await store.close()

    asyncio.run(build())
    yield TEMPLATE_DB
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)'))


@pytest.fixture
def pg_database(pg_template: str) -> Iterator[str]:
    """The DSN of a fresh, migrated database for this test only."""
    name = f"aj_test_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield dsn_for(name)
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def empty_pg_database() -> Iterator[str]:
    """The DSN of a fresh database with no schema at all."""
    name = f"aj_empty_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    yield dsn_for(name)
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


STORE_KINDS = ["memory", "sqlite", "postgres"]


@pytest.fixture(params=STORE_KINDS)
def any_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A DSN of each store kind in turn: a test using it runs once per store."""
    kind = request.param
    if kind == "postgres":
        return str(request.getfixturevalue("pg_database"))
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return "memory://"


@pytest.fixture
async def store(any_dsn: str) -> AsyncIterator[JobStore]:
    """Every store in turn, opened and migrated."""
    opened = store_from_dsn(any_dsn)
    await opened.open()
    await opened.migrate()
    yield opened
    await opened.close()


@pytest.fixture(scope="session")
def sqs_server() -> Iterator[SqsServer]:
    """One local SQS server for the session (tests make queues of their own names). Fake
    AWS credentials and a region, as boto needs some, for this process and its children."""
    for key, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(key, value)
    server = SqsServer()
    server.start()
    yield server
    server.stop()
