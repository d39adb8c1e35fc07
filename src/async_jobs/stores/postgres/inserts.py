"""Inserting jobs: one at a time, in groups, and in batches of statements written while the
next is drawn (after the first, by ``COPY``); idempotency keys and the max_pending quota
locks."""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from async_jobs.domain.errors import (
    QuotaExceededError,
    StoreError,
)
from async_jobs.domain.jobs import (
    Job,
    NewJob,
)
from async_jobs.domain.validation import check_same_request, json_dumps
from async_jobs.stores.postgres.queries import QUERIES
from async_jobs.stores.postgres.rows import job_from_record

# A batch goes in statements of this many jobs, in one transaction: PostgreSQL writes one
# while the next is drawn (validated) and the jobs of the one before are made. The first
# statement is smaller, so that the database starts sooner.
STATEMENT_JOBS = (50, 250)


async def insert_job_on(conn: asyncpg.Connection, job: NewJob) -> tuple[Job, bool]:
    """Insert one job on a connection the caller holds. When its idempotency key is taken,
    the job holding it comes back; should that job be deleted between the two statements
    (retention), the insert is tried again. A job under a max_pending quota is counted and
    inserted in one transaction (see ``check_pending_quotas``)."""
    if job.max_pending is not None:
        async with conn.transaction():
            await check_pending_quotas(conn, [job])
            return await _insert_one(conn, job)
    return await _insert_one(conn, job)


async def _insert_one(conn: asyncpg.Connection, job: NewJob) -> tuple[Job, bool]:
    if job.idempotency_key is None:
        row = await conn.fetchrow(
            QUERIES["insert_job"], *_insert_values(job), job.trace_context, job.created_at
        )
        assert row is not None  # nothing to conflict with: an error or a row
        return _job_from_insert(job, row), True
    for _ in range(3):  # insert_jobs: the one statement that knows ON CONFLICT
        rows = await conn.fetch(
            QUERIES["insert_jobs"], *_insert_columns([job]), job.trace_context, [job.created_at]
        )
        if rows:
            return _job_from_insert(job, rows[0]), True
        existing = await conn.fetch(
            QUERIES["get_jobs_by_idempotency_key"], job.tenant_id, [job.idempotency_key]
        )
        if existing:
            held = job_from_record(existing[0])
            check_same_request(job, held)
            return held, False
    raise StoreError(f"idempotency key {job.idempotency_key!r} is contended; try again")


async def insert_jobs_on(
    conn: asyncpg.Connection,
    jobs: Iterable[NewJob],
    text_json: bool = False,
    statement_jobs: tuple[int, int] = STATEMENT_JOBS,
) -> list[tuple[Job, bool]]:
    """Insert on a connection the caller holds, in statements of at most ``statement_jobs``
    jobs (the first, then each next one; the caller owns the transaction that makes several
    of them one); ``text_json`` as for ``job_from_record``."""
    chunks = statements(jobs, statement_jobs)
    first = next(chunks, None)
    if first is None:
        return []
    return await insert_chunks_on(conn, first, chunks, text_json)


def statements(jobs: Iterable[NewJob], sizes: tuple[int, int]) -> Iterator[list[NewJob]]:
    """The jobs in lists of ``sizes[0]``, then of ``sizes[1]``, each drawn only when asked
    for. A list holding a job under a max_pending quota takes every job left, so that the
    quota locks of a batch are all taken by one statement, in order (two batches taking them
    in different orders could deadlock)."""
    remaining = iter(jobs)
    size = sizes[0]
    while chunk := list(itertools.islice(remaining, size)):
        size = sizes[1]
        if any(job.max_pending is not None for job in chunk):
            chunk.extend(remaining)
        yield chunk


async def insert_chunks_on(
    conn: asyncpg.Connection,
    chunk: list[NewJob],
    more: Iterator[list[NewJob]],
    text_json: bool = False,
) -> list[tuple[Job, bool]]:
    """Write ``chunk`` and then each list of ``more``, one statement each. While PostgreSQL
    works on a statement, this process draws the next list (validating its jobs, when
    ``more`` does), makes that statement's parameters and makes the jobs of the previous
    statement: the two processors work at once instead of in turn. An error while drawing
    lets the statement in flight finish and is raised; the caller's transaction then stores
    nothing.

    Once a statement has told the transaction's ``now()``, each later list with no
    idempotency key goes by ``COPY`` instead, its times computed here from that ``now()``
    as the statements compute them (``_copy_data``): PostgreSQL writes its rows several to
    a heap page and a WAL record, and this process encodes the fields that jobs share once."""
    batch: list[NewJob] = []
    made: list[Job | None] = []  # per job of the batch: as inserted, or None (key taken)
    unsure: list[tuple[int, list[NewJob]]] = []  # see _make_inserted
    written: tuple[list[NewJob], _Form, Any] | None = None
    now: datetime | None = None
    form = _form(chunk, now)
    while chunk:
        await check_pending_quotas(conn, chunk)
        batch.extend(chunk)
        if isinstance(form, _Copy):
            statement = asyncio.ensure_future(
                conn.copy_to_table(
                    "async_jobs", source=_once(form.data), columns=COPY_COLUMNS, format="binary"
                )
            )
        else:
            query = QUERIES["insert_jobs_alike" if form.alike else "insert_jobs"]
            statement = asyncio.ensure_future(conn.fetch(query, *form.args))
        try:
            await asyncio.sleep(0)  # the statement is sent
            if written is not None:
                _make_inserted(*written, made, unsure)
            nxt = next(more, [])
            if nxt:
                next_form = _form(nxt, now)
        except BaseException:
            await asyncio.wait([statement])
            if not statement.cancelled():
                statement.exception()  # retrieved: the drawing error is the one raised
            raise
        result = await statement
        written = (chunk, form, result)
        if now is None and isinstance(form, _Statement) and result:
            now = result[0]["now"]
            if nxt:  # drawn before now() was known: made again, as COPY if it can go so
                next_form = _form(nxt, now)
        chunk = nxt
        if nxt:
            form = next_form
    if written is not None:
        _make_inserted(*written, made, unsure)
    for start, jobs in unsure:
        rows = await conn.fetch(QUERIES["get_inserted_times"], [job.id for job in jobs])
        by_id = {r[0]: r for r in rows}
        if len(by_id) != len(jobs):  # deleted since (a group commits as it goes): say so
            raise StoreError("jobs just inserted could not be read back; look them up by id")
        made[start : start + len(jobs)] = [_job_from_insert(job, by_id[job.id]) for job in jobs]
    return await _with_holders(conn, batch, made, text_json)


@dataclass(slots=True)
class _Statement:
    """An insert statement's parameters; ``alike``: it is ``insert_jobs_alike``."""

    alike: bool
    args: list[Any]


@dataclass(slots=True)
class _Copy:
    """The data of a binary ``COPY`` and the jobs it makes."""

    data: bytes
    jobs: list[Job]


_Form = _Statement | _Copy


def _form(jobs: list[NewJob], now: datetime | None) -> _Form:
    """How ``jobs`` go: by ``COPY`` when the transaction's ``now()`` is known and no job has
    an idempotency key, else by a statement."""
    if now is not None and all(job.idempotency_key is None for job in jobs):
        return _copy_data(jobs, now)
    return _Statement(*_statement_params(jobs))


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


# The columns a COPY writes, in the order of _copy_data: the three that differ from job to
# job first, then those a batch's jobs usually share. The others keep their defaults.
COPY_COLUMNS = (
    "id", "payload", "created_at", "updated_at", "tenant_id", "use_case", "type", "priority",
    "max_attempts", "run_at", "delay_tolerance_seconds", "deadline_at", "timeout_seconds",
    "webhook_url", "backoff", "expires_at", "trace_context", "delayed",
)  # fmt: skip

# PostgreSQL's binary COPY format: a signature, flags and a header extension length; each
# row its number of fields, then each field's length (-1: NULL) and bytes; -1 at the end.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
_ROW_START = struct.pack("!hi", len(COPY_COLUMNS), 16)  # the field count, then the id's length
_TIMES = struct.Struct("!iqiq")  # created_at and updated_at
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_NULL = struct.pack("!i", -1)


def _copy_data(jobs: list[NewJob], now: datetime) -> _Copy:
    """The binary ``COPY`` data of ``jobs`` and the jobs as stored. Their times are those
    ``insert_rows`` computes (``NewJob.times``); a job is marked delayed when run_at >
    ``now``. The fields after the first four are encoded once for each run of jobs that
    share them."""
    parts: list[bytes] = [_COPY_HEADER]
    stored: list[Job] = []
    shared: tuple[Any, ...] | None = None
    rest = b""
    run_at = deadline_at = now
    for j in jobs:
        key = (
            j.tenant_id, j.use_case, j.type, j.priority, j.max_attempts, j.run_at,
            j.delay_seconds, j.delay_tolerance_seconds, j.timeout_seconds, j.webhook_url,
            j.backoff, j.expires_at, j.trace_context,
        )  # fmt: skip
        if key != shared:
            shared = key
            run_at, deadline_at = j.times(now)
            backoff = None if j.backoff is None else json_dumps(j.backoff.to_json())
            rest = b"".join((
                _text(j.tenant_id), _text(j.use_case), _text(j.type), _text(j.priority),
                struct.pack("!ii", 4, j.max_attempts), _timestamp(run_at),
                struct.pack("!id", 8, j.delay_tolerance_seconds), _timestamp(deadline_at),
                _NULL if j.timeout_seconds is None else struct.pack("!id", 8, j.timeout_seconds),
                _text(j.webhook_url), _jsonb(backoff), _timestamp(j.expires_at),
                _text(j.trace_context), struct.pack("!i?", 1, run_at > now),
            ))  # fmt: skip
        micros = (j.created_at - _PG_EPOCH) // _MICROSECOND
        parts.append(b"".join((
            _ROW_START, j.id.bytes, _jsonb(j.payload_json), _TIMES.pack(8, micros, 8, micros),
            rest,
        )))  # fmt: skip
        stored.append(j.stored(run_at, deadline_at, j.created_at))
    parts.append(_COPY_TRAILER)
    return _Copy(b"".join(parts), stored)


def _text(value: str | None) -> bytes:
    if value is None:
        return _NULL
    data = value.encode()
    return struct.pack("!i", len(data)) + data


def _jsonb(text: str | None) -> bytes:
    """jsonb's binary form: its version (1), then the text."""
    if text is None:
        return _NULL
    data = text.encode()
    return struct.pack("!ib", len(data) + 1, 1) + data


def _timestamp(value: datetime | None) -> bytes:
    """timestamptz's binary form: microseconds since 2000-01-01 UTC."""
    if value is None:
        return _NULL
    return struct.pack("!iq", 8, (value - _PG_EPOCH) // _MICROSECOND)


def _make_inserted(
    chunk: list[NewJob],
    form: _Form,
    rows: Any,
    made: list[Job | None],
    unsure: list[tuple[int, list[NewJob]]],
) -> None:
    """Append to ``made`` each job of a statement as inserted, or None for a job that has
    no row (its key was taken). The rows come in the order of the jobs; should they not,
    they are matched by id. A statement of ``insert_jobs_alike`` returned one row, the
    times all its jobs share. Should they differ after all, its jobs are appended as None
    and the statement goes to ``unsure``, with where its jobs start in ``made``, for each
    job's times to be read once the connection is free. A ``COPY`` wrote every job with
    the times it was given."""
    if isinstance(form, _Copy):
        made.extend(form.jobs)
        return
    if form.alike:
        [row] = rows
        if row["n"] != len(chunk):  # no key: every job is inserted, or the statement fails
            raise StoreError(f"a statement of {len(chunk)} jobs inserted {row['n']}")
        run_at, deadline_at = row["run_at"], row["deadline_at"]
        if (run_at, deadline_at) == (row["last_run_at"], row["last_deadline_at"]):
            made.extend(job.stored(run_at, deadline_at, job.created_at) for job in chunk)
        else:
            unsure.append((len(made), chunk))
            made.extend(None for _ in chunk)
        return
    if len(rows) == len(chunk) and all(r[0] == j.id for r, j in zip(rows, chunk, strict=True)):
        made.extend(map(_job_from_insert, chunk, rows))
        return
    by_id = {r[0]: r for r in rows}
    for job in chunk:
        row = by_id.get(job.id)
        made.append(None if row is None else _job_from_insert(job, row))


async def _with_holders(
    conn: asyncpg.Connection, batch: list[NewJob], made: list[Job | None], text_json: bool
) -> list[tuple[Job, bool]]:
    """Each job of the batch with True if it was inserted, else the job holding its
    idempotency key and False."""
    missing = [j for j, inserted in zip(batch, made, strict=True) if inserted is None]
    if not missing:
        return [(inserted, True) for inserted in made if inserted is not None]
    existing: dict[tuple[str, str | None], Job] = {}
    query = "get_jobs_by_idempotency_key_as_text" if text_json else "get_jobs_by_idempotency_key"
    for tenant in {j.tenant_id for j in missing}:
        keys = [j.idempotency_key for j in missing if j.tenant_id == tenant]
        for row in await conn.fetch(QUERIES[query], tenant, keys):
            found = job_from_record(row, text_json)
            existing[(found.tenant_id, found.idempotency_key)] = found
    results: list[tuple[Job, bool]] = []
    for job, inserted in zip(batch, made, strict=True):
        if inserted is not None:
            results.append((inserted, True))
            continue
        holder = existing.get((job.tenant_id, job.idempotency_key))
        if holder is None:  # deleted between the two statements (retention)
            raise StoreError(f"idempotency key {job.idempotency_key!r} is contended; try again")
        check_same_request(job, holder)  # before the caller's commit: a conflict stores nothing
        results.append((holder, False))
    return results


async def check_pending_quotas(conn: asyncpg.Connection, jobs: Sequence[NewJob]) -> None:
    """Raise ``QuotaExceededError`` if the jobs would take a tenant past its max_pending in a
    use case. Run inside the inserting transaction: the lock per (tenant, use case), taken
    in sorted order, makes the count and the insert atomic against other inserts, and it is
    held until commit, so a concurrent insert counts these jobs too."""
    bounded: dict[tuple[str, str], list[NewJob]] = {}
    for job in jobs:
        if job.max_pending is not None:
            bounded.setdefault((job.tenant_id, job.use_case), []).append(job)
    for (tenant, use_case), group in sorted(bounded.items()):
        await conn.execute(QUERIES["lock_pending_quota"], tenant, use_case)
        keys = {j.idempotency_key for j in group if j.idempotency_key is not None}
        row = await conn.fetchrow(QUERIES["count_waiting"], tenant, use_case, list(keys))
        assert row is not None
        limit = group[0].max_pending
        assert limit is not None
        new = sum(j.idempotency_key is None for j in group) + len(keys - set(row["existing"]))
        if row["waiting"] + new > limit:
            raise QuotaExceededError(
                f"tenant {tenant!r} has {row['waiting']} jobs waiting in use case "
                f"{use_case!r}; its max_pending is {limit}",
                tenant_id=tenant,
                use_case=use_case,
                max_pending=limit,
            )


def _insert_values(j: NewJob) -> tuple[Any, ...]:
    """The parameters of one job, in the column order of both insert queries."""
    return (
        j.id,
        j.tenant_id,
        j.use_case,
        j.type,
        j.payload_json,
        j.priority,  # a StrEnum: the driver sends it as its text
        j.max_attempts,
        j.delay_seconds,
        j.run_at,
        j.delay_tolerance_seconds,
        j.timeout_seconds,
        j.idempotency_key,
        j.webhook_url,
        None if j.backoff is None else json_dumps(j.backoff.to_json()),
        j.expires_at,
    )


def _insert_columns(jobs: Sequence[NewJob]) -> list[Any]:
    """The batch insert's parameters (see the query insert_jobs): the ids and payloads as
    arrays, then each other column as an array of per-job values, then each as one shared
    value. A column whose value is the same in every job goes as that value and NULL for
    its array, so the driver encodes one value instead of an array of equal ones."""
    columns = list(zip(*map(_insert_values, jobs), strict=True))
    ids, payloads = columns[0], columns[4]
    arrays: list[list[Any] | None] = []
    shared: list[Any] = []
    for column in (*columns[1:4], *columns[5:]):
        first = column[0]
        if column.count(first) == len(column):
            arrays.append(None)
            shared.append(first)
        else:
            arrays.append(list(column))
            shared.append(None)
    return [list(ids), list(payloads), *arrays, *shared]


# Where _insert_columns puts the per-job arrays of the columns that make a job's times
# (delay, run_at, tolerance: $8-$10), the per-job array of idempotency keys ($12) and the
# key every job shares ($25). tests/unit/test_statements.py checks the positions.
_TIME_ARRAYS = slice(7, 10)
_KEY_ARRAY, _SHARED_KEY = 11, 24


def _statement_params(jobs: list[NewJob]) -> tuple[bool, list[Any]]:
    """Whether the statement for ``jobs`` is ``insert_jobs_alike`` (no job has an
    idempotency key, and all share the columns their times come from), and its
    parameters."""
    params = _insert_columns(jobs)
    params.append(jobs[0].trace_context)
    params.append([job.created_at for job in jobs])
    alike = (
        params[_KEY_ARRAY] is None
        and params[_SHARED_KEY] is None
        and params[_TIME_ARRAYS] == [None, None, None]
    )
    return alike, params


def _job_from_insert(new: NewJob, row: asyncpg.Record) -> Job:
    """The job an insert statement wrote: its row is (id, run_at, deadline_at, created_at)."""
    return new.stored(row[1], row[2], row[3])
