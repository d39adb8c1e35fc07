"""Bad input is refused with a typed error before it reaches any store."""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from async_jobs.domain.errors import InvalidJobError, PayloadTooLargeError
from async_jobs.domain.jobs import Priority, new_job_id
from async_jobs.domain.validation import build_new_job


def test_defaults_are_filled_in() -> None:
    job = build_new_job("echo")
    assert (job.tenant_id, job.use_case, job.priority) == ("default", "default", Priority.MEDIUM)
    assert (job.max_attempts, job.delay_seconds, job.payload, job.payload_json) == (
        3,
        0.0,
        {},
        "{}",
    )


def test_payload_is_encoded_once_compactly() -> None:
    job = build_new_job("echo", {"a": [1, "ü"]})
    assert job.payload_json == '{"a":[1,"ü"]}'


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"payload": [1, 2]}, "payload"),
        ({"payload": "text"}, "payload"),
        ({"payload": {"a": "nul\x00"}}, "payload"),
        ({"payload": {"nul\x00key": 1}}, "payload"),
        ({"payload": {"n": math.nan}}, "payload"),
        ({"payload": {"x": object()}}, "payload"),
        ({"payload": {1: "non-string key"}}, "payload"),
        ({"payload": {"s": "\ud800"}}, "payload"),
        ({"priority": "urgent"}, "priority"),
        ({"delay": -1}, "delay_seconds"),
        ({"delay": math.inf}, "delay_seconds"),
        ({"delay": 10**9}, "delay_seconds"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"max_attempts": 1.5}, "max_attempts"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"tenant_id": ""}, "tenant_id"),
        ({"tenant_id": " padded "}, None),
        ({"use_case": "x" * 201}, "use_case"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"webhook_url": "ftp://x"}, "webhook_url"),
        ({"run_at": datetime(2030, 1, 1)}, "run_at"),
        ({"run_at": datetime(2030, 1, 1, tzinfo=UTC), "delay": 5}, "run_at"),
    ],
)
def test_bad_input_is_refused(kwargs: dict[str, Any], field: str | None) -> None:
    payload = kwargs.pop("payload", None)
    with pytest.raises(InvalidJobError) as caught:
        build_new_job("echo", payload, **kwargs)
    if field is not None:
        assert caught.value.details.get("field") == field
    assert caught.value.http_status == 422


def test_deep_nesting_is_refused() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(100):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(InvalidJobError, match="nested"):
        build_new_job("echo", deep)


def test_a_huge_payload_is_refused_with_413() -> None:
    with pytest.raises(PayloadTooLargeError) as caught:
        build_new_job("echo", {"blob": "x" * 300_000})
    assert caught.value.http_status == 413


def test_job_type_must_be_printable() -> None:
    with pytest.raises(InvalidJobError):
        build_new_job("bad\ntype")


def test_job_ids_are_uuid7_in_the_order_they_were_made() -> None:
    before = int(time.time() * 1000)
    ids = [new_job_id() for _ in range(1000)]
    after = int(time.time() * 1000)
    assert len(set(ids)) == len(ids)
    for job_id in ids:
        assert (job_id.version, job_id.variant) == (7, uuid.RFC_4122)
        assert before <= job_id.int >> 80 <= after  # the millisecond it was made
    stamps = [job_id.int >> 80 for job_id in ids]
    assert stamps == sorted(stamps)
