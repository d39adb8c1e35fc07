"""``JobStore.scan_jobs`` on every store: a listing that reads at most a budget of jobs,
says where it stopped, and finds every match once when it is continued from there."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from async_jobs.domain.jobs import (
    Job,
    JobFilter,
    JobScan,
    JobState,
    PageCursor,
    ScanRequest,
    listing_key,
)
from async_jobs.ports import JobStore
from tests.helpers import new_job, wait_until


def key(job: Job) -> PageCursor:
    return PageCursor(job.created_at, job.id)


async def insert(store: JobStore, n: int, **kw: object) -> list[Job]:
    """``n`` jobs, one insert each, newest first (the order of listings)."""
    jobs = [(await store.insert_job(new_job(**kw)))[0] for _ in range(n)]  # type: ignore[arg-type]
    return sorted(jobs, key=listing_key, reverse=True)


async def scanned(
    store: JobStore, where: JobFilter, limit: int, budget: int, **kw: object
) -> JobScan:
    request = ScanRequest(where=where, limit=limit, budget=budget, **kw)  # type: ignore[arg-type]
    return await store.scan_jobs(request)


async def every_match(
    store: JobStore, where: JobFilter, limit: int, budget: int
) -> tuple[list[Job], int]:
    """The items of a scan continued from each next_cursor until the end; how many scans."""
    found: list[Job] = []
    scan = await scanned(store, where, limit, budget)
    scans = 1
    found += scan.items
    while scan.next_cursor is not None:
        scan = await scanned(store, where, limit, budget, after=scan.next_cursor)
        scans += 1
        found += scan.items
    return found, scans


async def test_a_filter_that_matches_nothing_reads_the_budget_and_says_where_it_stopped(
    store: JobStore,
) -> None:
    newest_first = await insert(store, 10, job_type="common")
    scan = await scanned(store, JobFilter(type="rare"), 5, budget=4)
    assert scan == JobScan([], 0, key(newest_first[3]), key(newest_first[3]))
    scan = await scanned(store, JobFilter(type="rare"), 5, 4, after=scan.next_cursor)
    assert scan.searched_to == key(newest_first[7])
    scan = await scanned(store, JobFilter(type="rare"), 5, 4, after=scan.next_cursor)
    assert scan == JobScan([], 0, None, None)  # two jobs were left: the walk reached the end


async def test_continued_scans_find_every_match_once_in_order(store: JobStore) -> None:
    for n in range(12):
        tenant = "t1" if n % 3 else "t2"
        await store.insert_job(new_job("even" if n % 2 == 0 else "odd", tenant_id=tenant))
    for cancelled in (await store.list_jobs(JobFilter(type="odd"), 100)).items[::2]:
        await store.cancel_job(cancelled.id)
    for where in (
        JobFilter(),
        JobFilter(type="odd"),
        JobFilter(tenant_id="t1", type="even"),
        JobFilter(status=JobState.CANCELLED),
        JobFilter(tenant_id="t2", status=JobState.CANCELLED),
        JobFilter(type="none"),
    ):
        listed = (await store.list_jobs(where, 100)).items
        for limit, budget in ((2, 3), (1, 1), (5, 100)):
            found, scans = await every_match(store, where, limit, budget)
            assert [j.id for j in found] == [j.id for j in listed], (where, limit, budget)
            assert scans <= len(listed) + 12 // budget + 1


async def test_a_tenants_scan_reads_that_tenants_jobs_only(store: JobStore) -> None:
    mine = await insert(store, 2, tenant_id="t1")
    await insert(store, 6, tenant_id="t2")  # newer: a walk of every job would meet them first
    scan = await scanned(store, JobFilter(tenant_id="t1"), 10, budget=2)
    assert [j.id for j in scan.items] == [j.id for j in mine]


async def test_a_scan_counts_matches_up_to_count_to_within_its_budget(store: JobStore) -> None:
    jobs = await insert(store, 10, job_type="a")
    scan = await scanned(store, JobFilter(type="a"), 3, budget=100, count_to=6)
    assert [j.id for j in scan.items] == [j.id for j in jobs[:3]]
    assert (scan.matched, scan.next_cursor, scan.searched_to) == (6, key(jobs[2]), None)
    scan = await scanned(store, JobFilter(type="a"), 3, budget=100, count_to=50)
    assert (scan.matched, scan.next_cursor, scan.searched_to) == (10, key(jobs[2]), None)
    scan = await scanned(store, JobFilter(type="a"), 3, budget=5, count_to=50)
    assert (scan.matched, scan.next_cursor, scan.searched_to) == (5, key(jobs[2]), key(jobs[4]))
    scan = await scanned(store, JobFilter(type="a"), 8, budget=5)
    assert len(scan.items) == 5 and scan.next_cursor == scan.searched_to == key(jobs[4])


async def test_a_scan_keeps_to_the_created_range(store: JobStore) -> None:
    groups = []
    for _ in range(3):  # created apart (SQLite's clock counts whole milliseconds)
        if groups:
            apart = groups[-1][0].created_at + timedelta(milliseconds=2)
            await wait_until(lambda apart=apart: datetime.now(UTC) > apart)
        groups.append(await insert(store, 3))
    where = JobFilter(
        created_after=groups[0][0].created_at, created_before=groups[2][-1].created_at
    )
    found, _ = await every_match(store, where, 2, 2)
    assert [j.id for j in found] == [j.id for j in groups[1]]
