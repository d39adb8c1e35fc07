"""The HTTP client's pure parts: JSON round trips of the values it returns, how error answers
become exceptions, and how it waits on servers with and without ``?wait``, against fake
answers (``httpx.MockTransport``). The client against the real app is in
tests/integration/test_client.py."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from async_jobs import (
    AsyncJobsClient,
    AttemptRecord,
    Backoff,
    IdempotencyConflictError,
    InvalidJobError,
    InvalidTransitionError,
    Job,
    JobError,
    JobId,
    JobNotFoundError,
    JobsClient,
    JobState,
    PayloadTooLargeError,
    Priority,
    Progress,
    QuotaExceededError,
    Stats,
    UnknownJobTypeError,
)
from async_jobs.client import error_from_response
from async_jobs.domain.errors import AuthTokenError, ForbiddenError, RemoteHttpError
from async_jobs.domain.jobs import LeaseToken
from async_jobs.domain.scheduling import StatsCount

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def full_job(**changes: Any) -> Job:
    """A job with every field set to something other than its default."""
    job = Job(
        id=JobId(uuid.uuid4()),
        tenant_id="acme",
        use_case="thumbnails",
        type="resize",
        payload={"path": "a.png", "sizes": [1, 2], "nested": {"x": None}},
        priority=Priority.HIGH,
        status=JobState.RUNNING,
        attempts=2,
        max_attempts=5,
        run_at=T0,
        delay_tolerance_seconds=12.5,
        deadline_at=T0 + timedelta(seconds=12.5),
        timeout_seconds=30.0,
        idempotency_key="key-1",
        webhook_url="https://example.com/hook",
        progress=Progress(40.0, "resizing"),
        result={"partial": True},
        error=JobError("ValueError", "bad", "Traceback ..."),
        created_at=T0 - timedelta(minutes=1),
        updated_at=T0 + timedelta(seconds=3),
        started_at=T0 + timedelta(seconds=1),
        finished_at=None,
        worker_id="worker-1",
        lease_token=None,
        lease_expires_at=T0 + timedelta(seconds=31),
        cancel_requested=True,
        reason="manual_retry",
        history=[
            AttemptRecord(1, "worker-0", T0, T0 + timedelta(seconds=2), "retry", "E", "boom"),
            AttemptRecord(2, None, None, T0 + timedelta(seconds=4), "worker_lost"),
        ],
        backoff=Backoff.constant(5),
        expires_at=T0 + timedelta(hours=1),
    )
    for name, value in changes.items():
        setattr(job, name, value)
    return job


def test_job_from_json_is_the_inverse_of_to_json() -> None:
    job = full_job()
    assert Job.from_json(job.to_json()) == job
    ended = full_job(
        status=JobState.SUCCEEDED,
        finished_at=T0 + timedelta(seconds=9),
        progress=None,
        error=None,
        timeout_seconds=None,
        backoff=Backoff.exponential(2, cap_seconds=60, jitter=0.5),
        history=[],
        expires_at=None,
        result=["any", "json", 1.5],
    )
    assert Job.from_json(ended.to_json()) == ended


def test_job_from_json_leaves_the_lease_token_out() -> None:
    job = full_job(lease_token=LeaseToken(uuid.uuid4()))
    data = job.to_json()
    assert "lease_token" not in data
    parsed = Job.from_json(data)
    assert parsed.lease_token is None
    assert parsed.lease_expires_at == job.lease_expires_at
    assert parsed.deadline_missed == job.deadline_missed


def test_stats_from_json_is_the_inverse_of_to_json() -> None:
    stats = Stats(
        generated_at=T0,
        counts=[StatsCount("default", "acme", "succeeded", 3)],
        finished_last_minute={"succeeded": 1},
        finished_last_hour={"succeeded": 3, "failed": 1},
        run_seconds={"p50": 0.5, "p95": 1.0, "p99": None},
        queue_wait_seconds={"p50": None, "p95": None, "p99": None},
        deadline_misses_last_hour=2,
        overdue_pending=1,
        oldest_due_age_seconds=4.25,
    )
    assert Stats.from_json(stats.to_json()) == stats


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("POST", "http://test/jobs")
    if body is None:
        return httpx.Response(status, headers=headers, request=request)
    if isinstance(body, str):
        return httpx.Response(status, text=body, headers=headers, request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


def error(code: str, message: str = "what the server said", **details: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return {"error": body}


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (404, error("job_not_found"), JobNotFoundError),
        (404, error("not_found"), JobNotFoundError),
        (401, error("unauthorized"), AuthTokenError),
        (403, error("forbidden"), ForbiddenError),
        (409, error("invalid_transition", status="succeeded"), InvalidTransitionError),
        (409, error("idempotency_conflict", job_id="x"), IdempotencyConflictError),
        (422, error("invalid_request"), InvalidJobError),
        (422, error("invalid_job"), InvalidJobError),
        (422, error("unknown_job_type"), UnknownJobTypeError),
        (400, error("malformed_json"), InvalidJobError),
        (413, error("request_too_large"), PayloadTooLargeError),
        (500, error("internal_error"), RemoteHttpError),
        (503, error("store_error"), RemoteHttpError),
        (418, error("teapot"), RemoteHttpError),
    ],
)
def test_error_answers_become_typed_exceptions(
    status: int, body: dict[str, Any], kind: type[Exception]
) -> None:
    exc = error_from_response(answer(status, body))
    assert type(exc) is kind
    assert exc.message == "what the server said"
    details = body["error"].get("details", {})
    assert {k: exc.details[k] for k in details} == details
    if isinstance(exc, RemoteHttpError):
        assert exc.status_code == status
        assert exc.details["code"] == body["error"]["code"]


def test_quota_errors_carry_retry_after() -> None:
    body = error("quota_exceeded", retry_after_seconds=2.5, tenant_id="acme")
    exc = error_from_response(answer(429, body, {"Retry-After": "3"}))
    assert isinstance(exc, QuotaExceededError)
    assert exc.retry_after_seconds == 3.0  # the header wins
    assert exc.details["tenant_id"] == "acme"
    without_header = error_from_response(answer(429, body))
    assert isinstance(without_header, QuotaExceededError)
    assert without_header.retry_after_seconds == 2.5


@pytest.mark.parametrize("body", ["<html>bad gateway</html>", None, {"unexpected": 1}])
def test_error_answers_that_are_not_ours_are_remote_http_errors(body: Any) -> None:
    exc = error_from_response(answer(502, body))
    assert isinstance(exc, RemoteHttpError)
    assert exc.status_code == 502
    assert "HTTP 502 from POST http://test/jobs" in exc.message


def job_json(status: JobState, job_id: str) -> dict[str, Any]:
    return full_job(id=JobId(uuid.UUID(job_id)), status=status, finished_at=None).to_json()


class FakeServer:
    """Answers ``GET /jobs/{id}`` from ``respond(n, wait)`` (n: the request's number from 1),
    recording when each request came and the ``wait`` it asked for."""

    def __init__(self, respond: Callable[[int, float], tuple[int, JobState]]) -> None:
        self.respond = respond
        self.job_id = str(uuid.uuid4())
        self.times: list[float] = []
        self.waits: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.times.append(time.monotonic())
        wait = float(request.url.params["wait"])
        self.waits.append(wait)
        status, state = self.respond(len(self.times), wait)
        return httpx.Response(status, json=job_json(state, self.job_id))


def test_wait_polls_a_server_without_wait_with_a_growing_interval() -> None:
    # Such a server ignores ?wait and answers 200 with the job as it stands, at once.
    def respond(n: int, wait: float) -> tuple[int, JobState]:
        return 200, JobState.SUCCEEDED if n == 6 else JobState.RUNNING

    server = FakeServer(respond)
    with JobsClient("http://test", transport=httpx.MockTransport(server)) as client:
        job = client.wait(server.job_id, timeout=30)
    assert job.status is JobState.SUCCEEDED
    gaps = [b - a for a, b in itertools.pairwise(server.times)]
    assert len(gaps) == 5
    assert gaps[0] >= 0.09  # starts at 0.1 s
    assert all(later >= earlier * 1.2 for earlier, later in itertools.pairwise(gaps))
    assert server.waits[0] == 20  # asks for at most 20 s at a time


def test_wait_on_a_server_without_wait_returns_the_job_as_it_stands_after_the_timeout() -> None:
    server = FakeServer(lambda n, wait: (200, JobState.PENDING))
    started = time.monotonic()
    with JobsClient("http://test", transport=httpx.MockTransport(server)) as client:
        job = client.wait(server.job_id, timeout=1.0)
    took = time.monotonic() - started
    assert job.status is JobState.PENDING
    assert 1.0 <= took < 1.5
    assert len(server.times) <= 10  # 0.1, 0.15, 0.225, ... apart: no busy loop
    assert server.waits[0] == pytest.approx(1.0, abs=0.05)
    assert server.waits == sorted(server.waits, reverse=True)  # the time left, each time


async def test_wait_asks_again_at_once_when_the_server_held_the_request() -> None:
    # A server with ?wait holds the request for the seconds asked (here: pretends to, by
    # answering 202 only after a while) and answers 200 once the job has ended.
    def respond(n: int, wait: float) -> tuple[int, JobState]:
        if n < 3:
            time.sleep(min(wait, 0.3))  # wait-ok: the fake server holds the request
            return 202, JobState.RUNNING
        return 200, JobState.SUCCEEDED

    server = FakeServer(respond)
    async with AsyncJobsClient("http://test", transport=httpx.MockTransport(server)) as client:
        job = await client.wait(server.job_id, timeout=0.8)
    assert job.status is JobState.SUCCEEDED
    assert len(server.times) == 3
    assert server.waits[0] == pytest.approx(0.8, abs=0.05)
    assert server.waits[1] == pytest.approx(0.5, abs=0.1)


async def test_wait_backs_off_when_a_202_comes_back_at_once() -> None:
    server = FakeServer(lambda n, wait: (202, JobState.RUNNING))
    async with AsyncJobsClient("http://test", transport=httpx.MockTransport(server)) as client:
        job = await client.wait(server.job_id, timeout=0.6)
    assert job.status is JobState.RUNNING
    assert len(server.times) <= 6


def test_retries_are_checked() -> None:
    with pytest.raises(ValueError, match="retries"):
        JobsClient("http://test", retries=-1)


def test_a_slow_server_without_wait_is_still_polled_less_and_less_often() -> None:
    def respond(n: int, wait: float) -> tuple[int, JobState]:
        time.sleep(0.05)  # wait-ok: a slow fake server that never holds the request for the wait
        return 200, JobState.SUCCEEDED if n == 6 else JobState.RUNNING

    server = FakeServer(respond)
    with JobsClient("http://test", transport=httpx.MockTransport(server)) as client:
        assert client.wait(server.job_id, timeout=30).status is JobState.SUCCEEDED
    gaps = [b - a for a, b in itertools.pairwise(server.times)]
    assert gaps[-1] > gaps[0] * 2
