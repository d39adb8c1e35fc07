"""The OpenAPI document of ``create_api`` says what the API does.

The document declares every route with its method, the request bodies and query parameters
(with their bounds), and per route every status it answers, each with the model of its body
(``async_jobs.api.schemas``): the job, a page of jobs, the batch answer, use cases, stats,
cleanup and health for successes, and one error body, ``{"error": {"code", "message",
"details"?}}``, for every error status (FastAPI's own 422 schema is replaced by it) and for
``default`` (anything unforeseen). 401 and 403 are declared only when tokens are configured.

Checked here: the statuses each route declares, against a table; and real answers of every
route, for every declared status (successes, ``?wait``'s 200 and 202, and errors from 400 to
503, on every store), are each declared and match their schema, validated by schemathesis.
The routes answer JSON the domain prepared, not their models, so these checks are what keeps
the two in step.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI

from async_jobs import JobApp, Settings, WorkerConfig
from async_jobs.api import create_api
from async_jobs.api.router import MAX_WAIT_SECONDS
from async_jobs.api.schemas import JobCreate, JobResponse
from async_jobs.app import MAX_PAGE_SIZE
from async_jobs.domain.scheduling import TenantQuota
from async_jobs.stores import store_from_dsn

# What these tests check lies above the store: they run on the memory store, and one smoke
# test on every store (the store suites cover the stores).
pytestmark = pytest.mark.stores("memory")

README = Path(__file__).resolve().parents[2] / "README.md"


TOKENS = {"token-admin": "*", "token-a": "tenant-a"}


def _api(dsn: str = "memory://", settings: Settings | None = None) -> FastAPI:
    jobs = JobApp(
        settings=settings or Settings(),
        store=store_from_dsn(dsn),
        handler_modules=["async_jobs.demo"],
    )
    return create_api(
        jobs, worker=WorkerConfig(concurrency=2, poll_interval_seconds=0.05), migrate=True
    )


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return _api().openapi()


def _normal(path: str) -> str:
    """``/jobs/{id}`` and ``/jobs/{job_id}`` are the same route."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def readme_routes() -> set[tuple[str, str]]:
    """(method, path) of every route in the README's HTTP API table; ``.../resume`` after
    ``POST /use-cases/{name}/pause`` is ``POST /use-cases/{name}/resume``."""
    section = README.read_text().split("\n## HTTP API\n", 1)[1]
    section = re.split(r"\n##+ ", section, maxsplit=1)[0]
    routes: set[tuple[str, str]] = set()
    for row in section.splitlines():
        if not re.match(r"\| `(GET|POST|PUT|PATCH|DELETE) /", row):
            continue  # not a route: another table's row, or prose
        method, path = "", ""
        for named in re.findall(r"`([^`]+)`", row.split("|")[1]):
            if named.startswith("..."):
                path = path.rsplit("/", 1)[0] + named[3:]
            else:
                method, path = named.split(" ", 1)
            routes.add((method, _normal(path)))
    return routes


def documented_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), _normal(path))
        for path, operations in document["paths"].items()
        for method in operations
    }


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    name = ref.removeprefix("#/components/schemas/")
    resolved: dict[str, Any] = document["components"]["schemas"][name]
    return resolved


def test_every_route_of_the_readme_is_documented_with_its_method(
    document: dict[str, Any],
) -> None:
    readme = readme_routes()
    assert {("POST", "/jobs"), ("GET", "/jobs/{}"), ("POST", "/use-cases/{}/resume")} <= readme
    assert len(readme) >= 12
    missing = readme - documented_routes(document)
    assert not missing, f"in the README's table but not in the OpenAPI document: {missing}"


def test_post_jobs_body_lists_every_field_of_job_create(document: dict[str, Any]) -> None:
    operation = document["paths"]["/jobs"]["post"]
    assert operation["requestBody"]["required"] is True
    declared = operation["requestBody"]["content"]["application/json"]["schema"]
    body = _resolve(document, declared)
    assert set(body["properties"]) == set(JobCreate.model_fields)
    assert body["required"] == ["type"]
    assert body["additionalProperties"] is False  # extra="forbid": unknown fields are a 422
    priority = _resolve(document, body["properties"]["priority"]["anyOf"][0])
    assert set(priority["enum"]) == {"critical", "high", "medium", "low"}


@pytest.mark.parametrize(("method", "path"), [("post", "/jobs"), ("get", "/jobs/{job_id}")])
def test_wait_is_documented_with_its_bounds(
    document: dict[str, Any], method: str, path: str
) -> None:
    parameters = document["paths"][path][method]["parameters"]
    (wait,) = [p for p in parameters if p["name"] == "wait"]
    assert wait["in"] == "query"
    assert not wait.get("required", False)
    assert wait["description"]
    (number,) = [s for s in wait["schema"]["anyOf"] if s.get("type") == "number"]
    assert (number["minimum"], number["maximum"]) == (0, MAX_WAIT_SECONDS) == (0, 60)


def test_list_limit_is_documented_with_its_bounds(document: dict[str, Any]) -> None:
    parameters = document["paths"]["/jobs"]["get"]["parameters"]
    (limit,) = [p for p in parameters if p["name"] == "limit"]
    assert limit["schema"]["minimum"] == 1
    assert limit["schema"]["maximum"] == MAX_PAGE_SIZE
    assert limit["schema"]["default"] == 100
    names = {p["name"] for p in parameters}
    assert names >= {"status", "use_case", "type", "tenant_id", "created_after", "cursor"}


# -- declared statuses ------------------------------------------------------------------------

OPEN_STATUSES: dict[tuple[str, str], set[int]] = {
    ("POST", "/jobs"): {200, 201, 202, 400, 409, 413, 415, 422, 429, 503},
    ("POST", "/jobs/batch"): {200, 201, 400, 409, 413, 415, 422, 429, 503},
    ("GET", "/jobs"): {200, 400, 422, 503},
    ("GET", "/jobs/{job_id}"): {200, 202, 404, 422, 503},
    ("POST", "/jobs/{job_id}/cancel"): {200, 404, 409, 503},
    ("DELETE", "/jobs/{job_id}"): {200, 404, 409, 503},
    ("POST", "/jobs/{job_id}/retry"): {200, 404, 409, 503},
    ("GET", "/use-cases"): {200, 503},
    ("POST", "/use-cases/{name}/pause"): {200, 422, 503},
    ("POST", "/use-cases/{name}/resume"): {200, 422, 503},
    ("GET", "/stats"): {200, 422, 503},
    ("POST", "/maintenance/cleanup"): {200, 400, 413, 415, 422, 503},
    ("GET", "/health"): {200, 503},
}
# Probes and scrapes: open with tokens too, answered by their own bodies.
OPS_STATUSES = {("GET", "/health/ready"): {200, 503}, ("GET", "/metrics"): {200}}
# With tokens: 401 everywhere but /health, and 403 where a tenant's token may be refused.
FORBIDDEN = {
    ("POST", "/jobs"),
    ("POST", "/jobs/batch"),
    ("GET", "/jobs"),
    ("GET", "/use-cases"),
    ("POST", "/use-cases/{name}/pause"),
    ("POST", "/use-cases/{name}/resume"),
    ("GET", "/stats"),
    ("POST", "/maintenance/cleanup"),
}
JSON = {"content-type": "application/json"}
UNKNOWN_ID = "00000000-0000-0000-0000-000000000000"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def declared_statuses(document: dict[str, Any]) -> set[tuple[str, str, int]]:
    """(method, path, status) of every response the document declares (``default`` aside)."""
    return {
        (method.upper(), path, int(status))
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        for status in operation["responses"]
        if status != "default"
    }


def expected_statuses(tokens: bool) -> set[tuple[str, str, int]]:
    every = {**OPEN_STATUSES, **OPS_STATUSES}
    expected = {(m, p, s) for (m, p), statuses in every.items() for s in statuses}
    if tokens:
        expected |= {(m, p, 401) for m, p in OPEN_STATUSES if p != "/health"}
        expected |= {(m, p, 403) for m, p in FORBIDDEN}
    return expected


@pytest.mark.parametrize("tokens", [False, True], ids=["open", "tokens"])
def test_each_route_declares_every_status_it_answers(tokens: bool) -> None:
    settings = Settings(api_tokens=TOKENS) if tokens else Settings()
    document = _api(settings=settings).openapi()
    assert declared_statuses(document) == expected_statuses(tokens)
    for operations in document["paths"].values():
        for operation in operations.values():
            assert "default" in operation["responses"]  # anything unforeseen: the error body


def _ref(response: dict[str, Any]) -> str:
    ref: str = response["content"]["application/json"]["schema"]["$ref"]
    return ref.removeprefix("#/components/schemas/")


def test_every_error_is_declared_with_the_one_error_body() -> None:
    document = _api(settings=Settings(api_tokens=TOKENS)).openapi()
    assert "HTTPValidationError" not in document["components"]["schemas"]  # FastAPI's 422
    for path, operations in document["paths"].items():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if status == "default" or int(status) >= 400:
                    health = path == "/health" and status == "503"
                    ready = path == "/health/ready" and status == "503"
                    expected = "ReadinessResponse" if ready else "ErrorResponse"
                    assert _ref(response) == ("HealthResponse" if health else expected)
                if status in ("429", "503"):
                    assert "Retry-After" in response["headers"]
                if status == "401":
                    assert "WWW-Authenticate" in response["headers"]
    error = document["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]
    inner = _resolve(document, error["properties"]["error"])
    assert inner["required"] == ["code", "message"]
    assert set(inner["properties"]) == {"code", "message", "details"}


def test_success_bodies_are_declared_with_their_models(document: dict[str, Any]) -> None:
    models = {
        ("post", "/jobs"): "JobResponse",
        ("post", "/jobs/batch"): "JobBatchResponse",
        ("get", "/jobs"): "JobPageResponse",
        ("get", "/jobs/{job_id}"): "JobResponse",
        ("post", "/jobs/{job_id}/cancel"): "JobResponse",
        ("delete", "/jobs/{job_id}"): "JobResponse",
        ("post", "/jobs/{job_id}/retry"): "JobResponse",
        ("get", "/use-cases"): "UseCaseListResponse",
        ("post", "/use-cases/{name}/pause"): "UseCaseResponse",
        ("post", "/use-cases/{name}/resume"): "UseCaseResponse",
        ("get", "/stats"): "StatsResponse",
        ("post", "/maintenance/cleanup"): "CleanupResponse",
        ("get", "/health"): "HealthResponse",
        ("get", "/health/ready"): "ReadinessResponse",
    }
    for (method, path), model in models.items():
        responses = document["paths"][path][method]["responses"]
        for status, response in responses.items():
            if status != "default" and int(status) < 400:
                assert _ref(response) == model, (method, path, status)
    job = document["components"]["schemas"]["JobResponse"]
    assert set(job["required"]) == set(job["properties"]) == set(JobResponse.model_fields)


# -- real answers -------------------------------------------------------------------------------


class Answers:
    """Real answers checked against a document: each status declared for its operation, each
    body valid against the schema declared for that status (schemathesis); what was checked
    is kept in ``checked`` as (method, path, status)."""

    def __init__(self, http: httpx.AsyncClient, document: dict[str, Any]) -> None:
        self.http = http
        self.document = document
        self.schema = schemathesis.openapi.from_dict(document)
        self.checked: set[tuple[str, str, int]] = set()

    def check(self, path: str, response: httpx.Response, status: int) -> dict[str, Any]:
        method = response.request.method
        assert response.status_code == status, response.text
        declared = self.document["paths"][path][method.lower()]["responses"]
        assert str(status) in declared, f"{method} {path} answers {status}, undocumented"
        self.schema[path][method].validate_response(response)  # raises when it does not match
        self.checked.add((method, path, status))
        body: dict[str, Any] = response.json()
        if status >= 400 and path not in ("/health", "/health/ready"):
            assert set(body) == {"error"} and body["error"]["code"], body
            assert "Traceback" not in response.text
        return body


@contextlib.asynccontextmanager
async def answers(app: FastAPI, lifespan: bool = True) -> AsyncIterator[Answers]:
    async with contextlib.AsyncExitStack() as stack:
        if lifespan:
            await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        http = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://test")
        )
        yield Answers(http, app.openapi())


@pytest.fixture
async def open_api(any_dsn: str) -> AsyncIterator[Answers]:
    """The open app (no tokens) on each store in turn, with a worker."""
    async with answers(_api(any_dsn)) as checked:
        yield checked


@pytest.mark.stores("memory", "sqlite", "postgres")  # the smoke test on every store
async def test_real_answers_of_every_route_match_the_document(open_api: Answers) -> None:
    a, http = open_api, open_api.http
    keyed = {"type": "echo", "payload": {"a": 1}, "idempotency_key": "k1"}
    job = a.check("/jobs", await http.post("/jobs", json=keyed), 201)
    assert set(job) == set(JobResponse.model_fields)  # the model has every field, no more
    a.check("/jobs", await http.post("/jobs", json=keyed), 200)  # the same key again
    ended = a.check("/jobs", await http.post("/jobs?wait=10", json={"type": "echo"}), 200)
    assert ended["status"] == "succeeded"
    failed = a.check(
        "/jobs", await http.post("/jobs?wait=10", json={"type": "fail", "max_attempts": 1}), 200
    )
    assert failed["status"] == "failed" and failed["error"]["type"] == "DemoFailure"
    expires = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    later_body = {
        "type": "echo",
        "delay_seconds": 3600,
        "expires_at": expires,
        "backoff": {"kind": "constant", "base_seconds": 5},
        "webhook_url": "https://example.com/hook",
    }
    later = a.check("/jobs", await http.post("/jobs?wait=0.05", json=later_body), 202)
    a.check("/jobs/{job_id}", await http.get(f"/jobs/{later['id']}?wait=0.05"), 202)
    shown = a.check("/jobs/{job_id}", await http.get(f"/jobs/{later['id']}"), 200)
    assert shown["webhook"] == {"status": None, "attempts": 0, "deliveries": []}
    a.check("/jobs/{job_id}", await http.get(f"/jobs/{job['id']}?wait=10"), 200)
    batch = {"jobs": [{"type": "echo", "idempotency_key": "b1"}, {"type": "echo"}]}
    a.check("/jobs/batch", await http.post("/jobs/batch", json=batch), 201)
    repeat = {"jobs": [batch["jobs"][0]]}
    a.check("/jobs/batch", await http.post("/jobs/batch", json=repeat), 200)
    page = a.check("/jobs", await http.get("/jobs?limit=2"), 200)
    a.check("/jobs", await http.get(f"/jobs?limit=2&cursor={page['next_cursor']}"), 200)
    a.check("/jobs/{job_id}/cancel", await http.post(f"/jobs/{later['id']}/cancel"), 200)
    a.check("/jobs/{job_id}/retry", await http.post(f"/jobs/{later['id']}/retry"), 200)
    delayed = (await http.post("/jobs", json={"type": "echo", "delay_seconds": 3600})).json()
    deleted = a.check("/jobs/{job_id}", await http.delete(f"/jobs/{delayed['id']}"), 200)
    assert deleted["status"] == "cancelled"  # DELETE is cancel
    a.check("/use-cases/{name}/pause", await http.post("/use-cases/reports/pause"), 200)
    a.check("/use-cases/{name}/resume", await http.post("/use-cases/reports/resume"), 200)
    a.check("/use-cases", await http.get("/use-cases"), 200)
    a.check("/stats", await http.get("/stats"), 200)
    cleanup = await http.post("/maintenance/cleanup", json={"older_than_hours": 1})
    a.check("/maintenance/cleanup", cleanup, 200)
    a.check("/health", await http.get("/health"), 200)
    ready = a.check("/health/ready", await http.get("/health/ready"), 200)
    assert set(ready["components"]) == {"store", "migrations", "transport"}
    metrics = await http.get("/metrics")  # text, not JSON: checked by hand
    assert metrics.status_code == 200 and "async_jobs_jobs_enqueued_total" in metrics.text
    assert (
        metrics.headers["content-type"]
        in a.document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    )
    a.checked.add(("GET", "/metrics", 200))
    assert a.checked == {s for s in declared_statuses(a.document) if s[2] < 400}


async def test_real_error_answers_of_every_route_match_the_document(open_api: Answers) -> None:
    """Every error status the open app declares, but 429 and 503 (tests below)."""
    a, http = open_api, open_api.http
    a.check("/jobs/{job_id}", await http.get(f"/jobs/{UNKNOWN_ID}"), 404)
    a.check("/jobs/{job_id}/cancel", await http.post(f"/jobs/{UNKNOWN_ID}/cancel"), 404)
    a.check("/jobs/{job_id}/retry", await http.post(f"/jobs/{UNKNOWN_ID}/retry"), 404)
    done = (await http.post("/jobs?wait=10", json={"type": "echo"})).json()
    assert done["status"] == "succeeded"
    refused = a.check("/jobs/{job_id}/cancel", await http.post(f"/jobs/{done['id']}/cancel"), 409)
    assert refused["error"] == {
        "code": "invalid_transition",
        "message": refused["error"]["message"],
        "details": {"status": "succeeded"},
    }
    a.check("/jobs/{job_id}/retry", await http.post(f"/jobs/{done['id']}/retry"), 409)
    a.check("/jobs/{job_id}", await http.delete(f"/jobs/{done['id']}"), 409)
    a.check("/jobs/{job_id}", await http.delete(f"/jobs/{UNKNOWN_ID}"), 404)
    keyed = {"type": "echo", "idempotency_key": "k", "delay_seconds": 60}
    assert (await http.post("/jobs", json=keyed)).status_code == 201
    other = {**keyed, "payload": {"other": 1}}
    a.check("/jobs", await http.post("/jobs", json=other), 409)
    a.check("/jobs/batch", await http.post("/jobs/batch", json={"jobs": [other]}), 409)
    for path in ("/jobs", "/jobs/batch", "/maintenance/cleanup"):
        a.check(path, await http.post(path, content=b"{not json", headers=JSON), 400)
        as_text = {"content-type": "text/plain"}
        a.check(path, await http.post(path, content=b'{"jobs": []}', headers=as_text), 415)
        huge = b'{"x": "' + b"x" * (2 * 1024 * 1024) + b'"}'
        a.check(path, await http.post(path, content=huge, headers=JSON), 413)
    a.check("/jobs", await http.get("/jobs?cursor=forged"), 400)
    big = {"type": "echo", "payload": {"x": "x" * 300_000}}  # over 256 KiB, under 1 MiB
    assert a.check("/jobs", await http.post("/jobs", json=big), 413)["error"]["details"]
    a.check("/jobs/batch", await http.post("/jobs/batch", json={"jobs": [big]}), 413)
    missing = a.check("/jobs", await http.post("/jobs", json={"payload": {}}), 422)
    assert missing["error"]["details"]["problems"][0]["field"] == "type"
    a.check("/jobs", await http.post("/jobs", json={"type": "no_such_type"}), 422)
    a.check("/jobs/batch", await http.post("/jobs/batch", json={"jobs": []}), 422)
    a.check("/jobs", await http.get("/jobs?limit=0"), 422)
    a.check("/jobs/{job_id}", await http.get(f"/jobs/{done['id']}?wait=61"), 422)
    a.check("/use-cases/{name}/pause", await http.post("/use-cases/%20padded/pause"), 422)
    a.check("/use-cases/{name}/resume", await http.post("/use-cases/%20padded/resume"), 422)
    a.check("/stats", await http.get("/stats?tenant_id=%00"), 422)
    negative = {"older_than_hours": -1}
    a.check("/maintenance/cleanup", await http.post("/maintenance/cleanup", json=negative), 422)
    errors = {s for s in declared_statuses(a.document) if s[2] >= 400}
    assert a.checked == {s for s in errors if s[2] not in (429, 503)}


async def test_real_answers_with_tokens_and_a_quota_match_the_document(any_dsn: str) -> None:
    """401 on every route but /health, 403 wherever a tenant's token may be refused, 429."""
    quota = {"tenant-a": {"default": TenantQuota(max_pending=1)}}
    app = _api(any_dsn, Settings(api_tokens=TOKENS, per_tenant_quotas=quota))
    async with answers(app) as a:
        http = a.http
        for method, path in OPEN_STATUSES:
            if path != "/health":
                url = path.format(job_id=UNKNOWN_ID, name="reports")
                refused = a.check(path, await http.request(method, url), 401)
                assert refused["error"]["code"] == "unauthorized"
        tenant = bearer("token-a")
        foreign = {"type": "echo", "tenant_id": "tenant-b"}
        a.check("/jobs", await http.post("/jobs", json=foreign, headers=tenant), 403)
        foreign_batch = {"jobs": [foreign]}
        a.check(
            "/jobs/batch", await http.post("/jobs/batch", json=foreign_batch, headers=tenant), 403
        )
        a.check("/jobs", await http.get("/jobs?tenant_id=tenant-b", headers=tenant), 403)
        a.check("/stats", await http.get("/stats?tenant_id=tenant-b", headers=tenant), 403)
        a.check("/use-cases", await http.get("/use-cases", headers=tenant), 403)
        for action in ("pause", "resume"):
            url = f"/use-cases/reports/{action}"
            a.check(f"/use-cases/{{name}}/{action}", await http.post(url, headers=tenant), 403)
        cleanup = await http.post("/maintenance/cleanup", json={}, headers=tenant)
        a.check("/maintenance/cleanup", cleanup, 403)
        waiting = {"type": "echo", "delay_seconds": 3600}
        a.check("/jobs", await http.post("/jobs", json=waiting, headers=tenant), 201)
        over = await http.post("/jobs", json=waiting, headers=tenant)
        assert a.check("/jobs", over, 429)["error"]["code"] == "quota_exceeded"
        assert int(over.headers["retry-after"]) >= 1
        more = {"jobs": [waiting, waiting]}
        a.check("/jobs/batch", await http.post("/jobs/batch", json=more, headers=tenant), 429)
        listed = await http.get("/jobs", headers=bearer("token-admin"))
        assert len(listed.json()["items"]) == 1  # the refused ones were not stored
    assert a.checked >= {s for s in declared_statuses(a.document) if s[2] in (401, 403, 429)}


async def test_real_answers_when_the_store_is_down_match_the_document() -> None:
    """503 on every route, /health's with its own body: a store nobody listens to."""
    jobs = JobApp(
        settings=Settings(),
        store=store_from_dsn("postgresql://postgres@127.0.0.1:1/none"),
        handler_modules=["async_jobs.demo"],
    )
    bodies = {
        "/jobs": {"type": "echo"},
        "/jobs/batch": {"jobs": [{"type": "echo"}]},
        "/maintenance/cleanup": {},
    }
    async with answers(create_api(jobs), lifespan=False) as a:
        for method, path in OPEN_STATUSES:
            url = path.format(job_id=UNKNOWN_ID, name="reports")
            body = bodies.get(path) if method == "POST" else None
            answer = await a.http.request(method, url, json=body)
            assert answer.headers["retry-after"]
            a.check(path, answer, 503)
        health = a.check("/health", await a.http.get("/health"), 503)
        assert health["status"] == "unavailable"
        ready = await a.http.get("/health/ready")
        assert ready.headers["retry-after"]
        assert (
            a.check("/health/ready", ready, 503)["components"]["store"]["status"] == "unavailable"
        )
    assert a.checked == {s for s in declared_statuses(a.document) if s[2] == 503}
