"""The HTTP API in-process (ASGI) against a real store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from async_jobs import JobApp, WorkerConfig
from async_jobs.api import create_api, create_jobs_router
from async_jobs.stores import store_from_dsn
from tests.helpers import wait_until


@pytest.fixture
async def client(any_dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    jobs = JobApp(store=store_from_dsn(any_dsn), handler_modules=["async_jobs.demo"])
    app = create_api(
        jobs, worker=WorkerConfig(concurrency=4, poll_interval_seconds=0.1), migrate=True
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


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
    (b'{"type": "echo", "payload": {"s": "a\\u0000b"}}', 422, "invalid_job"),
    (b'{"type": "echo", "surprise": 1}', 422, "invalid_request"),
    (b'{"type": "echo", "run_at": "2030-01-01T00:00:00"}', 422, "invalid_job"),
    (b"[]", 422, "invalid_request"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES)
async def test_bad_input_is_a_json_error_and_stores_nothing(
    client: httpx.AsyncClient, body: bytes, status: int, code: str
) -> None:
    response = await client.post(
        "/jobs", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert "Traceback" not in response.text
    assert (await client.get("/jobs")).json()["items"] == []


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
    "query", ["limit=0", "limit=1001", "status=bogus", "cursor=forged", "created_after=yesterday"]
)
async def test_bad_list_filters_are_4xx(client: httpx.AsyncClient, query: str) -> None:
    response = await client.get(f"/jobs?{query}")
    assert response.status_code in (400, 422)
    assert "error" in response.json()


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
    client: httpx.AsyncClient,
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
    await asyncio.sleep(0.3)  # wait-ok: let the waiter start waiting before the cancel
    await client.post(f"/jobs/{pending['id']}/cancel")
    cancelled = await asyncio.wait_for(waiter, 10)  # woken by the cancel, long before 30 s
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")

    for bad in ("-1", "61", "soon"):
        assert (await client.get(f"/jobs/{pending['id']}?wait={bad}")).status_code == 422
    assert (
        await client.get("/jobs/00000000-0000-0000-0000-000000000000?wait=1")
    ).status_code == 404
