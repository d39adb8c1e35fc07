"""The HTTP API from Python: ``AsyncJobsClient`` (asyncio) and ``JobsClient`` (blocking).

Both have the same methods and answer with the package's own types (``Job``, ``Stats``,
``UseCaseState``); errors the server answers become the package's exceptions
(``JobNotFoundError``, ``QuotaExceededError``, ...)::

    async with AsyncJobsClient("http://127.0.0.1:8000", token="...") as jobs:
        job = await jobs.run("echo", {"hello": "world"}, timeout=30)
        print(job.status, job.result)

    with JobsClient("http://127.0.0.1:8000") as jobs:
        for job in jobs.list(status="failed"):
            jobs.retry(job.id)

How each call talks to the server is written once, as a generator of effects (send this
request, sleep this long) that a small driver per client performs: ``await`` in one,
blocking calls in the other. So retries, waiting and error mapping are the same code.

Retries: connection errors and 502/503/504 answers are retried ``retries`` times with a
capped, jittered backoff (honouring ``Retry-After`` up to the cap). Retrying ``POST /jobs``
is safe because every job the client sends carries an idempotency key: the caller's, or a
random one the client sets, the same on every retry of one call; a job stored by an attempt
whose answer was lost comes back instead of a second job. After the last retry the last
``httpx.TransportError`` or a ``RemoteHttpError`` is raised.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import enum
import time
import uuid
from collections.abc import AsyncIterator, Generator, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Generic, TypeAlias, TypedDict, TypeVar, Unpack
from urllib.parse import quote

import httpx

from async_jobs.domain.errors import (
    AsyncJobsError,
    AuthTokenError,
    ForbiddenError,
    IdempotencyConflictError,
    InvalidJobError,
    InvalidTransitionError,
    JobNotFoundError,
    PayloadTooLargeError,
    QuotaExceededError,
    RemoteHttpError,
    UnknownJobTypeError,
)
from async_jobs.domain.jobs import Job, JobId, JobState, Priority
from async_jobs.domain.requests import EnqueueRequest
from async_jobs.domain.retry import Backoff
from async_jobs.domain.scheduling import Stats, UseCaseState

__all__ = ["AsyncJobsClient", "EnqueueOptions", "JobsClient", "ListFilters"]

T = TypeVar("T")

MAX_WAIT_SECONDS: Final = 20.0  # the longest one ``GET /jobs/{id}?wait=S`` is asked to hold
RETRY_STATUSES: Final = frozenset({502, 503, 504})
# Errors after which the request may be sent again (POST /jobs is made safe by its key).
RETRYABLE_ERRORS: Final = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.PoolTimeout,
)
DEFAULT_RETRY_BACKOFF: Final = Backoff.exponential(0.2, cap_seconds=5.0)
# Between reads of a job when the server answers at once (one without ``?wait``):
# 0.1 s, then 1.5 times longer each time, at most 1 s.
POLL_BACKOFF: Final = Backoff.exponential(0.1, factor=1.5, cap_seconds=1.0, jitter=0.0)
USER_AGENT: Final = "async-jobs-client"

JobRef: TypeAlias = JobId | uuid.UUID | str


class EnqueueOptions(TypedDict, total=False):
    """The keyword arguments of ``enqueue`` and ``run``: the fields of ``POST /jobs``."""

    tenant_id: str | None
    use_case: str | None
    priority: Priority | str | None
    delay_seconds: float | None
    run_at: datetime | None
    delay_tolerance_seconds: float | None
    max_attempts: int | None
    timeout_seconds: float | None
    idempotency_key: str | None
    webhook_url: str | None
    backoff: Backoff | Mapping[str, Any] | None
    expires_at: datetime | None


class ListFilters(TypedDict, total=False):
    """The keyword arguments of ``list``; ``limit`` is the page size (1-1000)."""

    status: JobState | str | None
    use_case: str | None
    type: str | None
    tenant_id: str | None
    created_after: datetime | None
    created_before: datetime | None
    limit: int


# -- effects: what a call asks its driver to do ----------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Send:
    """Send one request; the driver answers with the ``httpx.Response`` or throws the
    ``httpx.TransportError``."""

    method: str
    path: str
    json: Any = None
    params: Mapping[str, str] | None = None
    timeout: float | None = None  # None: the client's

    def arguments(self) -> dict[str, Any]:
        timeout = httpx.USE_CLIENT_DEFAULT if self.timeout is None else self.timeout
        return {"json": self.json, "params": self.params, "timeout": timeout}


@dataclasses.dataclass(frozen=True, slots=True)
class _Sleep:
    seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class _Done(Generic[T]):
    value: T


_Effect: TypeAlias = _Send | _Sleep
_Flow: TypeAlias = Generator[_Effect, Any, T]


def _resume(flow: _Flow[T], outcome: object) -> _Effect | _Done[T]:
    """Give ``flow`` the outcome of its last effect (a response, None after a sleep, or an
    exception to raise where it waits); its next effect, or its result."""
    try:
        if isinstance(outcome, BaseException):
            return flow.throw(outcome)
        return flow.send(outcome)
    except StopIteration as stop:
        return _Done(stop.value)


# -- what both clients share: every call, once ------------------------------------------------

# The httpx client and transport a driver opens: asyncio or blocking.
_Http = TypeVar("_Http", httpx.AsyncClient, httpx.Client)
_Transport = TypeVar("_Transport", httpx.AsyncBaseTransport, httpx.BaseTransport)


class _ClientBase(Generic[_Http, _Transport]):
    """Configuration, and every call as a flow of effects (``_call`` and the ``_*_flow``
    methods); the two clients add only their ``httpx`` client, a driver and their public
    methods."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        transport: _Transport | None = None,
        retry_backoff: Backoff | None = None,
        auth_token: str | None = None,
    ) -> None:
        """``transport``: an ``httpx`` transport (an async one for ``AsyncJobsClient``);
        ``auth_token``: another name for ``token`` (the bearer token), as code written for
        other job servers passes it."""
        token = _one_token(token, auth_token)
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.base_url = base_url
        self.timeout = timeout
        self.retries = retries
        self.retry_backoff = retry_backoff or DEFAULT_RETRY_BACKOFF
        self.headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self._http: _Http = self._open(transport)

    def _open(self, transport: _Transport | None) -> _Http:
        """The ``httpx`` client that sends this client's requests."""
        raise NotImplementedError

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
        answers: frozenset[int] = frozenset(),
    ) -> _Flow[httpx.Response]:
        """One request, retried on connection errors and 502/503/504; a 2xx answer (or one
        of ``answers``) is returned, any other raised as the matching ``AsyncJobsError``."""
        request = _Send(method, path, json, params, timeout)
        attempt = 0
        while True:
            try:
                response: httpx.Response = yield request
            except RETRYABLE_ERRORS:
                if attempt >= self.retries:
                    raise
                attempt += 1
                yield _Sleep(self._retry_delay(attempt, None))
                continue
            status = response.status_code
            if status in answers or response.is_success:
                return response
            if status in RETRY_STATUSES and attempt < self.retries:
                attempt += 1
                yield _Sleep(self._retry_delay(attempt, response))
                continue
            raise error_from_response(response)

    def _retry_delay(self, attempt: int, response: httpx.Response | None) -> float:
        delay = self.retry_backoff.delay(attempt)
        asked = None if response is None else _retry_after(response)
        if asked is not None:  # the server's wish, within our cap
            delay = max(delay, min(asked, self.retry_backoff.cap_seconds))
        return delay

    def _job_call(self, method: str, path: str, **kwargs: Any) -> _Flow[Job]:
        response = yield from self._call(method, path, **kwargs)
        return Job.from_json(_body(response))

    def _enqueue_flow(
        self, job_type: str, payload: Mapping[str, Any] | None, options: Mapping[str, Any]
    ) -> _Flow[Job]:
        body = _job_body({**options, "type": job_type, "payload": payload})
        return (yield from self._job_call("POST", "/jobs", json=body))

    def _enqueue_many_flow(
        self, jobs: Sequence[Mapping[str, Any] | EnqueueRequest]
    ) -> _Flow[list[Job]]:
        body = {"jobs": [_job_body(_request_fields(job)) for job in jobs]}
        response = yield from self._call("POST", "/jobs/batch", json=body)
        return [Job.from_json(item) for item in _body(response)["items"]]

    def _page_flow(
        self, filters: Mapping[str, Any], cursor: str | None
    ) -> _Flow[tuple[list[Job], str | None]]:
        params = {key: _query_value(value) for key, value in filters.items() if value is not None}
        if cursor is not None:
            params["cursor"] = cursor
        response = yield from self._call("GET", "/jobs", params=params)
        page = _body(response)
        return [Job.from_json(item) for item in page["items"]], page.get("next_cursor")

    def _wait_flow(self, job_id: JobRef, timeout: float) -> _Flow[Job]:
        """Ask the server to hold ``GET /jobs/{id}?wait=S`` until the job ends (200) or S
        passes (202); a server that answers at once (one without ``?wait``: 200, the job as
        it stands) is polled with ``POLL_BACKOFF`` instead. Never more than 20 s at a time,
        so that proxies do not cut the request."""
        deadline = time.monotonic() + max(timeout, 0.0)
        path = _job_path(job_id)
        polls = 0
        while True:
            seconds = min(max(deadline - time.monotonic(), 0.0), MAX_WAIT_SECONDS)
            started = time.monotonic()
            response = yield from self._call(
                "GET", path, params={"wait": _seconds(seconds)}, timeout=self.timeout + seconds
            )
            job = Job.from_json(_body(response))
            now = time.monotonic()
            if job.status.is_terminal or now >= deadline:
                return job
            # 202: the server held the request (?wait) and may be asked again at once, unless
            # it answered sooner than a poll interval. 200 with the job not ended: a server
            # without ?wait, polled with a growing interval. Never a busy loop either way.
            held, gap = now - started, POLL_BACKOFF.delay(polls + 1)
            if response.status_code == 202 and held >= gap:
                polls = 0
                continue
            polls += 1
            yield _Sleep(min(max(gap - held, 0.0), deadline - now))

    def _run_flow(
        self,
        job_type: str,
        payload: Mapping[str, Any] | None,
        options: Mapping[str, Any],
        timeout: float,
    ) -> _Flow[Job]:
        deadline = time.monotonic() + timeout
        job = yield from self._enqueue_flow(job_type, payload, options)
        if job.status.is_terminal:
            return job
        return (yield from self._wait_flow(job.id, deadline - time.monotonic()))

    def _stats_flow(self, tenant_id: str | None, counts: bool) -> _Flow[Stats]:
        params = {} if tenant_id is None else {"tenant_id": tenant_id}
        if not counts:
            params["counts"] = "false"
        response = yield from self._call("GET", "/stats", params=params)
        return Stats.from_json(_body(response))

    def _use_case_flow(self, name: str, action: str) -> _Flow[UseCaseState]:
        response = yield from self._call("POST", f"/use-cases/{quote(name, safe='')}/{action}")
        return _use_case_state(_body(response))

    def _use_cases_flow(self) -> _Flow[list[UseCaseState]]:
        response = yield from self._call("GET", "/use-cases")
        return [_use_case_state(item) for item in _body(response)["items"]]

    def _cleanup_flow(self, older_than_hours: float | None) -> _Flow[dict[str, int]]:
        body = {} if older_than_hours is None else {"older_than_hours": older_than_hours}
        response = yield from self._call("POST", "/maintenance/cleanup", json=body)
        return {str(state): int(n) for state, n in _body(response)["by_status"].items()}

    def _health_flow(self) -> _Flow[dict[str, Any]]:
        # 503 is an answer here (the server is up, its store is not), not an error to retry.
        response = yield from self._call("GET", "/health", answers=frozenset({503}))
        return dict(_body(response))


def _one_token(token: str | None, auth_token: str | None) -> str | None:
    if token is not None and auth_token is not None and token != auth_token:
        raise ValueError("give the bearer token as token or as auth_token, not two different ones")
    return token if token is not None else auth_token


class AsyncJobsClient(_ClientBase[httpx.AsyncClient, httpx.AsyncBaseTransport]):
    """The jobs API over HTTP, for asyncio code. ``transport``: an ``httpx`` transport, for
    instance ``httpx.ASGITransport(app=api)`` to talk to an app in the same process."""

    def _open(self, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    async def _drive(self, flow: _Flow[T]) -> T:
        outcome: object = None
        while not isinstance(step := _resume(flow, outcome), _Done):
            outcome = await self._perform(step)
        return step.value

    async def _perform(self, effect: _Effect) -> object:
        """What the flow waits for: None after a sleep, the response, or the
        ``httpx.TransportError`` that the flow is to raise."""
        if isinstance(effect, _Sleep):
            await asyncio.sleep(effect.seconds)
            return None
        try:
            return await self._http.request(effect.method, effect.path, **effect.arguments())
        except httpx.TransportError as exc:
            return exc

    async def enqueue(
        self, type: str, payload: Mapping[str, Any] | None = None, **options: Unpack[EnqueueOptions]
    ) -> Job:
        """``POST /jobs``: store a job (or get the existing one for a repeated key)."""
        return await self._drive(self._enqueue_flow(type, payload, options))

    async def enqueue_many(
        self, jobs: Sequence[Mapping[str, Any] | EnqueueRequest]
    ) -> builtins.list[Job]:
        """``POST /jobs/batch``: store all the jobs (``POST /jobs`` bodies, or
        ``EnqueueRequest``) or none."""
        return await self._drive(self._enqueue_many_flow(jobs))

    async def get(self, job_id: JobRef) -> Job:
        return await self._drive(self._job_call("GET", _job_path(job_id)))

    async def list(self, **filters: Unpack[ListFilters]) -> AsyncIterator[Job]:
        """Every job matching the filters, newest first, fetched a page (``limit``) at a
        time as the iteration goes."""
        cursor: str | None = None
        while True:
            items, cursor = await self._drive(self._page_flow(filters, cursor))
            for job in items:
                yield job
            if cursor is None:
                return

    async def cancel(self, job_id: JobRef) -> Job:
        return await self._drive(self._job_call("POST", f"{_job_path(job_id)}/cancel"))

    async def retry(self, job_id: JobRef) -> Job:
        return await self._drive(self._job_call("POST", f"{_job_path(job_id)}/retry"))

    async def wait(self, job_id: JobRef, timeout: float = 60.0) -> Job:
        """The job once it has ended, or as it stands after ``timeout`` seconds."""
        return await self._drive(self._wait_flow(job_id, timeout))

    async def run(
        self,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        timeout: float = 60.0,
        **options: Unpack[EnqueueOptions],
    ) -> Job:
        """Enqueue, then wait for the job; ``timeout`` covers both."""
        return await self._drive(self._run_flow(type, payload, options, timeout))

    async def stats(self, tenant_id: str | None = None, *, counts: bool = True) -> Stats:
        """``GET /stats``; ``counts=False`` leaves out the counts of every job."""
        return await self._drive(self._stats_flow(tenant_id, counts))

    async def pause(self, use_case: str) -> UseCaseState:
        return await self._drive(self._use_case_flow(use_case, "pause"))

    async def resume(self, use_case: str) -> UseCaseState:
        return await self._drive(self._use_case_flow(use_case, "resume"))

    async def use_cases(self) -> builtins.list[UseCaseState]:
        return await self._drive(self._use_cases_flow())

    async def cleanup(self, older_than_hours: float | None = None) -> dict[str, int]:
        """Delete terminal jobs older than that (default: the server's retention settings);
        state -> jobs deleted."""
        return await self._drive(self._cleanup_flow(older_than_hours))

    async def health(self) -> dict[str, Any]:
        """The server's ``/health`` answer: ``{"status": "ok"|"unavailable", ...}``."""
        return await self._drive(self._health_flow())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncJobsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class JobsClient(_ClientBase[httpx.Client, httpx.BaseTransport]):
    """``AsyncJobsClient``'s methods as blocking calls, for code without an event loop."""

    def _open(self, transport: httpx.BaseTransport | None) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    def _drive(self, flow: _Flow[T]) -> T:
        outcome: object = None
        while not isinstance(step := _resume(flow, outcome), _Done):
            outcome = self._perform(step)
        return step.value

    def _perform(self, effect: _Effect) -> object:
        if isinstance(effect, _Sleep):
            time.sleep(effect.seconds)  # wait-ok: a retry's backoff or a poll interval
            return None
        try:
            return self._http.request(effect.method, effect.path, **effect.arguments())
        except httpx.TransportError as exc:
            return exc

    def enqueue(
        self, type: str, payload: Mapping[str, Any] | None = None, **options: Unpack[EnqueueOptions]
    ) -> Job:
        """``POST /jobs``: store a job (or get the existing one for a repeated key)."""
        return self._drive(self._enqueue_flow(type, payload, options))

    def enqueue_many(
        self, jobs: Sequence[Mapping[str, Any] | EnqueueRequest]
    ) -> builtins.list[Job]:
        """``POST /jobs/batch``: store all the jobs (``POST /jobs`` bodies, or
        ``EnqueueRequest``) or none."""
        return self._drive(self._enqueue_many_flow(jobs))

    def get(self, job_id: JobRef) -> Job:
        return self._drive(self._job_call("GET", _job_path(job_id)))

    def list(self, **filters: Unpack[ListFilters]) -> Iterator[Job]:
        """Every job matching the filters, newest first, fetched a page (``limit``) at a
        time as the iteration goes."""
        cursor: str | None = None
        while True:
            items, cursor = self._drive(self._page_flow(filters, cursor))
            yield from items
            if cursor is None:
                return

    def cancel(self, job_id: JobRef) -> Job:
        return self._drive(self._job_call("POST", f"{_job_path(job_id)}/cancel"))

    def retry(self, job_id: JobRef) -> Job:
        return self._drive(self._job_call("POST", f"{_job_path(job_id)}/retry"))

    def wait(self, job_id: JobRef, timeout: float = 60.0) -> Job:
        """The job once it has ended, or as it stands after ``timeout`` seconds."""
        return self._drive(self._wait_flow(job_id, timeout))

    def run(
        self,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        timeout: float = 60.0,
        **options: Unpack[EnqueueOptions],
    ) -> Job:
        """Enqueue, then wait for the job; ``timeout`` covers both."""
        return self._drive(self._run_flow(type, payload, options, timeout))

    def stats(self, tenant_id: str | None = None, *, counts: bool = True) -> Stats:
        """``GET /stats``; ``counts=False`` leaves out the counts of every job."""
        return self._drive(self._stats_flow(tenant_id, counts))

    def pause(self, use_case: str) -> UseCaseState:
        return self._drive(self._use_case_flow(use_case, "pause"))

    def resume(self, use_case: str) -> UseCaseState:
        return self._drive(self._use_case_flow(use_case, "resume"))

    def use_cases(self) -> builtins.list[UseCaseState]:
        return self._drive(self._use_cases_flow())

    def cleanup(self, older_than_hours: float | None = None) -> dict[str, int]:
        """Delete terminal jobs older than that (default: the server's retention settings);
        state -> jobs deleted."""
        return self._drive(self._cleanup_flow(older_than_hours))

    def health(self) -> dict[str, Any]:
        """The server's ``/health`` answer: ``{"status": "ok"|"unavailable", ...}``."""
        return self._drive(self._health_flow())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> JobsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- requests and answers -----------------------------------------------------------------------


def error_from_response(response: httpx.Response) -> AsyncJobsError:
    """The exception for an error answer, by its status and ``error.code``: 429 quota (with
    ``Retry-After``), 404 not found, 401/403 tokens, 409 transition or idempotency conflict,
    400/422 invalid job (413 too large), anything else ``RemoteHttpError``. The message and
    details are the server's."""
    status = response.status_code
    code, message, details = _error_parts(response)
    asked = _float(details.pop("retry_after_seconds", None))
    for clash in ("message", "status_code"):
        details.pop(clash, None)
    if status == 429:
        retry_after = _retry_after(response) or asked or 1.0
        return QuotaExceededError(message, retry_after_seconds=retry_after, **details)
    simple: dict[int, type[AsyncJobsError]] = {
        404: JobNotFoundError,
        401: AuthTokenError,
        403: ForbiddenError,
        409: IdempotencyConflictError
        if code == IdempotencyConflictError.code
        else InvalidTransitionError,
        413: PayloadTooLargeError,
        400: InvalidJobError,
        422: UnknownJobTypeError if code == UnknownJobTypeError.code else InvalidJobError,
    }
    if status in simple:
        return simple[status](message, **details)
    if code is not None:
        details["code"] = code
    return RemoteHttpError(message, status_code=status, **details)


def _error_parts(response: httpx.Response) -> tuple[str | None, str, dict[str, Any]]:
    """(code, message, details) of an error answer, whatever its body."""
    fallback = f"HTTP {response.status_code} from {response.request.method} {response.url}"
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()[:200]
        return None, f"{fallback}: {text}" if text else fallback, {}
    if not isinstance(error, Mapping):
        return None, str(error) or fallback, {}
    details = error.get("details")
    details = {str(k): v for k, v in details.items()} if isinstance(details, Mapping) else {}
    code = error.get("code")
    return (
        None if code is None else str(code),
        str(error.get("message") or fallback),
        details,
    )


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise RemoteHttpError(
            f"HTTP {response.status_code} from {response.request.method} {response.url} "
            "is not JSON",
            status_code=response.status_code,
        ) from None


def _retry_after(response: httpx.Response) -> float | None:
    return _float(response.headers.get("retry-after"))


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


def _job_path(job_id: JobRef) -> str:
    return f"/jobs/{quote(str(job_id), safe='')}"


def _request_fields(job: Mapping[str, Any] | EnqueueRequest) -> Mapping[str, Any]:
    """A batch entry as ``POST /jobs`` fields (``EnqueueRequest.delay`` is
    ``delay_seconds``)."""
    if not isinstance(job, EnqueueRequest):
        return job
    fields = {field.name: getattr(job, field.name) for field in dataclasses.fields(job)}
    fields["delay_seconds"] = fields.pop("delay")
    return fields


def _job_body(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A ``POST /jobs`` body: values as JSON, ``None`` left out, and an idempotency key (a
    new random one unless the caller gave theirs), so that the request can be retried."""
    body = {key: _json_value(value) for key, value in fields.items() if value is not None}
    if not body.get("idempotency_key"):
        body["idempotency_key"] = str(uuid.uuid4())
    return body


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Backoff):
        return value.to_json()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _query_value(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


def _seconds(value: float) -> str:
    """Seconds for a query string: ``20``, ``0.5``, ``0``."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _use_case_state(data: Mapping[str, Any]) -> UseCaseState:
    updated = data.get("updated_at")
    return UseCaseState(
        name=str(data["name"]),
        paused=bool(data["paused"]),
        updated_at=None if updated is None else datetime.fromisoformat(updated),
    )


# The name other job servers' users know: the same asyncio client.
AsyncJobsHttpClient = AsyncJobsClient
