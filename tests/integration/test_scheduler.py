"""The scheduler through the app: limits that hold under concurrency on real PostgreSQL,
fairness with a large backlog, leadership, periodic ticks, expiry and retention."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from async_jobs import JobApp, WorkerConfig
from async_jobs.api import create_api
from async_jobs.core.context import JobContext
from async_jobs.core.maintenance import Rollup
from async_jobs.core.scheduler import Scheduler, SchedulerConfig
from async_jobs.core.settings import Settings
from async_jobs.domain.errors import InvalidJobError, QuotaExceededError
from async_jobs.domain.jobs import ClaimRequest, JobFilter, JobState
from async_jobs.domain.scheduling import TenantQuota
from async_jobs.ports import JobStore
from async_jobs.stores import store_from_dsn
from tests.helpers import wait_until


def app_on(dsn: str, **settings: Any) -> JobApp:
    return JobApp(settings=Settings(db_dsn=dsn, **settings))


@pytest.fixture
async def pg_app(pg_database: str) -> AsyncIterator[JobApp]:
    jobs = app_on(pg_database)
    async with jobs:
        yield jobs


async def test_max_pending_admits_exactly_one_of_100_parallel_enqueues(pg_database: str) -> None:
    quotas = {"t1": {"mail": TenantQuota(max_pending=5)}}
    jobs = app_on(pg_database, per_tenant_quotas=quotas)
    async with jobs:
        for _ in range(3):
            await jobs.enqueue("echo", tenant_id="t1", use_case="mail")
        keyed = await jobs.enqueue("echo", tenant_id="t1", use_case="mail", idempotency_key="k")
        answers = await asyncio.gather(
            *(jobs.enqueue("echo", tenant_id="t1", use_case="mail") for _ in range(100)),
            return_exceptions=True,
        )
        accepted = [a for a in answers if not isinstance(a, BaseException)]
        refused = [a for a in answers if isinstance(a, QuotaExceededError)]
        assert (len(accepted), len(refused)) == (1, 99)
        page = await jobs.list_jobs(JobFilter(tenant_id="t1"), 100)
        assert len(page.items) == 5
        # Other tenants and use cases are not bound by t1's quota.
        await jobs.enqueue("echo", tenant_id="t1", use_case="other")
        await jobs.enqueue("echo", tenant_id="t2", use_case="mail")
        # A repeated idempotency key is the same job, not a new one: never refused.
        again = await jobs.enqueue("echo", tenant_id="t1", use_case="mail", idempotency_key="k")
        assert again.id == keyed.id
        with pytest.raises(QuotaExceededError):
            await jobs.enqueue("echo", tenant_id="t1", use_case="mail", idempotency_key="k2")


async def test_a_use_case_with_max_2_never_runs_more_than_2(pg_database: str) -> None:
    """Three workers of concurrency 5 share a use case capped at 2, while 20 jobs wait."""
    running: list[int] = [0]
    peak: list[int] = [0]

    async def track(ctx: JobContext, payload: dict[str, Any]) -> None:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await asyncio.sleep(0.05)  # wait-ok: the job's own work, holding its slot a while
        running[0] -= 1

    apps = [app_on(pg_database, max_concurrent={"capped": 2}) for _ in range(3)]
    for jobs in apps:
        jobs.job("track", use_case="capped")(track)
    async with apps[0], apps[1], apps[2]:
        await apps[0].enqueue_many([_request("track", use_case="capped") for _ in range(20)])
        workers = [
            jobs.worker(WorkerConfig(concurrency=5, poll_interval_seconds=0.05)) for jobs in apps
        ]
        tasks = [asyncio.create_task(w.run()) for w in workers]

        async def all_done() -> bool:
            page = await apps[0].list_jobs(JobFilter(status=JobState.SUCCEEDED), 100)
            return len(page.items) == 20

        try:
            await wait_until(all_done, timeout=60)
        finally:
            for w in workers:
                w.stop()
            await asyncio.gather(*tasks)
    assert peak[0] == 2


async def test_a_small_tenant_starts_in_the_first_claim_despite_a_100k_backlog(
    pg_database: str,
) -> None:
    conn = await asyncpg.connect(pg_database)
    try:
        await conn.execute(
            """INSERT INTO async_jobs (id, tenant_id, use_case, type, max_attempts, run_at,
                                      delay_tolerance_seconds, deadline_at)
               SELECT gen_random_uuid(), 'big', 'default', 'echo', 3,
                      now() - interval '1 hour', 300, now() - interval '55 minutes'
               FROM generate_series(1, 100000)"""
        )
        await conn.execute("ANALYZE async_jobs")
    finally:
        await conn.close()
    jobs = app_on(pg_database)
    async with jobs:
        small = await jobs.enqueue("echo", tenant_id="small")
        claimed = await jobs.store.claim_jobs(ClaimRequest("w", 5, 30, limits=jobs.limits))
    tenants = sorted(j.tenant_id for j in claimed)
    assert small.id in {j.id for j in claimed}
    assert tenants == ["big", "big", "big", "big", "small"]


async def test_a_paused_use_case_waits_and_the_pause_survives_a_restart(
    any_dsn: str,
) -> None:
    if any_dsn.startswith("memory"):
        pytest.skip("nothing outlives a memory store")
    jobs = JobApp(store=store_from_dsn(any_dsn))
    async with jobs:
        await jobs.migrate()
        await jobs.pause("mail")
        job = await jobs.enqueue("echo", use_case="mail")
    again = JobApp(store=store_from_dsn(any_dsn))  # a new process would see the same
    async with again:
        assert [u.paused for u in await again.use_cases() if u.name == "mail"] == [True]
        assert await again.store.claim_jobs(ClaimRequest("w", 5, 30)) == []
        await again.resume("mail")
        claimed = await again.store.claim_jobs(ClaimRequest("w", 5, 30))
    assert [j.id for j in claimed] == [job.id]


async def test_the_scheduler_expires_a_job_that_could_not_start(pg_app: JobApp) -> None:
    await pg_app.pause("slow")
    job = await pg_app.enqueue(
        "echo", use_case="slow", expires_at=datetime.now(UTC) + timedelta(seconds=0.3)
    )
    scheduler = pg_app.scheduler(SchedulerConfig(interval_seconds=0.05, leader_lease_seconds=1))

    async def expired() -> bool:
        await scheduler.run_once()
        return (await pg_app.get_job(job.id)).status is JobState.CANCELLED

    await wait_until(expired, timeout=10)
    ended = await pg_app.get_job(job.id)
    assert (ended.reason, ended.deadline_missed) == ("expired", False)


async def test_one_scheduler_leads_and_another_takes_over_when_it_stops_renewing(
    pg_app: JobApp,
) -> None:
    config = SchedulerConfig(interval_seconds=0.1, leader_lease_seconds=0.5)
    schedulers = [
        Scheduler(pg_app.store, dataclasses.replace(config, holder=f"s{i}")) for i in range(3)
    ]
    leads = [await s.run_once() for s in schedulers]
    assert leads == [True, False, False]
    assert [await s.run_once() for s in schedulers] == [True, False, False]

    # s0 stops renewing (a frozen or dead process): one of the others takes over.
    async def taken_over() -> bool:
        return any([await s.run_once() for s in schedulers[1:]])

    await wait_until(taken_over, timeout=5)
    assert sum([await s.run_once() for s in schedulers[1:]]) == 1
    assert not await schedulers[0].run_once()  # the old leader must wait now


async def test_three_schedulers_enqueue_each_periodic_tick_once(pg_database: str) -> None:
    """Three schedulers, each with a clock that moves a minute per round, race for the
    same ticks of an every-minute schedule; leadership moves between them too."""
    start = datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)
    apps = [app_on(pg_database) for _ in range(3)]
    for jobs in apps:
        jobs.add_periodic("* * * * *", "echo", name="every-minute", payload={"n": 1})
    async with apps[0], apps[1], apps[2]:
        runners = [jobs.periodic_runner(clock=_stepping_clock(start)) for jobs in apps]
        for _ in range(30):
            await asyncio.gather(*(runner.run_once() for runner in runners))
        page = await apps[0].list_jobs(JobFilter(type="echo"), 1000)
    keys = sorted(job.idempotency_key or "" for job in page.items)
    assert len(keys) == len(set(keys))  # never twice
    # Every minute from 12:00 (fresh within the first-tick grace) to 12:29 ran exactly once.
    assert keys == [f"periodic:every-minute:2026-01-01T12:{m:02d}:00+00:00" for m in range(30)]


async def test_after_downtime_only_the_latest_missed_tick_runs(pg_app: JobApp) -> None:
    pg_app.add_periodic("*/5 * * * *", "echo", name="five")
    now = [datetime(2026, 1, 1, 12, 0, 10, tzinfo=UTC)]
    runner = pg_app.periodic_runner(clock=lambda: now[0])
    assert len(await runner.run_once()) == 1  # 12:00, ten seconds old
    now[0] = datetime(2026, 1, 1, 14, 2, 0, tzinfo=UTC)  # down for two hours
    fresh = pg_app.periodic_runner(clock=lambda: now[0])
    assert [tick.strftime("%H:%M") for _, tick in await fresh.run_once()] == ["14:00"]
    assert await fresh.run_once() == []


async def test_a_paused_periodic_job_lets_its_ticks_pass_until_resumed(pg_app: JobApp) -> None:
    pg_app.add_periodic("* * * * *", "echo", name="minutely")
    now = [datetime(2026, 1, 1, 12, 0, 10, tzinfo=UTC)]
    runner = pg_app.periodic_runner(clock=lambda: now[0])
    await pg_app.pause_periodic("minutely")
    assert await pg_app.store.paused_periodic() == {"minutely"}
    assert await runner.run_once() == []  # 12:00 passes
    now[0] = datetime(2026, 1, 1, 12, 1, 5, tzinfo=UTC)
    assert await runner.run_once() == []  # so does 12:01
    await pg_app.pause_periodic("minutely", paused=False)
    now[0] = datetime(2026, 1, 1, 12, 2, 5, tzinfo=UTC)
    assert [tick.strftime("%H:%M") for _, tick in await runner.run_once()] == ["12:02"]
    assert len((await pg_app.list_jobs(JobFilter(type="echo"), 10)).items) == 1
    with pytest.raises(InvalidJobError):
        await pg_app.pause_periodic("no-such-schedule")


async def test_retention_deletes_only_old_terminal_jobs(pg_app: JobApp) -> None:
    kept_pending = await pg_app.enqueue("echo")
    jobs = [await pg_app.enqueue("echo") for _ in range(6)]
    conn = await asyncpg.connect(pg_app.settings.db_dsn)
    try:
        for job, status, age_hours in zip(
            jobs,
            ["succeeded", "succeeded", "failed", "failed", "cancelled", "running"],
            [25, 1, 169, 25, 25, 500],
            strict=True,
        ):
            await conn.execute(
                """UPDATE async_jobs SET status = $2::async_jobs_state,
                          lease_token = CASE WHEN $2 = 'running' THEN gen_random_uuid() END,
                          finished_at = now() - make_interval(hours => $3)
                   WHERE id = $1""",
                job.id,
                status,
                age_hours,
            )
    finally:
        await conn.close()
    deleted = await pg_app.cleanup()  # the default policy: 24 h, 7 days for failed
    assert deleted == {"succeeded": 1, "cancelled": 1, "failed": 1}
    left = {j.id for j in (await pg_app.list_jobs(JobFilter(), 100)).items}
    assert left == {kept_pending.id, jobs[1].id, jobs[3].id, jobs[5].id}
    assert await pg_app.cleanup(older_than_seconds=0) == {
        "succeeded": 1,
        "cancelled": 0,
        "failed": 1,
    }


async def test_scheduling_over_http(any_dsn: str) -> None:
    quotas = {"t1": {"*": TenantQuota(max_pending=1)}}
    jobs = JobApp(
        settings=Settings(per_tenant_quotas=quotas),
        store=store_from_dsn(any_dsn),
        handler_modules=["async_jobs.demo"],
    )
    app = create_api(jobs, migrate=True)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = await client.post("/jobs", json={"type": "echo", "tenant_id": "t1"})
            assert first.status_code == 201
            assert first.json()["deadline_missed"] is False
            refused = await client.post("/jobs", json={"type": "echo", "tenant_id": "t1"})
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "quota_exceeded"
            assert int(refused.headers["retry-after"]) >= 1

            paused = await client.post("/use-cases/default/pause")
            assert paused.json() == {**paused.json(), "name": "default", "paused": True}
            listed = (await client.get("/use-cases")).json()["items"]
            assert {"name": "default", "paused": True} in [
                {"name": u["name"], "paused": u["paused"]} for u in listed
            ]
            resumed = await client.post("/use-cases/default/resume")
            assert resumed.json()["paused"] is False

            stats = (await client.get("/stats")).json()
            assert {"use_case": "default", "tenant_id": "t1", "status": "pending", "count": 1} in (
                stats["counts"]
            )
            assert set(stats) >= {
                "throughput",
                "run_seconds",
                "queue_wait_seconds",
                "deadline_misses",
                "oldest_due_age_seconds",
            }
            mine = (await client.get("/stats", params={"tenant_id": "nobody"})).json()
            assert mine["counts"] == []

            cleaned = await client.post("/maintenance/cleanup", json={"older_than_hours": 1})
            assert cleaned.status_code == 200
            assert cleaned.json()["deleted"] == 0
            bad = await client.post("/maintenance/cleanup", json={"older_than_hours": -1})
            assert bad.status_code == 422


def _request(job_type: str, **kw: Any) -> Any:
    from async_jobs.app import EnqueueRequest

    return EnqueueRequest(job_type, **kw)


def _stepping_clock(start: datetime) -> Any:
    """A clock that moves one minute forward each time it is read."""
    now = [start - timedelta(minutes=1)]

    def clock() -> datetime:
        now[0] += timedelta(minutes=1)
        return now[0]

    return clock


async def test_a_waiter_is_woken_by_another_process_finishing_the_job(pg_database: str) -> None:
    """The waiting API and the writer share nothing but the database: the waiter hears the
    NOTIFY at once instead of at its next re-read (every 5 s)."""
    waiting_side, writing_side = app_on(pg_database), app_on(pg_database)
    async with waiting_side, writing_side:
        job = await waiting_side.enqueue("echo", delay=3600)
        waiter = asyncio.create_task(waiting_side.wait_for(job.id, timeout=30))
        await wait_until(lambda: len(waiting_side._waiters) > 0)  # it waits now
        await writing_side.cancel(job.id)
        ended = await asyncio.wait_for(waiter, 3)  # well inside the 5 s re-read
    assert ended.status is JobState.CANCELLED


async def test_a_new_leader_rolls_up_from_where_the_last_one_stopped(store: JobStore) -> None:
    """A restart or a deploy: the next leader rolls up the time since the last leader's run
    (and the minute before), not the latest 15 minutes again, and its catch-up goes on from
    where the last one's span begins."""
    calls: list[tuple[float, float]] = []
    real = store.roll_up_finished

    async def recording(from_seconds: float, to_seconds: float = 0.0) -> int:
        calls.append((from_seconds, to_seconds))
        return await real(from_seconds, to_seconds)

    store.roll_up_finished = recording  # type: ignore[method-assign]
    await Rollup(store).run_once()
    assert calls == [(900.0, 0.0)]
    second = Rollup(store)  # another process leads now
    await second.run_once()
    await second.run_once()
    (back, to), latest, (older_from, older_to) = calls[1:]
    assert to == 0.0 and 60.0 <= back < 70.0
    assert latest[1] == 0.0 and latest[0] < 70.0
    # The first span began at the start of the minute 15 minutes before the first run.
    assert 900.0 <= older_to < 975.0 and older_from == pytest.approx(older_to + 900.0, abs=1.0)
