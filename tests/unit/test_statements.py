"""How the PostgreSQL store cuts a batch into statements (``_statements``): lazily, and with
every job under a quota in one statement; and which statement each gets
(``_statement_params``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from async_jobs.domain.jobs import NewJob
from async_jobs.stores.postgres.inserts import _statement_params
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


AT = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)


@pytest.mark.parametrize(
    ("second", "alike"),
    [
        ({}, True),
        ({"timeout_seconds": 5.0, "expires_at": AT, "priority": "high"}, True),
        ({"tenant_id": "other", "webhook_url": "https://example.test/h"}, True),
        ({"delay": 30.0}, False),
        ({"run_at": AT}, False),
        ({"delay_tolerance_seconds": 5.0}, False),
        ({"idempotency_key": "k"}, False),
    ],
)
def test_a_statement_returns_one_row_only_when_its_jobs_get_the_same_times(
    second: dict[str, Any], alike: bool
) -> None:
    """``insert_jobs_alike`` when no job has a key and the columns the times come from (delay,
    run_at, tolerance) are shared; any other column may differ."""
    jobs = [new_job(payload={"n": 1}), new_job(payload={"n": 2}, **second)]
    assert _statement_params(jobs)[0] is alike


def test_a_key_shared_by_every_job_still_needs_a_row_per_job() -> None:
    jobs = [new_job(idempotency_key="k"), new_job(idempotency_key="k")]
    assert _statement_params(jobs)[0] is False


def test_the_time_columns_are_found_by_position() -> None:
    """The parameters the check reads are the times' and the key's, whatever changes."""
    first = new_job(run_at=AT, delay_tolerance_seconds=60.0)
    later = new_job(run_at=AT + timedelta(days=1), delay_tolerance_seconds=7.0)
    alike, params = _statement_params([first, later])
    assert not alike
    assert params[8] == [AT, AT + timedelta(days=1)]  # $9, run_at per job
    assert params[9] == [60.0, 7.0]  # $10, tolerance per job
    _, keyed = _statement_params([new_job(idempotency_key="a"), new_job(idempotency_key="a")])
    assert keyed[24] == "a"  # $25, the key every job shares
