"""The ticket a broker message carries: its wire format (read by every version of workers)
and what a worker refuses to take for one."""

from __future__ import annotations

import json
import uuid

import pytest

from async_jobs.domain.dispatch import DispatchTicket, MalformedMessageError
from async_jobs.domain.jobs import JobId


def ticket(attempt: int = 3) -> DispatchTicket:
    return DispatchTicket(JobId(uuid.uuid4()), attempt, uuid.uuid4())


def test_a_ticket_is_the_compact_json_of_its_fields() -> None:
    t = ticket()
    expected = {
        "v": 1,
        "job_id": str(t.job_id),
        "attempt": 3,
        "dispatch_id": str(t.dispatch_id),
    }
    assert t.to_message() == json.dumps(expected, separators=(",", ":"))
    assert DispatchTicket.from_message(t.to_message()) == t


JOB_ID = "0190a3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b"
DISPATCH_ID = "5e0c2a9f-7d1b-4c3e-8f6a-2b9d0e1c3a4f"


def fields(**changed: object) -> str:
    """A ticket's JSON with some fields changed (None: left out)."""
    body = {"v": 1, "job_id": JOB_ID, "attempt": 1, "dispatch_id": DISPATCH_ID}
    body.update(changed)
    return json.dumps({k: v for k, v in body.items() if v is not None})


def test_a_well_formed_ticket_is_read() -> None:
    assert DispatchTicket.from_message(fields()) == DispatchTicket(
        JobId(uuid.UUID(JOB_ID)), 1, uuid.UUID(DISPATCH_ID)
    )


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("", id="empty"),
        pytest.param("not json", id="not-json"),
        pytest.param("[1]", id="not-an-object"),
        pytest.param(fields(v=2), id="unknown-version"),
        pytest.param(fields(job_id="x"), id="job-id-not-a-uuid"),
        pytest.param(fields(attempt=0), id="attempt-zero"),
        pytest.param(fields(attempt=True), id="attempt-a-boolean"),
        pytest.param(fields(attempt="1"), id="attempt-a-string"),
        pytest.param(fields(dispatch_id=None), id="no-dispatch-id"),
        pytest.param("x" * 2000, id="too-large"),
    ],
)
def test_anything_else_is_malformed(body: str) -> None:
    with pytest.raises(MalformedMessageError):
        DispatchTicket.from_message(body)


@pytest.mark.parametrize("attempt", [1, 7, 999_999_999, 10**12])
def test_the_own_format_and_any_other_spelling_read_the_same(attempt: int) -> None:
    """A body as to_message writes it is read by a pattern, without a JSON parser; the same
    ticket spelt otherwise (spaces, upper-case digits, an attempt too long for the pattern)
    is read by the general path, to the same ticket."""
    t = ticket(attempt)
    others = [
        json.dumps(
            {"v": 1, "job_id": str(t.job_id), "attempt": attempt, "dispatch_id": str(t.dispatch_id)}
        ),
        t.to_message()
        .upper()
        .replace('"V"', '"v"')
        .replace('"JOB_ID"', '"job_id"')
        .replace('"ATTEMPT"', '"attempt"')
        .replace('"DISPATCH_ID"', '"dispatch_id"'),
    ]
    read = [DispatchTicket.from_message(body) for body in [t.to_message(), *others]]
    assert read == [t] * 3
    assert all(type(r.job_id) is uuid.UUID and str(r.job_id) == str(t.job_id) for r in read)
    assert all(hash(r.dispatch_id) == hash(t.dispatch_id) for r in read)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            f'{{"v":1,"job_id":"{JOB_ID}","attempt":01,"dispatch_id":"{DISPATCH_ID}"}}',
            id="attempt-with-a-leading-zero",
        ),
        pytest.param(
            f'{{"v":1,"job_id":"{JOB_ID}","attempt":1,"dispatch_id":"{JOB_ID[:-1]}"}}',
            id="short-dispatch-id",
        ),
        pytest.param(
            f'{{"v":1,"job_id":"{JOB_ID}","attempt":1,"dispatch_id":"{DISPATCH_ID}"}}x',
            id="trailing-text",
        ),
    ],
)
def test_a_near_miss_of_the_own_format_is_still_malformed(body: str) -> None:
    with pytest.raises(MalformedMessageError):
        DispatchTicket.from_message(body)
