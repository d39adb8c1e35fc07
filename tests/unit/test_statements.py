"""How the PostgreSQL store cuts a batch into statements (``_statements``): lazily, and with
every job under a quota in one statement."""

from __future__ import annotations

from collections.abc import Iterator

from async_jobs.domain.jobs import NewJob
from async_jobs.stores.postgres.inserts import statements as _statements
from tests.helpers import new_job


def _bounded(n: int) -> NewJob:
    job = new_job(payload={"n": n})
    job.max_pending = 100
    return job


def test_jobs_are_drawn_one_statement_at_a_time() -> None:
    drawn: list[int] = []

    def jobs() -> Iterator[NewJob]:
        for n in range(7):
            drawn.append(n)
            yield new_job(payload={"n": n})

    chunks = _statements(jobs(), (2, 3))
    assert [j.payload["n"] for j in next(chunks)] == [0, 1]
    assert drawn == [0, 1]
    assert [[j.payload["n"] for j in c] for c in chunks] == [[2, 3, 4], [5, 6]]
    assert drawn == list(range(7))


def test_the_statement_with_a_job_under_a_quota_takes_every_job_left() -> None:
    jobs = [new_job(payload={"n": n}) for n in range(4)] + [_bounded(4)]
    jobs += [new_job(payload={"n": n}) for n in range(5, 8)] + [_bounded(8)]
    sizes = [len(c) for c in _statements(jobs, (3, 3))]
    assert sizes == [3, 6]  # the second statement takes the rest, both bounded jobs with it


def test_an_empty_batch_has_no_statement() -> None:
    assert list(_statements([], (3, 3))) == []
