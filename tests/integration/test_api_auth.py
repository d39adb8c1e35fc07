"""Tokens and tenants over HTTP: 401 before the body is read, a tenant's token sees and
touches only its tenant, administration needs an admin token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from async_jobs import JobApp, Settings
from async_jobs.api import create_api, create_jobs_router
from async_jobs.api.auth import TokenAuth
from async_jobs.api.errors import install_error_handlers
from async_jobs.stores import store_from_dsn

TOKENS = {
    "token-a": "tenant-a",
    "token-b": "tenant-b",
    "token-admin": "*",
    "token-read": {"tenant": "*", "role": "read"},
    "token-a-read": {"tenant": "tenant-a", "role": "read"},
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def client(any_dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(api_tokens=TOKENS, enqueue_auth_token="one-token")
    jobs = JobApp(
        settings=settings, store=store_from_dsn(any_dsn), handler_modules=["async_jobs.demo"]
    )
    app = create_api(jobs, migrate=True)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_no_or_a_wrong_token_is_401_before_the_body_is_read(
    client: httpx.AsyncClient,
) -> None:
    for headers in ({}, bearer("nope"), {"Authorization": "Basic dG9rZW4tYQ=="}):
        answer = await client.post("/jobs", json={"type": "echo"}, headers=headers)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["error"]["code"] == "unauthorized"
    # A body over the size limit would be a 413 if it were read: it is not.
    huge = await client.post(
        "/jobs", content=b"x" * (2 * 1024 * 1024), headers={"content-type": "application/json"}
    )
    assert huge.status_code == 401
    assert (await client.get("/health")).status_code == 200  # open for load balancers
    listed = await client.get("/jobs", headers=bearer("token-admin"))
    assert listed.json()["items"] == []  # nothing was stored


async def test_a_tenant_token_acts_only_within_its_tenant(client: httpx.AsyncClient) -> None:
    a = bearer("token-a")
    b = bearer("token-b")
    mine = await client.post("/jobs", json={"type": "echo"}, headers=a)
    assert mine.status_code == 201 and mine.json()["tenant_id"] == "tenant-a"
    named = await client.post("/jobs", json={"type": "echo", "tenant_id": "tenant-a"}, headers=a)
    assert named.status_code == 201
    foreign = await client.post("/jobs", json={"type": "echo", "tenant_id": "tenant-b"}, headers=a)
    assert foreign.status_code == 403
    batch = await client.post(
        "/jobs/batch",
        json={"jobs": [{"type": "echo"}, {"type": "echo", "tenant_id": "x"}]},
        headers=a,
    )
    assert batch.status_code == 403
    theirs = await client.post("/jobs", json={"type": "echo"}, headers=b)
    job_id = mine.json()["id"]

    for method, url in (
        ("GET", f"/jobs/{job_id}"),
        ("POST", f"/jobs/{job_id}/cancel"),
        ("POST", f"/jobs/{job_id}/retry"),
    ):
        answer = await client.request(method, url, headers=b)
        assert answer.status_code == 404, (method, url)
    assert (await client.get(f"/jobs/{job_id}", headers=a)).status_code == 200

    listed_b = (await client.get("/jobs", headers=b)).json()
    assert [j["id"] for j in listed_b["items"]] == [theirs.json()["id"]]
    assert (await client.get("/jobs?tenant_id=tenant-a", headers=b)).status_code == 403
    # A cursor made from tenant-a's listing leads tenant-b nowhere but its own jobs.
    page = (await client.get("/jobs?limit=1", headers=a)).json()
    assert page["next_cursor"]
    via_cursor = await client.get(f"/jobs?cursor={page['next_cursor']}", headers=b)
    assert {j["tenant_id"] for j in via_cursor.json()["items"]} <= {"tenant-b"}

    stats_b = (await client.get("/stats", headers=b)).json()
    assert {c["tenant_id"] for c in stats_b["counts"]} == {"tenant-b"}
    assert (await client.get("/stats?tenant_id=tenant-a", headers=b)).status_code == 403
    everyone = (await client.get("/stats", headers=bearer("token-admin"))).json()
    assert {c["tenant_id"] for c in everyone["counts"]} == {"tenant-a", "tenant-b"}


async def test_administration_needs_an_admin_token(client: httpx.AsyncClient) -> None:
    for method, url in (
        ("GET", "/use-cases"),
        ("POST", "/use-cases/default/pause"),
        ("POST", "/use-cases/default/resume"),
        ("POST", "/maintenance/cleanup"),
    ):
        kwargs = {"json": {}} if url.endswith("cleanup") else {}
        refused = await client.request(method, url, headers=bearer("token-a"), **kwargs)
        assert refused.status_code == 403, url
        assert refused.json()["error"]["code"] == "forbidden"
        for admin in ("token-admin", "one-token"):
            allowed = await client.request(method, url, headers=bearer(admin), **kwargs)
            assert allowed.status_code == 200, (url, allowed.text)


async def test_a_mounted_router_authenticates_in_its_routes(pg_database: str) -> None:
    jobs = JobApp(pg_database, handler_modules=["async_jobs.demo"])
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(create_jobs_router(jobs, TokenAuth(TOKENS)), prefix="/async-jobs")
    async with jobs:
        await jobs.migrate()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            refused = await c.post("/async-jobs/jobs", json={"type": "echo"})
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
            made = await c.post(
                "/async-jobs/jobs", json={"type": "echo"}, headers=bearer("token-b")
            )
            assert made.json()["tenant_id"] == "tenant-b"
            assert (await c.get("/async-jobs/health")).status_code == 200


def test_bad_token_configuration_is_refused() -> None:
    from async_jobs import ConfigurationError

    with pytest.raises(ConfigurationError):
        TokenAuth({"": "*"})
    with pytest.raises(ConfigurationError):
        TokenAuth({"t": ""})
    assert TokenAuth.from_settings(Settings()) is None


async def test_a_router_mounted_without_our_error_handlers_still_answers_json(
    pg_database: str,
) -> None:
    jobs = JobApp(pg_database, handler_modules=["async_jobs.demo"])
    app = FastAPI()  # no install_error_handlers
    app.include_router(create_jobs_router(jobs), prefix="/async-jobs")
    async with jobs:
        await jobs.migrate()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            missing = await c.get("/async-jobs/jobs/00000000-0000-0000-0000-000000000000")
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "job_not_found"
            bad = await c.post("/async-jobs/jobs", json={"type": "echo", "priority": "urgent"})
            assert bad.status_code == 422 and "error" in bad.json()
            wrong = await c.post("/async-jobs/jobs", json={"payload": {}})
            assert wrong.status_code == 422 and "error" in wrong.json()


async def test_a_read_only_token_sees_but_every_state_changing_route_is_403(
    client: httpx.AsyncClient,
) -> None:
    job = (await client.post("/jobs", json={"type": "echo"}, headers=bearer("token-a"))).json()
    for token in ("token-read", "token-a-read"):
        reader = bearer(token)
        assert (await client.get(f"/jobs/{job['id']}", headers=reader)).status_code == 200
        assert (await client.get("/jobs", headers=reader)).json()["items"][0]["id"] == job["id"]
        refused = [
            await client.post("/jobs", json={"type": "echo"}, headers=reader),
            await client.post("/jobs?wait=1", json={"type": "echo"}, headers=reader),
            await client.post("/jobs/batch", json={"jobs": [{"type": "echo"}]}, headers=reader),
            await client.post(f"/jobs/{job['id']}/cancel", headers=reader),
            await client.post(f"/jobs/{job['id']}/retry", headers=reader),
        ]
        assert [r.status_code for r in refused] == [403] * 5, [r.text for r in refused]
        assert refused[0].json()["error"]["code"] == "forbidden"
    admin_reader = bearer("token-read")
    assert (await client.get("/stats", headers=admin_reader)).status_code == 200
    for path in ("/use-cases/mail/pause", "/use-cases/mail/resume"):
        assert (await client.post(path, headers=admin_reader)).status_code == 403
    cleanup = await client.post(
        "/maintenance/cleanup", json={"older_than_hours": 1}, headers=admin_reader
    )
    assert cleanup.status_code == 403
    listed = await client.get("/jobs", headers=bearer("token-admin"))
    assert len(listed.json()["items"]) == 1  # nothing was enqueued by the readers


@pytest.mark.parametrize(
    "scope",
    [{"tenant": "t", "role": "admin"}, {"tenant": "t", "extra": 1}, {"role": "read"}, 5, ""],
)
def test_a_token_scope_that_cannot_work_is_refused_at_start(scope: object) -> None:
    from async_jobs.domain.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        TokenAuth({"tok": scope})
