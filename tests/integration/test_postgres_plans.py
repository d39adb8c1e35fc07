"""The claim and the newest-first listing use their indexes, never a walk of the jobs table,
on a table with realistic statistics: 100,000 finished and 10,000 pending jobs, ANALYZEd.

The plans are the ones the statements really run with: each statement is executed as the
store prepares it (the claim is a PL/pgSQL function, whose inner statements only
auto_explain can show), several times, so that both the first (custom) plans and the
generic plan PostgreSQL switches to later are seen.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from async_jobs.domain.jobs import JobFilter
from async_jobs.stores.postgres.store import QUERIES, PostgresStore

FINISHED, PENDING, TENANTS = 100_000, 10_000, 50
RUNS = 7  # asyncpg prepares once; PostgreSQL may plan generically from the sixth run on

FILL = f"""
INSERT INTO async_jobs (id, tenant_id, use_case, type, status, attempts, max_attempts,
                        run_at, delay_tolerance_seconds, deadline_at, created_at,
                        started_at, finished_at)
SELECT gen_random_uuid(), 't' || (i % {TENANTS}), 'default', 'echo',
       CASE WHEN i <= {FINISHED} THEN 'succeeded' ELSE 'pending' END::async_jobs_state,
       CASE WHEN i <= {FINISHED} THEN 1 ELSE 0 END, 3,
       now() - make_interval(secs => {FINISHED + PENDING} - i), 300,
       now() - make_interval(secs => {FINISHED + PENDING} - i - 300),
       now() - make_interval(secs => {FINISHED + PENDING} - i),
       CASE WHEN i <= {FINISHED} THEN now() - make_interval(secs => {FINISHED} - i) END,
       CASE WHEN i <= {FINISHED} THEN now() - make_interval(secs => {FINISHED} - i) END
FROM generate_series(1, {FINISHED + PENDING}) AS i
"""


@pytest.fixture
async def explained(pg_database: str) -> AsyncIterator[tuple[asyncpg.Connection, list[str]]]:
    """A connection to a filled, ANALYZEd table whose every statement, nested ones too,
    sends its plan, as run, back as a LOG message (collected in the list)."""
    conn = await asyncpg.connect(pg_database)
    plans: list[str] = []
    try:
        await conn.execute(FILL)
        await _log_plans(conn, plans)
        yield conn, plans
    finally:
        await conn.close()


async def _log_plans(conn: asyncpg.Connection, plans: list[str], analyze: bool = True) -> None:
    """ANALYZE the table (unless told not to), then have every statement, nested ones too,
    send its plan, as run, back as a LOG message, collected in plans."""
    if analyze:
        await conn.execute("ANALYZE async_jobs")
    await conn.execute("LOAD 'auto_explain'")
    await conn.execute(
        "SET auto_explain.log_min_duration = 0;"
        "SET auto_explain.log_analyze = on;"
        "SET auto_explain.log_timing = off;"
        "SET auto_explain.log_nested_statements = on;"
        "SET client_min_messages = log"
    )
    conn.add_log_listener(lambda _c, message: plans.append(str(message.message)))


def _scans(plans: list[str]) -> list[str]:
    """Every scan node on the jobs table itself in the plans ("Index Scan using
    async_jobs_ready on async_jobs j  (cost..."), never those on its side tables."""
    return [
        line.strip()
        for plan in plans
        for line in plan.splitlines()
        if re.search(r"Scan\b.* on async_jobs(?:\s+\w+)?\s+\(", line)
    ]


def _claim_args(limit: int) -> tuple[Any, ...]:
    return (limit, [], [], "w1", 30.0, None, [], [], [], [], [], [], False)


async def test_the_claim_walks_the_ready_index_only(
    explained: tuple[asyncpg.Connection, list[str]],
) -> None:
    conn, plans = explained
    scans = await _explain(conn, plans, QUERIES["claim_jobs"], *_claim_args(50))
    assert not [s for s in scans if "Seq Scan" in s], scans
    assert any("async_jobs_ready" in s for s in scans), scans
    # Uncapped and without quotas: the slots held by running jobs are never counted (the
    # count is in the plan, behind a filter that is false).
    counted = [s for s in scans if "async_jobs_active" in s and "never executed" not in s]
    assert not counted, scans


async def test_a_capped_claim_counts_from_the_active_index(
    explained: tuple[asyncpg.Connection, list[str]],
) -> None:
    conn, plans = explained
    args = list(_claim_args(50))
    args[5] = 1000  # p_default_max: every use case capped
    scans = await _explain(conn, plans, QUERIES["claim_jobs"], *args)
    assert not [s for s in scans if "Seq Scan" in s], scans
    assert any("async_jobs_ready" in s for s in scans), scans
    assert any("async_jobs_active" in s and "never executed" not in s for s in scans), scans


@pytest.mark.parametrize("tenant", [None, "t7"])
async def test_the_newest_first_listing_walks_its_index(
    explained: tuple[asyncpg.Connection, list[str]], tenant: str | None
) -> None:
    conn, plans = explained
    args = (tenant, None, None, None, None, None, None, None, 51, None)
    scans = await _explain(conn, plans, QUERIES["list_jobs"], *args)
    assert not [s for s in scans if "Seq Scan" in s], scans
    index = "async_jobs_pkey" if tenant is None else "async_jobs_tenant_ids"
    assert all(f"Index Scan Backward using {index} " in s for s in scans), scans


@pytest.mark.parametrize("tenant", [None, "t7"])
async def test_a_listing_by_priority_walks_the_same_index(
    explained: tuple[asyncpg.Connection, list[str]], tenant: str | None
) -> None:
    """The priority filter is checked on the rows the newest-first walk meets (no index of
    its own: every enqueue would pay for it)."""
    conn, plans = explained
    args = (tenant, None, None, None, None, None, None, None, 51, "medium")
    scans = await _explain(conn, plans, QUERIES["list_jobs"], *args)
    assert not [s for s in scans if "Seq Scan" in s], scans
    index = "async_jobs_pkey" if tenant is None else "async_jobs_tenant_ids"
    assert all(f"Index Scan Backward using {index} " in s for s in scans), scans


async def test_a_listing_of_waiting_jobs_walks_the_newest_first_index(
    explained: tuple[asyncpg.Connection, list[str]],
) -> None:
    """Waiting jobs have no listing index of their own (0014: every enqueue and claim would
    pay for it): their listing walks the primary key (0018), where they are the newest
    rows."""
    conn, plans = explained
    args = (None, "pending", None, None, None, None, None, None, 51, None)
    scans = await _explain(conn, plans, QUERIES["list_jobs"], *args)
    assert not [s for s in scans if "Seq Scan" in s], scans
    assert all("async_jobs_pkey" in s for s in scans), scans


async def test_the_dispatch_window_counts_queued_jobs_from_a_partial_index(
    explained: tuple[asyncpg.Connection, list[str]],
) -> None:
    conn, plans = explained
    # 2,000 of the pending jobs dispatched (in two use cases), as full windows leave them.
    await conn.execute(
        """UPDATE async_jobs SET status = 'queued', dispatch_id = gen_random_uuid(),
               dispatch_expires_at = now() + interval '60 seconds',
               use_case = CASE WHEN random() < 0.5 THEN 'default' ELSE 'mail' END
           WHERE id IN (SELECT id FROM async_jobs WHERE status = 'pending' LIMIT 2000)"""
    )
    await conn.execute("ANALYZE async_jobs")
    scans = await _explain(conn, plans, QUERIES["count_queued"], ["default", "mail", "x"], 1000)
    assert not [s for s in scans if "Seq Scan" in s], scans
    assert all("async_jobs_dispatched" in s or "async_jobs_active" in s for s in scans), scans


@pytest.mark.parametrize(
    ("tenant", "status", "index"),
    [
        (None, None, "async_jobs_pkey"),
        ("t7", None, "async_jobs_tenant_ids"),
        ("t7", "failed", "async_jobs_tenant_ids"),
        (None, "failed", "async_jobs_failed_ids"),
    ],
)
async def test_a_bounded_scan_reads_one_index_and_no_more_than_its_budget(
    explained: tuple[asyncpg.Connection, list[str]],
    tenant: str | None,
    status: str | None,
    index: str,
) -> None:
    """A type no job has: the walk reads its budget (2,000 rows) of the index for the filter,
    in order, and stops. A budget that near a tenant's 2,200 jobs has the planner, left to
    itself, read all of them by a bitmap scan and sort them (scan_walk_only forbids it)."""
    conn, plans = explained
    budget = 2000
    ended = tenant is None and status is not None
    args = (tenant, status, None, "none", None, None, None, None, budget, 51, None, ended)
    scans = await _explain(
        conn, plans, QUERIES["scan_jobs"], *args, setup=QUERIES["scan_walk_only"]
    )
    # Every listing index is ascending (0023): newest first, it is walked backward.
    walk = re.compile(rf"Index Scan Backward using {index} ")
    assert scans and all(walk.search(s) for s in scans), scans
    read = [int(n) for s in scans for n in re.findall(r"actual rows=(\d+)", s)]
    assert read and max(read) <= budget + 1, scans


async def test_a_capped_count_keeps_its_own_plan_after_costly_counts(
    explained: tuple[asyncpg.Connection, list[str]],
) -> None:
    """A prepared statement that has run five times may be planned once for any parameters:
    count_jobs, after a few counts by a priority no job has (the whole table read), then
    counted a tenant's waiting jobs by the same sequential scan. custom_plans keeps each count
    on a plan of its own."""
    conn, plans = explained
    statement = await conn.prepare(QUERIES["count_jobs"])
    async with conn.transaction():
        await conn.execute(QUERIES["custom_plans"])
        for _ in range(RUNS):
            await statement.fetchval(None, None, None, None, None, None, 1001, "low")
        assert await statement.fetchval("t7", "pending", None, None, None, None, 10_001, None)
    # A plan is logged when its portal closes (at the next statement, or the commit), and
    # the log listener is called soon after.
    await asyncio.sleep(0)  # wait-ok: lets the listener's callbacks run
    scans = _scans(plans[-1:])  # the last count's
    assert scans and not [s for s in scans if "Seq Scan" in s], scans


async def _explain(
    conn: asyncpg.Connection, plans: list[str], query: str, *args: Any, setup: str = ""
) -> list[str]:
    """The scans on async_jobs of RUNS runs of the prepared statement, all rolled back;
    ``setup`` runs first in the same transaction."""
    plans.clear()
    statement = await conn.prepare(query)
    transaction = conn.transaction()
    await transaction.start()
    try:
        if setup:
            await conn.execute(setup)
        for _ in range(RUNS):
            await statement.fetch(*args)
    finally:
        await transaction.rollback()
    assert plans, "auto_explain logged no plan"
    return _scans(plans)


# A backlog of jobs that are not due, over many tenants, and due jobs in one tenant. $4: the
# backlog is marked delayed, as an enqueue with a delay marks it (0015).
BACKLOG, BACKLOG_TENANTS = 20_000, 200
BACKLOG_FILL = """
INSERT INTO async_jobs (id, tenant_id, use_case, type, status, attempts, max_attempts,
                        run_at, delay_tolerance_seconds, deadline_at, created_at, delayed)
SELECT gen_random_uuid(), CASE WHEN i <= $1::int THEN 'due' ELSE 'b' || (i % $2::int) END,
       'default', 'echo', 'pending', 0, 3, r, 60, r + interval '60 seconds', now(),
       $4::bool AND i > $1::int
FROM generate_series(1, $1::int + $3::int) AS i,
     LATERAL (SELECT CASE WHEN i <= $1::int THEN now() - interval '1 minute'
                          ELSE now() + interval '1 day' + make_interval(secs => i) END) AS t(r)
"""


@pytest.mark.parametrize(
    ("due", "groups_from"),
    [
        (30, "async_jobs_due"),  # no more than a claim takes: their tenants
        (50 * (RUNS + 1), "async_jobs_ready"),  # more: a walk of the groups
    ],
)
async def test_the_claim_reads_no_job_that_is_not_due(
    pg_database: str, due: int, groups_from: str
) -> None:
    """The jobs of tenants whose jobs are all in the future are never read: with few due
    jobs, the groups are the tenants of the due jobs (a range of async_jobs_due) and
    the other tenants are never visited; with many, a walk of async_jobs_ready, which holds no
    delayed row, visits the due tenant only."""
    conn = await asyncpg.connect(pg_database)
    plans: list[str] = []
    try:
        await conn.execute(BACKLOG_FILL, due, BACKLOG_TENANTS, BACKLOG, True)
        await conn.execute("ANALYZE async_jobs")  # a generic plan on the real statistics
        await _log_plans(conn, plans)
        scans = await _explain(conn, plans, QUERIES["claim_jobs"], *_claim_args(50))
    finally:
        await conn.close()
    executed = _executed_without_backlog(scans)
    walk = _walk(executed)
    if groups_from == "async_jobs_due":  # the tenants with no due job: never visited
        assert any(groups_from in s for s in executed), scans
        assert not walk, scans
    else:
        assert walk, scans
    # The walk: the first probe and one more per tenant it finds, the due one only (two rows
    # per claim: its start and its step), never one of the 200 tenants of the backlog.
    for scan in walk:
        rows, loops = _rows(scan)
        assert rows * loops <= 1, scan


def _walk(scans: list[str]) -> list[str]:
    """The scans of the drain's walk of tenants: async_jobs_ready read by anything but the
    choice of jobs (whose table is named j)."""
    return [s for s in scans if "async_jobs_ready" in s and "on async_jobs j " not in s]


def _executed_without_backlog(scans: list[str]) -> list[str]:
    """The scans that ran, after checking that none was sequential and that the choice read
    async_jobs_ready once per claim (the due tenant's group): never a row of the backlog."""
    assert not [s for s in scans if "Seq Scan" in s], scans
    executed = [s for s in scans if "never executed" not in s]
    # The marked rows are read in run_at order on async_jobs_due, for the unmarking alone;
    # a first version of 0022 walked them all on async_jobs_marked, every claim.
    assert not [s for s in executed if "async_jobs_marked" in s], scans
    chosen = [s for s in executed if "async_jobs_ready" in s and "on async_jobs j " in s]
    assert chosen, scans
    for scan in chosen:
        assert _rows(scan)[1] == 1, scan
    return executed


async def test_a_tenants_pending_jobs_are_counted_on_its_own_ranges(pg_database: str) -> None:
    """A tenant's pending jobs in a use case (the enqueue's max_pending check, the
    dashboard's Tenants page) are two ranges of its own: the unmarked rows on
    async_jobs_ready, the marked ones on async_jobs_marked, never another tenant's entries;
    the oldest due job is one probe of each part of async_jobs_due (0022)."""
    conn = await asyncpg.connect(pg_database)
    plans: list[str] = []
    try:
        await conn.execute(BACKLOG_FILL, 5_000, BACKLOG_TENANTS, BACKLOG, True)
        await conn.execute("ANALYZE async_jobs")
        await _log_plans(conn, plans)
        per_tenant = BACKLOG // BACKLOG_TENANTS
        assert await conn.fetchval(QUERIES["count_waiting"], "b7", "default", []) == per_tenant
        await _explain(conn, plans, QUERIES["count_waiting"], "b7", "default", [])
        waiting = _index_reads(plans)
        args = ("b7", "pending", "default", None, None, None, 10_001, None)
        await _explain(conn, plans, QUERIES["count_jobs"], *args, setup=QUERIES["custom_plans"])
        counted = _index_reads(plans)
        await _explain(
            conn, plans, QUERIES["count_jobs"], "b7", "failed", *args[2:],
            setup=QUERIES["custom_plans"],
        )  # fmt: skip
        failed = _index_reads(plans)
        oldest = await _explain(conn, plans, QUERIES["oldest_due"], None)
    finally:
        await conn.close()
    for reads in (waiting, counted):
        ran = [s for s in reads if "never executed" not in s]
        # Each range holds the tenant's rows only: 100 marked, none unmarked; nothing read
        # on the use case's index of every pending row.
        assert {_rows(s)[0] for s in ran if "async_jobs_marked " in s} == {per_tenant}, reads
        assert {_rows(s)[0] for s in ran if "async_jobs_ready " in s} == {0}, reads
        assert not [s for s in ran if "async_jobs_due " in s], reads
    # Another state: the marked rows' part is planned away.
    assert not [s for s in failed if "async_jobs_marked " in s and "never executed" not in s]
    # The oldest due job: the use cases' skip scan and one probe per part, a row each at most.
    assert oldest and all("async_jobs_due " in s for s in oldest), oldest
    assert all(_rows(s)[0] <= 1 for s in oldest), oldest


def _index_reads(plans: list[str]) -> list[str]:
    """Every node of the plans that reads an index of the jobs table, bitmap scans too
    ("Bitmap Index Scan on async_jobs_marked  (cost..."), with its actual rows."""
    return [
        line.strip()
        for plan in plans
        for line in plan.splitlines()
        if re.search(r"(?:Scan using|Bitmap Index Scan on) async_jobs_\w+\s", line)
    ]


def _rows(scan: str) -> tuple[int, int]:
    """The rows a scan node returned per loop and its loops ("actual rows=N loops=M")."""
    found = re.search(r"actual rows=(\d+) loops=(\d+)", scan)
    assert found, scan
    return int(found.group(1)), int(found.group(2))


async def test_a_backlog_written_before_0015_is_marked_in_batches_then_never_walked(
    pg_database: str,
) -> None:
    """Rows of the future written unmarked (a table migrated to 0015, before its backfill)
    do not keep the due jobs from being claimed, though the walk reads them;
    async_jobs_mark_delayed marks them in batches that each commit, and the walk no longer
    reads them."""
    conn = await asyncpg.connect(pg_database)
    plans: list[str] = []
    due = 50 * (RUNS + 1)
    try:
        await conn.execute(BACKLOG_FILL, due, BACKLOG_TENANTS, BACKLOG, False)
        await conn.execute("ANALYZE async_jobs")
        await _log_plans(conn, plans)
        before = _executed_without_backlog(
            await _explain(conn, plans, QUERIES["claim_jobs"], *_claim_args(50))
        )
        pages_before, claimed = await _ready_pages(conn)
        await conn.execute("CALL async_jobs_mark_delayed(3000)")
        marked = await conn.fetchval("SELECT count(*) FROM async_jobs WHERE delayed")
        # The marked rows' old entries stay in async_jobs_ready until a vacuum, as after any
        # update of an indexed column; autovacuum comes after a batch of this size.
        await conn.execute("VACUUM async_jobs")
        after = _executed_without_backlog(
            await _explain(conn, plans, QUERIES["claim_jobs"], *_claim_args(50))
        )
        pages_after, _ = await _ready_pages(conn)
    finally:
        await conn.close()
    assert marked == BACKLOG
    assert claimed == 50  # all of them due jobs (the choice reads run_at <= now())
    assert _walk(before) and _walk(after)
    # Before: the walk reads the backlog's unmarked entries (20,000, over a hundred pages) on
    # its way to the tenants' due rows; after the backfill and a vacuum: a few pages, however
    # large the backlog.
    assert pages_before > 50, pages_before
    assert pages_after <= 10, pages_after


async def _ready_pages(conn: asyncpg.Connection) -> tuple[int, int]:
    """The pages of async_jobs_ready one claim of 50 reads (in a transaction rolled back),
    and how many due jobs it claimed."""
    pages = "SELECT pg_stat_get_xact_blocks_fetched('async_jobs_ready'::regclass)"
    transaction = conn.transaction()
    await transaction.start()
    try:
        start = await conn.fetchval(pages)
        rows = await conn.fetch(QUERIES["claim_jobs"], *_claim_args(50))
        end = await conn.fetchval(pages)
    finally:
        await transaction.rollback()
    return end - start, sum(1 for r in rows if r["tenant_id"] == "due")


async def test_the_claim_updates_its_rows_by_primary_key_on_stale_statistics(
    pg_database: str,
) -> None:
    """The claim's two updates (the unmarking of due delayed rows, and the claim itself) name
    rows it has already locked, by id. Statistics taken before a backfill marked the backlog
    said that async_jobs_delayed (0015) was empty: an update whose guard matched that
    index's predicate was planned as a walk of the whole index, filtering by id (100-200 ms
    per claim while a million rows were being marked). Each must find its rows through the
    primary key, whatever the statistics say."""
    conn = await asyncpg.connect(pg_database)
    plans: list[str] = []
    try:
        await conn.execute(BACKLOG_FILL, 30, BACKLOG_TENANTS, BACKLOG, False)
        await conn.execute("VACUUM (ANALYZE) async_jobs")  # nothing marked yet
        await _log_plans(conn, plans, analyze=False)
        await conn.execute("CALL async_jobs_mark_delayed(5000)")  # the backfill, unanalyzed
        backfill = _scans(plans)
        # Due marked rows, as a claim finds them once their time has come.
        await conn.execute(
            "UPDATE async_jobs SET run_at = now() - interval '1 second'"
            " WHERE id IN (SELECT id FROM async_jobs WHERE delayed LIMIT 20)"
        )
        await _explain(conn, plans, QUERIES["claim_jobs"], *_claim_args(50))
    finally:
        await conn.close()
    # The backfill's batches walk async_jobs_ready from its first unmarked row; the
    # statistics, which say nearly every row is pending and unmarked, would have it read the
    # table from its start for every batch.
    reads = [s for s in backfill if "Update on" not in s and "pkey" not in s]
    assert reads and all("async_jobs_ready" in s for s in reads), backfill
    targets = [t for plan in plans for t in _update_targets(plan)]
    assert len(targets) >= 2, plans  # the unmarking and the claim
    assert all("using async_jobs_pkey" in t for t in targets), targets


def _update_targets(plan: str) -> list[str]:
    """The node under each "Update on async_jobs" of a plan: how it finds the rows it
    updates (its InitPlans, indented further, are skipped)."""
    lines = plan.splitlines()
    found = []
    for at, line in enumerate(lines):
        update = re.search(r"Update on async_jobs\b(?! *_)", line)
        if update is None:
            continue
        child = update.start() + 2
        for below in lines[at + 1 :]:
            indent = len(below) - len(below.lstrip())
            if indent < child:
                break
            if indent == child and below.lstrip().startswith("->"):
                found.append(below.strip())
                break
    return found


DUE_JOB = """
INSERT INTO async_jobs (id, tenant_id, use_case, type, max_attempts, run_at,
                        delay_tolerance_seconds, deadline_at)
VALUES (gen_random_uuid(), 'default', 'default', 'echo', 3, now(), 60, now() + interval '1 min')
"""


async def test_a_session_that_first_claimed_on_an_empty_table_never_scans_it_later(
    pg_database: str,
) -> None:
    """A session plans the claim's statements once and keeps the plans until something, such
    as an ANALYZE, makes it plan again. Planned on an empty table, the two updates by id
    were sequential scans, then run on every claim of a worker however big the table grew
    (a drain 17x slower beside 300,000 rows, 0019). Every read of the jobs table must stay
    on an index."""
    conn = await asyncpg.connect(pg_database)
    plans: list[str] = []
    try:
        await conn.execute(DUE_JOB)
        await conn.fetch(QUERIES["claim_jobs"], *_claim_args(50))  # planned on the empty table
        await conn.execute(FILL)  # and no ANALYZE since
        await _log_plans(conn, plans, analyze=False)
        scans = await _explain(conn, plans, QUERIES["claim_jobs"], *_claim_args(50))
    finally:
        await conn.close()
    assert not [s for s in scans if "Seq Scan" in s], scans
    targets = [t for plan in plans for t in _update_targets(plan)]
    assert len(targets) >= 2, plans  # the unmarking and the claim
    assert all("using async_jobs_pkey" in t for t in targets), targets


async def test_a_session_that_wrote_outcomes_on_a_small_table_never_scans_it_later(
    pg_database: str,
) -> None:
    """The same for a worker's outcome and lease writes, prepared statements that PostgreSQL
    makes generic from their sixth run: made on a small table, their generic plans were
    sequential scans (an outcome write 0.9 ms, then 49 ms beside 220,000 more rows, 0020)."""
    conn = await asyncpg.connect(pg_database)
    plans: list[str] = []
    record = await conn.prepare(QUERIES["record_outcomes"])
    extend = await conn.prepare(QUERIES["extend_leases"])

    async def a_round() -> None:
        """Five jobs claimed, their leases renewed and their outcomes written."""
        for _ in range(5):
            await conn.execute(DUE_JOB)
        held = await conn.fetch(QUERIES["claim_jobs"], *_claim_args(5))
        ids, attempts, tokens = (
            [r[key] for r in held] for key in ("id", "attempts", "lease_token")
        )
        assert len(ids) == 5
        assert len(await extend.fetch(ids, attempts, tokens, 30.0)) == 5
        outcomes = (["succeeded"] * 5, [None] * 5, [None] * 5, [None] * 5)
        assert len(await record.fetch(ids, attempts, tokens, *outcomes, 20, 2000)) == 5

    try:
        for _ in range(RUNS):  # generic from here on, made on a small table
            await a_round()
        await conn.execute(FILL)  # and no ANALYZE since
        await _log_plans(conn, plans, analyze=False)
        await a_round()
    finally:
        await conn.close()
    writes = [p for p in plans if "j.lease_token = u.token" in p]  # the lease fence's
    assert len(writes) >= 2, plans  # the lease renewal and the outcome write
    scans = _scans(writes)
    assert not [s for s in scans if "Seq Scan" in s], scans
    assert all("Index Scan using async_jobs_pkey on async_jobs j" in p for p in writes), writes


async def test_a_listing_first_run_on_a_small_table_walks_its_index_later(
    pg_database: str,
) -> None:
    """A long-lived session (an API server's, a dashboard's) lists jobs over and over. Made
    generic on a table of twenty jobs, the newest-first listing was a sequential scan and a
    sort of the whole table, kept once the table had grown (82 ms against 1.1 ms for a new
    session beside 220,000 jobs). Each listing is planned for its own parameters."""
    store = PostgresStore(pg_database)
    await store.open()
    conn = await asyncpg.connect(pg_database)
    plans: list[str] = []
    try:
        for _ in range(20):
            await conn.execute(DUE_JOB)
        for _ in range(RUNS + 1):
            await store.list_jobs(JobFilter(), 50)
        await conn.execute(FILL)  # and no ANALYZE since
        async with store._connection() as kept:  # the connection the listings ran on
            await _log_plans(kept, plans, analyze=False)
        page = await store.list_jobs(JobFilter(), 50)
    finally:
        await conn.close()
        await store.close()
    assert len(page.items) == 50
    scans = _scans(plans)
    assert scans and not [s for s in scans if "Seq Scan" in s], plans


# Jobs that ended over the last ten minutes, over many tenants: the rollup's groups are
# nearly one job each.
ENDED_FILL = """
INSERT INTO async_jobs (id, tenant_id, use_case, type, status, attempts, max_attempts,
                        run_at, delay_tolerance_seconds, deadline_at, created_at,
                        started_at, finished_at)
SELECT gen_random_uuid(), 't' || (i % 2000), 'default', 'echo', 'succeeded', 1, 3,
       e - interval '2 seconds', 60, e + interval '1 minute', e - interval '2 seconds',
       e - interval '1 second', e
FROM generate_series(1, 4000) AS i,
     LATERAL (SELECT now() - make_interval(secs => i * 600.0 / 4000)) AS t(e)
"""


async def test_the_rollup_joins_its_groups_on_every_column_and_skips_unchanged_rows(
    pg_database: str,
) -> None:
    """The rollup's counts and histograms are joined on minute, use case and tenant. Merge
    joins matched on the first two only and filtered the tenants pair by pair: 779,090 pairs
    for 7,913 rows beside 10,000 tenants (0.37 s at each new leader's start). The planner
    chose them on a table of 11 million rows; on this one it hash-joins either way, so here
    the plan's shape is checked as it is, and the settings that keep it so at any size are
    the rollup transaction's (roll_up_plan). A second run over the same minutes writes
    nothing (before: every row again)."""
    conn = await asyncpg.connect(pg_database)
    store = PostgresStore(pg_database)
    await store.open()
    plans: list[str] = []
    try:
        await conn.execute(FILL)  # history, outside the rolled-up minutes
        await conn.execute(ENDED_FILL)
        async with store._connection() as kept:  # the connection the rollup runs on
            await _log_plans(kept, plans)
        written = await store.roll_up_finished(900)
        again = await store.roll_up_finished(900)
    finally:
        await conn.close()
        await store.close()
    assert written > 2000  # a row per tenant and minute, and one per minute for all
    assert again == 0
    rollups = [p for p in plans if "Insert on async_jobs_rollup" in p]
    assert rollups, plans
    joins = [line.strip() for p in rollups for line in p.splitlines() if "Join" in line]
    assert joins and not [j for j in joins if "Merge" in j], joins
    assert "Rows Removed by Join Filter" not in rollups[0], rollups[0]
