"""The HTTP API in-process (ASGI) against a real store."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from async_jobs import JobApp, WorkerConfig
from async_jobs.api import create_api, create_jobs_router
from async_jobs.stores import store_from_dsn
from tests.helpers import wait_until

# What these tests check lies above the store: they run on the memory store, and one smoke
# test on every store (the store suites cover the stores).
pytestmark = pytest.mark.stores("memory")

UNKNOWN_ID = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def job_app(any_dsn: str) -> JobApp:
    """The app behind ``client`` (a test that asks for both gets the same one)."""
    return JobApp(store=store_from_dsn(any_dsn), handler_modules=["async_jobs.demo"])


@pytest.fixture
async def client(job_app: JobApp) -> AsyncIterator[httpx.AsyncClient]:
    app = create_api(
        job_app, worker=WorkerConfig(concurrency=4, poll_interval_seconds=0.1), migrate=True
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


@pytest.mark.stores("memory", "sqlite", "postgres")  # the smoke test on every store
async def test_enqueue_then_watch_the_job_succeed(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/jobs", json={"type": "sleep", "payload": {"seconds": 0.2, "message": "hello world"}}
    )
    assert created.status_code == 201
    body = created.json()
    assert body["status"] == "pending"
    assert body["priority"] == "medium"

    async def finished() -> dict[str, object] | None:
        job = (await client.get(f"/jobs/{body['id']}")).json()
        return job if job["status"] == "succeeded" else None

    job = await wait_until(finished, timeout=10)
    assert job["result"] == {"slept_seconds": 0.2, "message": "hello world"}
    assert job["attempts"] == 1
    assert job["started_at"] and job["finished_at"]
    assert "lease_token" not in job


async def test_repeated_idempotency_key_answers_200_with_the_same_job(
    client: httpx.AsyncClient,
) -> None:
    request = {"type": "echo", "payload": {"n": 1}, "idempotency_key": "k", "delay_seconds": 60}
    first = await client.post("/jobs", json=request)
    again = await client.post("/jobs", json=request)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    other = await client.post("/jobs", json={**request, "payload": {"n": 2}})
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_conflict"


async def test_list_pages_newest_first(client: httpx.AsyncClient) -> None:
    ids = []
    for i in range(5):
        response = await client.post(
            "/jobs", json={"type": "echo", "payload": {"i": i}, "delay_seconds": 3600}
        )
        ids.append(response.json()["id"])
    seen: list[str] = []
    url = "/jobs?limit=2"
    while True:
        page = (await client.get(url)).json()
        seen += [item["id"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        url = f"/jobs?limit=2&cursor={page['next_cursor']}"
    assert sorted(seen) == sorted(ids)
    assert len(seen) == 5
    filtered = (await client.get("/jobs?status=pending&type=echo&limit=1000")).json()
    assert len(filtered["items"]) == 5


BAD_BODIES = [
    (b"{not json", 400, "malformed_json"),
    (b'{"payload": {}}', 422, "invalid_request"),
    (b'{"type": "no_such_type"}', 422, "unknown_job_type"),
    (b'{"type": "echo", "payload": [1]}', 422, "invalid_request"),
    (b'{"type": "echo", "payload": "x"}', 422, "invalid_request"),
    (b'{"type": "echo", "priority": "urgent"}', 422, "invalid_request"),
    (b'{"type": "echo", "delay_seconds": -5}', 422, "invalid_job"),
    (b'{"type": "echo", "max_attempts": 0}', 422, "invalid_job"),
    (b'{"type": "echo", "max_attempts": "many"}', 422, "invalid_request"),
    # Numbers are JSON numbers: no boolean as 1, no string as its number, no float as an int.
    pytest.param(
        b'{"type": "echo", "max_attempts": true}', 422, "invalid_request", id="attempts-true"
    ),
    pytest.param(
        b'{"type": "echo", "max_attempts": 2.0}', 422, "invalid_request", id="attempts-2.0"
    ),
    pytest.param(
        b'{"type": "echo", "timeout_seconds": true}', 422, "invalid_request", id="timeout-true"
    ),
    pytest.param(
        b'{"type": "echo", "delay_seconds": "600"}', 422, "invalid_request", id="delay-string"
    ),
    pytest.param(
        b'{"type": "echo", "delay_tolerance_seconds": false}',
        422,
        "invalid_request",
        id="tolerance-false",
    ),
    (b'{"type": "echo", "payload": {"s": "a\\u0000b"}}', 422, "invalid_job"),
    (b'{"type": "echo", "surprise": 1}', 422, "invalid_request"),
    (b'{"type": "echo", "run_at": "2030-01-01T00:00:00"}', 422, "invalid_job"),
    (b"[]", 422, "invalid_request"),
    # Absurd delays and attempts, and numbers JSON cannot hold (1e999 parses as infinity).
    pytest.param(b'{"type": "echo", "delay_seconds": 1e300}', 422, "invalid_job", id="delay-1e300"),
    pytest.param(b'{"type": "echo", "delay_seconds": 1e999}', 422, "invalid_job", id="delay-inf"),
    pytest.param(
        b'{"type": "echo", "delay_seconds": -1e999}', 422, "invalid_job", id="delay-minus-inf"
    ),
    pytest.param(
        b'{"type": "echo", "max_attempts": 100000000000000000000000000000}',
        422,
        "invalid_job",
        id="attempts-1e29",
    ),
    pytest.param(
        b'{"type": "echo", "max_attempts": 1e999}', 422, "invalid_request", id="attempts-inf"
    ),
    pytest.param(
        b'{"type": "echo", "timeout_seconds": 1e999}', 422, "invalid_job", id="timeout-inf"
    ),
    pytest.param(
        b'{"type": "echo", "delay_tolerance_seconds": 1e999}',
        422,
        "invalid_job",
        id="tolerance-inf",
    ),
    pytest.param(
        b'{"type": "echo", "backoff": {"base_seconds": 1e999}}',
        422,
        "invalid_job",
        id="backoff-inf",
    ),
    pytest.param(
        b'{"type": "echo", "payload": {"n": [1, 1e999]}}', 422, "invalid_job", id="payload-inf"
    ),
    # run_at and expires_at far away, or beyond what a datetime holds once in UTC.
    pytest.param(
        b'{"type": "echo", "run_at": "0001-01-01T00:00:00Z"}', 422, "invalid_job", id="run-at-1"
    ),
    pytest.param(
        b'{"type": "echo", "run_at": "1900-01-01T00:00:00+00:00"}',
        422,
        "invalid_job",
        id="run-at-1900",
    ),
    pytest.param(
        b'{"type": "echo", "run_at": "9999-12-31T23:59:59Z"}', 422, "invalid_job", id="run-at-9999"
    ),
    pytest.param(
        b'{"type": "echo", "run_at": "0001-01-01T00:00:00+14:00"}',
        422,
        "invalid_job",
        id="run-at-before-year-1-in-utc",
    ),
    pytest.param(
        b'{"type": "echo", "run_at": "9999-12-31T23:59:59-14:00"}',
        422,
        "invalid_job",
        id="run-at-after-9999-in-utc",
    ),
    pytest.param(
        b'{"type": "echo", "expires_at": "9999-12-31T23:59:59.999999Z"}',
        422,
        "invalid_job",
        id="expires-at-9999",
    ),
    pytest.param(
        b'{"type": "echo", "run_at": "10000-01-01T00:00:00Z"}',
        422,
        "invalid_request",
        id="run-at-year-10000",
    ),
    # Text PostgreSQL cannot store: NUL, and lone surrogates (not UTF-8).
    pytest.param(
        b'{"type": "echo", "payload": {"s": "\\ud800"}}', 422, "invalid_job", id="surrogate-value"
    ),
    pytest.param(
        b'{"type": "echo", "payload": {"\\ud800": 1}}', 422, "invalid_job", id="surrogate-key"
    ),
    pytest.param(b'{"type": "echo", "payload": {"a\\u0000": 1}}', 422, "invalid_job", id="nul-key"),
    pytest.param(
        b'{"type": "echo", "payload": {"l": [{"x": "\\udfff"}]}}',
        422,
        "invalid_job",
        id="surrogate-deep-value",
    ),
    pytest.param(b'{"type": "ec\\u0000ho"}', 422, "unknown_job_type", id="nul-type"),
    pytest.param(b'{"type": "\\ud800"}', 422, "unknown_job_type", id="surrogate-type"),
    pytest.param(b'{"type": "echo", "tenant_id": "a\\u0000"}', 422, "invalid_job", id="nul-tenant"),
    pytest.param(
        b'{"type": "echo", "tenant_id": "\\ud800"}', 422, "invalid_job", id="surrogate-tenant"
    ),
    pytest.param(
        b'{"type": "echo", "use_case": "\\udc00x"}', 422, "invalid_job", id="surrogate-use-case"
    ),
    pytest.param(
        b'{"type": "echo", "idempotency_key": "k\\u0000"}', 422, "invalid_job", id="nul-key-idem"
    ),
    pytest.param(
        b'{"type": "echo", "idempotency_key": "\\ud800"}',
        422,
        "invalid_job",
        id="surrogate-idempotency-key",
    ),
    pytest.param(
        b'{"type": "echo", "webhook_url": "https://example.com/\\ud800"}',
        422,
        "invalid_job",
        id="surrogate-webhook-url",
    ),
    # Nesting deeper than the payload's limit (64), and deeper than the JSON parser goes.
    pytest.param(
        b'{"type": "echo", "payload": ' + b'{"a": ' * 70 + b"1" + b"}" * 70 + b"}",
        422,
        "invalid_job",
        id="nested-70",
    ),
    pytest.param(
        b'{"type": "echo", "payload": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        400,
        "malformed_json",
        id="nested-100000",
    ),
    # Bodies the JSON reader gives up on other than for their syntax.
    pytest.param(
        b'{"type": "echo", "payload": {"s": "\xff"}}', 400, "malformed_json", id="latin-1"
    ),
    pytest.param(
        b'{"type": "echo", "payload": {"n": ' + b"9" * 5000 + b"}}",
        400,
        "malformed_json",
        id="integer-of-5000-digits",
    ),
    # Over the payload limit (256 KiB), under the body limit (1 MiB).
    pytest.param(
        b'{"type": "echo", "payload": {"x": "' + b"x" * (300 * 1024) + b'"}}',
        413,
        "payload_too_large",
        id="payload-300k",
    ),
]


JSON = {"content-type": "application/json"}


async def assert_refused(
    client: httpx.AsyncClient, response: httpx.Response, status: int, code: str
) -> None:
    """A JSON error with its code, no traceback, and no job stored."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert "Traceback" not in response.text
    assert (await client.get("/jobs?limit=1000")).json()["items"] == []


@pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES)
async def test_bad_input_is_a_json_error_and_stores_nothing(
    client: httpx.AsyncClient, body: bytes, status: int, code: str
) -> None:
    response = await client.post("/jobs", content=body, headers=JSON)
    await assert_refused(client, response, status, code)


@pytest.mark.parametrize("path", ["/jobs", "/jobs/batch"])
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b'{"type": "echo", "jobs": [{"type": "echo"}]}'),
        ("application/x-www-form-urlencoded", b"type=echo&payload=%7B%7D"),
        ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="type"'),
        (None, b'{"type": "echo", "jobs": [{"type": "echo"}]}'),
    ],
    ids=["text", "form", "multipart", "none"],
)
async def test_a_body_not_sent_as_json_is_a_415_and_stores_nothing(
    client: httpx.AsyncClient, path: str, content_type: str | None, body: bytes
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = await client.post(path, content=body, headers=headers)
    await assert_refused(client, response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("jobs", "status", "code"),
    [
        pytest.param([{"type": "echo"}] * 1001, 422, "invalid_request", id="1001-jobs"),
        pytest.param(
            [{"type": "echo", "payload": {"x": "x" * 1100}}] * 1000,
            413,
            "request_too_large",
            id="over-the-body-limit",
        ),
        pytest.param(
            [{"type": "echo"}, {"type": "echo", "payload": {"s": "\ud800"}}],
            422,
            "invalid_job",
            id="one-bad-job",
        ),
        pytest.param(
            [{"type": "echo"}, {"type": "echo", "run_at": "0001-01-01T00:00:00Z"}],
            422,
            "invalid_job",
            id="one-bad-run-at",
        ),
        pytest.param(
            [{"type": "echo"}, {"type": "echo", "max_attempts": True}],
            422,
            "invalid_request",
            id="one-boolean-max-attempts",
        ),
    ],
)
async def test_a_bad_batch_is_refused_whole(
    client: httpx.AsyncClient, jobs: list[dict[str, Any]], status: int, code: str
) -> None:
    body = json.dumps({"jobs": jobs}).encode()  # ASCII: a lone surrogate goes as an escape
    response = await client.post("/jobs/batch", content=body, headers=JSON)
    await assert_refused(client, response, status, code)


@pytest.mark.parametrize("hours", [True, "0"], ids=["true", "string"])
async def test_cleanup_takes_its_age_as_a_json_number_only(
    client: httpx.AsyncClient, hours: Any
) -> None:
    """Lax parsing read true as 1 hour and "0" as 0 (every ended job deleted)."""
    job = (await client.post("/jobs", json={"type": "echo", "delay_seconds": 3600})).json()
    assert (await client.post(f"/jobs/{job['id']}/cancel")).status_code == 200
    refused = await client.post("/maintenance/cleanup", json={"older_than_hours": hours})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "invalid_request"
    assert (await client.get(f"/jobs/{job['id']}")).status_code == 200


async def test_run_at_may_lie_a_little_in_the_past_and_up_to_a_year_ahead(
    client: httpx.AsyncClient,
) -> None:
    now = datetime.now(UTC)
    for run_at in (now - timedelta(hours=23), now + timedelta(days=365)):
        created = await client.post("/jobs", json={"type": "echo", "run_at": run_at.isoformat()})
        assert created.status_code == 201, created.text
    for run_at in (now - timedelta(hours=25), now + timedelta(days=367)):
        refused = await client.post("/jobs", json={"type": "echo", "run_at": run_at.isoformat()})
        assert refused.status_code == 422
        assert refused.json()["error"]["details"] == {"field": "run_at"}
    assert len((await client.get("/jobs")).json()["items"]) == 2


async def test_oversized_bodies_are_refused_with_and_without_length(
    client: httpx.AsyncClient,
) -> None:
    big = b'{"type": "echo", "payload": {"x": "' + b"x" * (2 * 1024 * 1024) + b'"}}'
    sized = await client.post("/jobs", content=big, headers={"content-type": "application/json"})
    assert sized.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    chunked = await client.post(
        "/jobs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413
    assert chunked.json()["error"]["code"] == "request_too_large"
    assert (await client.get("/jobs")).json()["items"] == []


@pytest.mark.parametrize(
    "url",
    ["/jobs/not-a-uuid", "/jobs/00000000-0000-0000-0000-000000000000", "/nowhere"],
)
async def test_unknown_ids_and_routes_are_json_404s(client: httpx.AsyncClient, url: str) -> None:
    response = await client.get(url)
    assert response.status_code == 404
    assert response.json()["error"]["code"] in {"job_not_found", "not_found"}


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "status=bogus",
        "cursor=forged",
        "created_after=yesterday",
        "created_after=2020-01-01T00:00:00",  # no time zone
        "created_after=0001-01-01T00:00:00%2B14:00",  # before year 1 in UTC
        "created_before=9999-12-31T23:59:59-14:00",  # after 9999 in UTC
        "type=%00",  # NUL: PostgreSQL cannot even compare it
        "use_case=a%00b",
        "tenant_id=%00",
    ],
)
async def test_bad_list_filters_are_4xx(client: httpx.AsyncClient, query: str) -> None:
    response = await client.get(f"/jobs?{query}")
    assert response.status_code in (400, 422), response.text
    assert response.json()["error"]["code"] in ("invalid_request", "invalid_cursor")


INJECTIONS = [
    "type=' OR 1=1 --",
    "type=echo'; DROP TABLE async_jobs; --",
    "type=echo%27%20OR%20%27a%27%3D%27a",
    "type=%25",  # LIKE wildcards, were filters matched with LIKE
    "type=_cho",
    "type=echo%5C",
    "use_case=default' OR '1'='1",
    'use_case=default"; SELECT pg_sleep(5); --',
    "tenant_id=tenant-a' OR tenant_id='tenant-b",
    "tenant_id=tenant-a'--",
    "tenant_id=tenant-a;DELETE FROM async_jobs",
    "status=pending' OR 1=1 --",
    "status=pending;",
    "cursor=';DROP TABLE async_jobs;--",
    "cursor=eyJ0IjogIicgT1IgMT0xIC0tIiwgImlkIjogIjEifQ",
    "created_after=2020-01-01T00:00:00Z' OR 1=1 --",
    "limit=1;DROP TABLE async_jobs",
]


@pytest.mark.parametrize("query", INJECTIONS)
async def test_injections_in_list_filters_find_no_foreign_rows(
    client: httpx.AsyncClient, query: str
) -> None:
    """Values are parameters, never SQL: an injection is a 4xx or a filter that matches
    nothing (no job has such a type, tenant or use case), and the table is intact."""
    for tenant in ("tenant-a", "tenant-b"):
        body = {"type": "echo", "tenant_id": tenant, "delay_seconds": 3600}
        assert (await client.post("/jobs", json=body)).status_code == 201
    response = await client.get(f"/jobs?{query}")
    assert response.status_code in (200, 400, 422), response.text
    if response.status_code == 200:
        assert response.json()["items"] == []
    else:
        assert response.json()["error"]["code"] in ("invalid_request", "invalid_cursor")
    assert "Traceback" not in response.text
    assert len((await client.get("/jobs")).json()["items"]) == 2


def _cursor(content: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(content).encode()).decode().rstrip("=")


TAMPERED_CURSORS = [
    {"t": "2026-01-01T00:00:00+00:00", "id": "' OR 1=1 --"},
    {"t": "2026-01-01T00:00:00+00:00'; DROP TABLE async_jobs; --", "id": UNKNOWN_ID},
    {"t": "2026-01-01T00:00:00", "id": UNKNOWN_ID},  # no time zone
    {"t": "9999-12-31T23:59:59-14:00", "id": UNKNOWN_ID},  # after 9999 in UTC
    {"t": "0001-01-01T00:00:00+14:00", "id": UNKNOWN_ID},  # before year 1 in UTC
    {"t": 1767225600, "id": 7},
    {"t": "2026-01-01T00:00:00+00:00", "id": 5},
    {"t": "2026-01-01T00:00:00+00:00", "id": [1]},
    {"t": "2026-01-01T00:00:00+00:00", "id": {}},
    {"t": None, "id": None},
    {"id": UNKNOWN_ID},
    ["2026-01-01T00:00:00+00:00", UNKNOWN_ID],
    "2026-01-01T00:00:00+00:00",
]


@pytest.mark.parametrize("content", TAMPERED_CURSORS)
async def test_a_tampered_cursor_is_a_400(client: httpx.AsyncClient, content: Any) -> None:
    response = await client.get(f"/jobs?cursor={_cursor(content)}")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_cursor"


async def test_a_cursor_moved_to_another_position_is_only_a_position(
    client: httpx.AsyncClient,
) -> None:
    """Altered to other well-formed values, a cursor pages from there: no error, no more."""
    for n in range(3):
        body = {"type": "echo", "payload": {"n": n}, "delay_seconds": 3600}
        assert (await client.post("/jobs", json=body)).status_code == 201
    page = (await client.get("/jobs?limit=1")).json()
    decoded = json.loads(base64.urlsafe_b64decode(page["next_cursor"] + "=="))
    moved = [
        {**decoded, "id": "ffffffff-ffff-ffff-ffff-ffffffffffff"},
        {**decoded, "t": "9999-12-31T23:59:59+00:00"},  # after everything: every job
        {**decoded, "t": "0001-01-01T00:00:00+00:00"},  # before everything: none
        {**decoded, "tenant_id": "someone-else", "extra": "ignored"},
    ]
    seen = []
    for content in moved:
        response = await client.get(f"/jobs?cursor={_cursor(content)}")
        assert response.status_code == 200, response.text
        seen.append(len(response.json()["items"]))
    assert seen[1:3] == [3, 0]


async def test_stats_tenant_filter_with_a_nul_is_a_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/stats?tenant_id=a%00")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


async def test_stats_without_counts_leave_out_the_counts_only(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post("/jobs", json={"type": "echo", "payload": {}})).status_code == 201
    counted = (await client.get("/stats")).json()
    uncounted = await client.get("/stats", params={"counts": "false"})
    assert uncounted.status_code == 200
    assert [c["count"] for c in counted["counts"]] == [1]
    assert uncounted.json()["counts"] == []
    assert uncounted.json().keys() == counted.keys()
    assert uncounted.json()["deadline_misses"] == counted["deadline_misses"]
    assert (await client.get("/stats", params={"counts": "true"})).json()["counts"]


async def test_stats_counts_that_is_not_a_boolean_is_a_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/stats", params={"counts": "maybe"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_health_is_503_when_the_store_is_unreachable() -> None:
    jobs = JobApp("postgresql://postgres@127.0.0.1:1/none")
    app = FastAPI()
    app.include_router(create_jobs_router(jobs))
    from async_jobs.api.errors import install_error_handlers

    install_error_handlers(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        health = await c.get("/health")
        listing = await c.get("/jobs")
    assert health.status_code == 503
    assert health.headers["retry-after"]
    assert listing.status_code == 503
    assert listing.json()["error"]["code"] == "store_error"


async def test_the_router_mounts_under_a_prefix(pg_database: str) -> None:
    jobs = JobApp(pg_database, handler_modules=["async_jobs.demo"])
    app = FastAPI()
    app.include_router(create_jobs_router(jobs), prefix="/async-jobs")
    async with jobs:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            created = await c.post("/async-jobs/jobs", json={"type": "echo"})
            fetched = await c.get(f"/async-jobs/jobs/{created.json()['id']}")
    assert created.status_code == 201
    assert fetched.json()["type"] == "echo"


async def test_cancel_and_retry_over_http(client: httpx.AsyncClient) -> None:
    job = (await client.post("/jobs", json={"type": "echo", "delay_seconds": 3600})).json()
    cancelled = await client.post(f"/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    assert (cancelled.json()["status"], cancelled.json()["reason"]) == ("cancelled", "cancelled")
    twice = await client.post(f"/jobs/{job['id']}/cancel")
    assert twice.status_code == 409
    assert twice.json()["error"]["details"] == {"status": "cancelled"}
    retried = await client.post(f"/jobs/{job['id']}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "pending"
    again = await client.post(f"/jobs/{job['id']}/retry")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "invalid_transition"
    missing = await client.post("/jobs/00000000-0000-0000-0000-000000000000/cancel")
    assert missing.status_code == 404
    garbage = await client.post("/jobs/not-an-id/retry")
    assert garbage.status_code == 404


async def test_a_succeeded_job_cannot_be_cancelled(client: httpx.AsyncClient) -> None:
    job = (await client.post("/jobs", json={"type": "echo", "payload": {"a": 1}})).json()

    async def succeeded() -> bool:
        return (await client.get(f"/jobs/{job['id']}")).json()["status"] == "succeeded"

    await wait_until(succeeded, timeout=10)
    refused = await client.post(f"/jobs/{job['id']}/cancel")
    assert refused.status_code == 409
    assert refused.json()["error"]["details"] == {"status": "succeeded"}


async def test_batch_enqueue_is_all_or_nothing(client: httpx.AsyncClient) -> None:
    good = {"jobs": [{"type": "echo", "payload": {"n": n}, "delay_seconds": 60} for n in range(3)]}
    created = await client.post("/jobs/batch", json=good)
    assert created.status_code == 201
    assert [j["payload"]["n"] for j in created.json()["items"]] == [0, 1, 2]
    assert created.json()["created"] == [True, True, True]
    before = len((await client.get("/jobs")).json()["items"])
    bad = {"jobs": [{"type": "echo"}, {"type": "no_such_type"}]}
    refused = await client.post("/jobs/batch", json=bad)
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "unknown_job_type"
    assert len((await client.get("/jobs")).json()["items"]) == before
    empty = await client.post("/jobs/batch", json={"jobs": []})
    assert empty.status_code == 422
    keyed = {"jobs": [{"type": "echo", "idempotency_key": "b1", "delay_seconds": 60}]}
    assert (await client.post("/jobs/batch", json=keyed)).status_code == 201
    repeat = await client.post("/jobs/batch", json=keyed)
    assert (repeat.status_code, repeat.json()["created"]) == (200, [False])


async def test_a_job_with_its_own_backoff_over_http(client: httpx.AsyncClient) -> None:
    body = {"type": "echo", "delay_seconds": 60, "backoff": {"kind": "linear", "base_seconds": 5}}
    created = await client.post("/jobs", json=body)
    assert created.status_code == 201
    assert created.json()["backoff"]["kind"] == "linear"
    bad = await client.post("/jobs", json={**body, "backoff": {"kind": "sometimes"}})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_job"
    nan = await client.post("/jobs", json={**body, "backoff": {"jitter": 7}})
    assert nan.status_code == 422


async def test_wait_answers_when_the_job_ends_or_202_when_time_is_up(
    client: httpx.AsyncClient, job_app: JobApp
) -> None:
    done = await client.post(
        "/jobs?wait=20", json={"type": "sleep", "payload": {"seconds": 0.1, "message": "m"}}
    )
    assert done.status_code == 200
    assert done.json()["status"] == "succeeded"
    assert done.json()["result"] == {"slept_seconds": 0.1, "message": "m"}

    slow = await client.post(
        "/jobs?wait=0.2", json={"type": "sleep", "payload": {"seconds": 1.5, "message": "m"}}
    )
    assert slow.status_code == 202
    assert slow.json()["status"] in ("pending", "running")
    ended = await client.get(f"/jobs/{slow.json()['id']}?wait=20")
    assert (ended.status_code, ended.json()["status"]) == (200, "succeeded")

    pending = (await client.post("/jobs", json={"type": "echo", "delay_seconds": 3600})).json()
    waiter = asyncio.create_task(client.get(f"/jobs/{pending['id']}?wait=30"))
    # The cancel comes once the request waits for the job's end.
    await wait_until(lambda: uuid.UUID(pending["id"]) in job_app._waiters)
    await client.post(f"/jobs/{pending['id']}/cancel")
    cancelled = await asyncio.wait_for(waiter, 10)  # woken by the cancel, long before 30 s
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")

    for bad in ("-1", "61", "soon"):
        assert (await client.get(f"/jobs/{pending['id']}?wait={bad}")).status_code == 422
    assert (
        await client.get("/jobs/00000000-0000-0000-0000-000000000000?wait=1")
    ).status_code == 404


async def test_the_quick_way_and_the_general_way_of_post_jobs_answer_alike(
    client: httpx.AsyncClient,
) -> None:
    """A plain JSON body takes POST /jobs's quick way; the same request with a charset in
    its content type, or a query parameter, goes FastAPI's general way: same answer."""
    request = {
        "type": "echo",
        "payload": {"to": "a@b.c", "n": [1, 2.5, None, "é"]},
        "tenant_id": "t1",
        "use_case": "mail",
        "priority": "high",
        "delay_seconds": 60,
        "max_attempts": 4,
        "timeout_seconds": 9.5,
        "backoff": {"kind": "constant", "base_seconds": 5},
    }
    text = json.dumps(request).encode()
    answers = [
        await client.post("/jobs", content=text, headers={"content-type": content_type})
        for content_type in ("application/json", "application/json; charset=utf-8")
    ]
    answers.append(await client.post("/jobs?wait=0", content=text, headers=_JSON))
    assert [a.status_code for a in answers] == [201, 201, 202]
    varying = ("id", "run_at", "deadline_at", "created_at", "updated_at")
    bodies = [{k: v for k, v in a.json().items() if k not in varying} for a in answers]
    assert bodies[0] == bodies[1] == bodies[2]
    assert bodies[0]["payload"] == request["payload"] and bodies[0]["priority"] == "high"

    bad = json.dumps({**request, "colour": "red"}).encode()
    refusals = [
        await client.post("/jobs", content=bad, headers={"content-type": content_type})
        for content_type in ("application/json", "application/json; charset=utf-8")
    ]
    assert [r.status_code for r in refusals] == [422, 422]
    assert refusals[0].json() == refusals[1].json()
    assert refusals[0].json()["error"]["details"]["problems"][0]["field"] == "colour"


_JSON = {"content-type": "application/json"}
