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


def fields(**changed: object) -> str:
    """A ticket's JSON with some fields changed (None: left out)."""
    body = {"v": 1, "job_id": str(uuid.uuid4()), "attempt": 1, "dispatch_id": str(uuid.uuid4())}
    body.update(changed)
    return json.dumps({k: v for k, v in body.items() if v is not None})


@pytest.mark.parametrize(
    "body",
    [
        "",
        "not json",
        "[1]",
        fields(v=2),
        fields(job_id="x"),
        fields(attempt=0),
        fields(attempt=True),
        fields(attempt="1"),
        fields(dispatch_id=None),
        "x" * 2000,
    ],
)
def test_anything_else_is_malformed(body: str) -> None:
    with pytest.raises(MalformedMessageError):
        DispatchTicket.from_message(body)
