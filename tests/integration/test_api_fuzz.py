"""Schemathesis fuzzes every operation of the OpenAPI document against the in-process app on
the memory store: no answer may be a 500, and an answer must match the response schema the
document declares for its status. The document declares every status the API answers with its
body (errors included, and ``default`` for anything else), so every answer is checked.

Bounded: a few examples per operation, a fixed seed (``derandomize``), no example database,
and ``?wait`` capped at 50 ms (no worker runs here, so a valid job would otherwise be waited
for up to the documented 60 s). Generated jobs get the type ``echo`` so that their other fields
reach the domain's validation and the store.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from async_jobs import JobApp
from async_jobs.api import create_api

MAX_EXAMPLES = 20
WAIT_CAP_SECONDS = 0.05

jobs = JobApp("memory://", handler_modules=["async_jobs.demo"])
app = create_api(jobs, migrate=True)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
schema.config.generation.update(
    modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
    deterministic=True,
)


@schema.hook
def map_query(context: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    """Keep ``?wait`` short: the bound itself is checked by test_openapi.py."""
    if query is None:
        return query
    wait = query.get("wait")
    if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > WAIT_CAP_SECONDS:
        query["wait"] = WAIT_CAP_SECONDS
    return query


@schema.hook
def map_body(context: Any, body: Any) -> Any:
    """Give generated jobs a type the app has a handler for, so the rest of each body gets past
    the type check and is fuzzed too (unknown types are still sent by the coverage phase)."""
    if context.operation is None or context.operation.method.upper() != "POST":
        return body
    if context.operation.path == "/jobs":
        _known_type(body)
    elif context.operation.path == "/jobs/batch" and isinstance(body, dict):
        for item in body.get("jobs") if isinstance(body.get("jobs"), list) else ():
            _known_type(item)
    return body


def _known_type(job: Any) -> None:
    if isinstance(job, dict) and isinstance(job.get("type"), str):
        job["type"] = "echo"


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_never_answers_500_and_matches_its_declared_schemas(
    case: schemathesis.Case[Any],
) -> None:
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])
