"""Rows of the SQL stores made into domain values, where PostgreSQL and SQLite read the same
columns; each store passes in how its own types are read (SQLite keeps times as epoch
seconds and arrays as JSON text)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from async_jobs.domain.jobs import Job, dispatch_order
from async_jobs.domain.rollup import ALL_TENANTS, RollupRow, merge
from async_jobs.domain.scheduling import JobGauges
from async_jobs.domain.workers import LiveProcess, ProcessInfo, ProcessKind


class Row(Protocol):
    """A result row read by column name (``asyncpg.Record``, ``sqlite3.Row``)."""

    def __getitem__(self, key: str, /) -> Any: ...


R = TypeVar("R")


def claimed(rows: Iterable[R], job: Callable[[R], Job]) -> list[Job]:
    """Claimed rows as jobs, in the order a worker starts them (``dispatch_order``)."""
    jobs = [job(r) for r in rows]
    jobs.sort(key=dispatch_order)
    return jobs


def _as_is(value: Any) -> Any:
    return value


def live_process(
    r: Row, use_cases: Iterable[str], when: Callable[[Any], datetime] = _as_is
) -> LiveProcess:
    """A row of the query ``list_processes``; ``use_cases`` decoded by the caller, ``when``
    makes a time of a stored one."""
    return LiveProcess(
        ProcessInfo(
            r["id"],
            ProcessKind(r["kind"]),
            r["host"],
            r["pid"],
            r["version"],
            r["concurrency"],
            tuple(use_cases),
        ),
        started_at=when(r["started_at"]),
        heartbeat_at=when(r["heartbeat_at"]),
        expires_at=when(r["expires_at"]),
        jobs_held=r["jobs_held"],
    )


def job_gauges(rows: Sequence[Row], oldest_due: Callable[[Row], float | None]) -> JobGauges:
    """The rows of the query ``job_gauges``: (state, use case, n); ``oldest_due`` reads the
    age in seconds of a pending row's oldest due job (None: none is due)."""
    return JobGauges(
        counts={(str(r["state"]), r["use_case"]): int(r["n"]) for r in rows},
        oldest_due_seconds={
            r["use_case"]: max(oldest_due(r) or 0.0, 0.0) for r in rows if r["state"] == "pending"
        },
    )


def rollup_rows(
    rows: Iterable[Row],
    tenant_id: str | None,
    when: Callable[[Any], datetime] = _as_is,
    histogram: Callable[[Any], Mapping[int, int]] = _as_is,
) -> list[RollupRow]:
    """The rows of the query ``read_rollup``, of ``tenant_id`` (None: ``ALL_TENANTS``);
    ``when`` makes a time of a stored minute, ``histogram`` a mapping of a stored histogram
    (its keys made ints by ``merge``)."""
    return [
        RollupRow(
            minute=when(r["minute"]),
            use_case=r["use_case"],
            tenant_id=tenant_id or ALL_TENANTS,
            succeeded=r["succeeded"],
            failed=r["failed"],
            cancelled=r["cancelled"],
            deadline_misses=r["deadline_misses"],
            run_hist=merge([histogram(r["run_hist"])]),
            wait_hist=merge([histogram(r["wait_hist"])]),
        )
        for r in rows
    ]
