"""Shared fixtures: a fresh PostgreSQL database per test, cloned from a migrated template,
and one ``store`` fixture that runs a test against every store."""

from __future__ import annotations

import asyncio
import os
import queue
import threading
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


class FreshDatabases:
    """Databases cloned from the template ahead of need and dropped after use, by a thread of
    their own: a clone costs about 0.4 s (PostgreSQL writes the template's pages to its WAL
    and flushes it), which a test then does not wait for while the clone overlaps the tests
    before it. Each database still serves one test only."""

    AHEAD = 2

    def __init__(self, template: str) -> None:
        self.template = template
        self._ready: queue.Queue[str | BaseException] = queue.Queue()
        self._work: queue.Queue[tuple[str, str]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="fresh-databases", daemon=True)
        self._thread.start()
        for _ in range(self.AHEAD):
            self._work.put(("create", ""))

    def take(self) -> str:
        self._work.put(("create", ""))  # the one after next
        made = self._ready.get(timeout=120)
        if isinstance(made, BaseException):
            raise made
        return made

    def give_back(self, name: str) -> None:
        self._work.put(("drop", name))

    def close(self) -> None:
        self._work.put(("stop", ""))
        self._thread.join(timeout=120)
        while not self._ready.empty():
            made = self._ready.get()
            if isinstance(made, str):
                asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{made}" WITH (FORCE)'))

    def _run(self) -> None:
        while True:
            action, name = self._work.get()
            if action == "stop":
                return
            try:
                if action == "create":
                    name = f"aj_test_{RUN_ID}_{uuid.uuid4().hex[:8]}"
                    asyncio.run(_admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"'))
                    self._ready.put(name)
                else:
                    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            except Exception as exc:  # a failed clone fails the test that waits for it
                if action == "create":
                    self._ready.put(exc)


@pytest.fixture(scope="session")
def fresh_databases(pg_template: str) -> Iterator[FreshDatabases]:
    databases = FreshDatabases(pg_template)
    yield databases
    databases.close()


@pytest.fixture
def pg_database(fresh_databases: FreshDatabases) -> Iterator[str]:
    """The DSN of a fresh, migrated database for this test only."""
    name = fresh_databases.take()
    yield dsn_for(name)
    fresh_databases.give_back(name)


@pytest.fixture
def empty_pg_database() -> Iterator[str]:
    """The DSN of a fresh database with no schema at all."""
    name = f"aj_empty_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    yield dsn_for(name)
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


STORE_KINDS = ["memory", "sqlite", "postgres"]

TESTS = Path(__file__).parent
TIERS = ("unit", "integration", "acceptance", "browser")  # one folder each
PG_FIXTURES = ("pg_template", "empty_pg_database")  # every PostgreSQL database comes from these
# Seconds. Processes started by an acceptance test share two cores with the other xdist
# workers' (make test runs four): its waits take longer than alone, not forever.
ACCEPTANCE_TIMEOUT = 180


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test is marked with its tier, from its folder (``tests/<tier>/``), and with
    ``postgres`` where it needs the PostgreSQL server: the PostgreSQL variant of a test run
    on every store, or a test that uses a PostgreSQL database. ``make test-fast`` selects
    on these. Acceptance tests get at least ``ACCEPTANCE_TIMEOUT``. Browser tests run only
    in a session of their own (see below); ``cpu_heavy`` tests run first."""
    for item in items:
        tier = item.path.relative_to(TESTS).parts[0]
        if tier in TIERS:
            item.add_marker(tier)
        if tier == "acceptance":
            _timeout_at_least(item, ACCEPTANCE_TIMEOUT)
        params = getattr(item, "callspec", None)
        on_postgres = params is not None and params.params.get("any_dsn") == "postgres"
        fixtures = getattr(item, "fixturenames", ())
        if on_postgres or any(name in fixtures for name in PG_FIXTURES):
            item.add_marker("postgres")
    _browser_tests_apart(config, items)
    _cpu_heavy_first(items)


def _timeout_at_least(item: pytest.Item, seconds: float) -> None:
    """A test's own ``timeout`` mark stands when it is longer; the ini's (60 s) does not."""
    own = item.get_closest_marker("timeout")
    given = None if own is None else own.kwargs.get("timeout", own.args[0] if own.args else None)
    if given is None or given < seconds:
        item.add_marker(pytest.mark.timeout(seconds), append=False)


def _cpu_heavy_first(items: list[pytest.Item]) -> None:
    """The long tests that keep the CPU busy (``@pytest.mark.cpu_heavy``) go to the front,
    the longest first (``cpu_heavy(seconds=...)``, roughly how long one runs alone; 10 when
    not given), so that with ``-n N --dist load --maxschedchunk 1`` (make test) the workers
    share them out while the many short tests fill the gaps, and none of them is left to run
    alone at the end."""

    def order(item: pytest.Item) -> tuple[bool, float]:
        heavy = item.get_closest_marker("cpu_heavy")
        return heavy is None, -float(heavy.kwargs.get("seconds", 10)) if heavy else 0.0

    items.sort(key=order)


def _browser_tests_apart(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Playwright's sync API switches greenlets, which leaves CPython 3.11's recursion
    counter off: every module compiled afterwards in the same process fails ("AST
    constructor recursion depth mismatch"), so tests after them and pytest's own end of
    session break. In a session with other tests they are left out, loudly; ``make test``
    runs them in a second session (``pytest -p no:schemathesis tests/browser``)."""
    browser = [item for item in items if item.get_closest_marker("browser")]
    if browser and len(browser) < len(items):
        items[:] = [item for item in items if not item.get_closest_marker("browser")]
        config.hook.pytest_deselected(items=browser)
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"{len(browser)} browser tests left for a session of their own: "
                "pytest -p no:schemathesis tests/browser (make test runs it)",
                yellow=True,
            )


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``@pytest.mark.stores("memory", ...)`` (on a test or its module, the test's own
    first) narrows the stores that ``any_dsn`` runs it on. The HTTP suites run on the
    memory store with one smoke test per suite on every store: what they test lies above
    the store, which the store suites cover."""
    marker = metafunc.definition.get_closest_marker("stores")
    if marker is not None and "any_dsn" in metafunc.fixturenames:
        kinds = list(marker.args)
        assert set(kinds) <= set(STORE_KINDS), kinds
        # As a mark, which pytest lets take the place of the fixture's own params.
        metafunc.definition.add_marker(
            pytest.mark.parametrize("any_dsn", kinds, indirect=True, ids=kinds)
        )


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
