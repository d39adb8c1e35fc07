"""Bad input is refused with a typed error before it reaches any store."""

from __future__ import annotations

import enum
import itertools
import json
import math
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import pytest

from async_jobs import EnqueueRequest, JobApp
from async_jobs.domain import jobs as jobs_module
from async_jobs.domain.errors import InvalidJobError, PayloadTooLargeError
from async_jobs.domain.jobs import Job, JobState, Priority, new_job_id
from async_jobs.domain.retry import Backoff
from async_jobs.domain.validation import build_new_job, storable_text


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


def test_the_payload_limit_counts_bytes_of_utf8() -> None:
    four_bytes_each = {"a": "\U0001f600" * 30}  # 38 characters, 128 bytes
    with pytest.raises(PayloadTooLargeError):
        build_new_job("echo", four_bytes_each, max_payload_bytes=100)
    two_bytes_each = {"a": "\u00e9" * 40}  # 48 characters, 88 bytes
    assert build_new_job("echo", two_bytes_each, max_payload_bytes=100).payload == two_bytes_each


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("plain", "plain"),
        ("café ☕", "café ☕"),
        ("a\x00b", "ab"),
        (b"caf\xff.txt".decode("utf-8", "surrogateescape"), "caf\\udcff.txt"),
        ("\ud800\x00é", "\\ud800é"),
    ],
)
def test_handler_text_is_made_storable_keeping_what_it_can(text: str, stored: str) -> None:
    assert storable_text(text) == stored
    stored.encode("utf-8")  # would raise for a lone surrogate


def test_job_type_must_be_printable() -> None:
    with pytest.raises(InvalidJobError):
        build_new_job("bad\ntype")


def test_job_ids_are_uuid7_in_the_order_they_were_made() -> None:
    before = int(time.time() * 1000)
    ids = [new_job_id() for _ in range(1000)]
    after = int(time.time() * 1000)
    for job_id in ids:
        assert (job_id.version, job_id.variant) == (7, uuid.RFC_4122)
        assert before <= job_id.int >> 80 <= after  # the millisecond it was made
    values = [job_id.int for job_id in ids]
    assert all(a < b for a, b in itertools.pairwise(values))  # strictly, not only by the ms


def test_job_ids_carry_the_fraction_of_their_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    start = 1_800_000_000_123 * 1_000_000  # a whole millisecond, in nanoseconds
    for offset_ns, fraction in ((0, 0), (250_000, 1024), (500_000, 2048), (999_999, 4095)):
        monkeypatch.setattr(jobs_module, "_last_clock", 0)
        monkeypatch.setattr(jobs_module, "_time_ns", lambda o=offset_ns: start + o)
        job_id = new_job_id()
        assert job_id.int >> 80 == 1_800_000_000_123
        assert job_id.int >> 64 & 0xFFF == fraction  # rand_a: 4,096ths of the millisecond


def test_job_ids_keep_increasing_when_the_clock_stands_still_or_goes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([5_000_000_000_000, 5_000_000_000_000, 4_000_000_000_000, 5_000_000_000_100])
    monkeypatch.setattr(jobs_module, "_last_clock", 0)
    monkeypatch.setattr(jobs_module, "_time_ns", lambda: next(clock))
    values = [new_job_id().int for _ in range(4)]
    assert all(a < b for a, b in itertools.pairwise(values))
    assert {v >> 80 for v in values} == {5_000_000}  # the step back did not go back


def test_job_ids_have_62_random_bits() -> None:
    ids = [new_job_id().int for _ in range(2000)]  # several refills of random bits
    ones = zeros = 0
    for value in ids:
        ones |= value
        zeros |= ~value
    random_part = (1 << 62) - 1  # rand_b; above it the variant, rand_a (time), the version
    assert bin(ones & zeros & random_part).count("1") == 62
    assert ones & zeros & (0xF << 76 | 0b11 << 62) == 0  # version and variant never vary


def test_job_ids_behave_as_parsed_uuids() -> None:
    for job_id in (new_job_id() for _ in range(600)):  # more than one refill of random bits
        parsed = uuid.UUID(str(job_id))
        assert parsed == job_id and hash(parsed) == hash(job_id)
        assert parsed.bytes == job_id.bytes and repr(parsed) == repr(job_id)


def test_a_forked_child_makes_other_ids_than_its_parent() -> None:
    new_job_id()  # random bits for the next ids are now held by this process
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without pytest's teardown
        os.close(reader)
        os.write(writer, "\n".join(str(new_job_id()) for _ in range(5)).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        child = {uuid.UUID(line) for line in pipe.read().split()}
    os.waitpid(pid, 0)
    parent = {new_job_id() for _ in range(5)}
    tail = (1 << 62) - 1  # the random bits: shared ones could give equal ids in one tick
    assert len(child) == 5 and not {i.int & tail for i in child} & {i.int & tail for i in parent}


@pytest.mark.parametrize(
    "payload",
    [
        {"big": 2**70, "small": -(2**63)},  # beyond 64 bits: the standard encoder's turn
        {"floats": [0.1, 1e16, -2.5e-300, 1.0], "text": 'ü\n\x01\u2028"\\'},
        {"nested": {"list": [1, True, None, [], {}], "tuple": (1, "two")}},
    ],
)
def test_payload_text_decodes_to_the_payload(payload: dict[str, Any]) -> None:
    job = build_new_job("echo", payload)
    assert json.loads(job.payload_json) == json.loads(json.dumps(payload))
    assert " " not in job.payload_json.replace('" "', "")  # compact


class Source(str, enum.Enum):  # noqa: UP042 - a StrEnum's str() is its value
    """A str enum: str() gives a member's name, the JSON encoders write its value."""

    LISTING = b"caf\xff.txt".decode("utf-8", "surrogateescape")
    NUL = "a\x00b"
    ESCAPED_NUL = "\\\x00"


@pytest.mark.parametrize("member", list(Source), ids=[m.name for m in Source])
def test_a_value_the_check_sees_only_by_name_is_refused_as_written(member: Source) -> None:
    with pytest.raises(InvalidJobError, match=r"not valid Unicode|NUL") as refused:
        build_new_job("echo", {"source": member})
    assert refused.value.details == {"field": "payload"}


def test_a_backslash_before_u0000_in_text_is_no_nul() -> None:
    payload = {"a": "\\u0000", "b": "\\\\u0000"}
    assert json.loads(build_new_job("echo", payload).payload_json) == payload


def test_a_mapping_that_is_not_a_dict_is_encoded_too() -> None:
    job = build_new_job("echo", MappingProxyType({"a": MappingProxyType({"b": 1})}))
    assert job.payload_json == '{"a":{"b":1}}'


@pytest.mark.parametrize("value", ["high", Priority.HIGH])
def test_priority_by_name_or_member(value: Any) -> None:
    assert build_new_job("echo", priority=value).priority is Priority.HIGH


@pytest.mark.parametrize("value", ["HIGH", " high", ["high"], {"high": 1}, 1, 1.5])
def test_priority_that_is_not_a_name_is_refused(value: Any) -> None:
    with pytest.raises(InvalidJobError, match="unknown priority"):
        build_new_job("echo", priority=value)


def test_a_stored_job_has_every_field_of_its_request() -> None:
    backoff = Backoff.from_json({"kind": "constant", "base_seconds": 2})
    new = build_new_job(
        "echo",
        {"a": 1},
        tenant_id="t",
        use_case="u",
        priority="high",
        max_attempts=7,
        delay_tolerance_seconds=9.5,
        timeout_seconds=4.0,
        idempotency_key="k",
        webhook_url="http://example.com/hook",
        backoff=backoff,
        expires_at=datetime(2100, 1, 1, tzinfo=UTC),
    )
    run_at, deadline_at, created_at = (datetime(2030, 1, d, tzinfo=UTC) for d in (1, 2, 3))
    assert new.stored(run_at, deadline_at, created_at) == Job(
        id=new.id,
        tenant_id="t",
        use_case="u",
        type="echo",
        payload={"a": 1},
        priority=Priority.HIGH,
        status=JobState.PENDING,
        attempts=0,
        max_attempts=7,
        run_at=run_at,
        delay_tolerance_seconds=9.5,
        deadline_at=deadline_at,
        timeout_seconds=4.0,
        idempotency_key="k",
        webhook_url="http://example.com/hook",
        progress=None,
        result=None,
        error=None,
        created_at=created_at,
        updated_at=created_at,
        started_at=None,
        finished_at=None,
        backoff=backoff,
        expires_at=datetime(2100, 1, 1, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("due", "expires_in"),
    [
        ({"delay": 600}, 60),  # due in 10 minutes, expiring in one
        ({"run_at": 600}, 60),
        ({"run_at": -23 * 3600}, -22 * 3600),  # due yesterday, expired an hour later
    ],
)
def test_a_job_must_not_expire_before_it_is_due_or_before_now(
    due: dict[str, float], expires_in: float
) -> None:
    now = datetime.now(UTC)
    when = {
        key: now + timedelta(seconds=value) if key == "run_at" else value
        for key, value in due.items()
    }
    with pytest.raises(InvalidJobError, match="later than now and than when the job is due") as no:
        build_new_job("echo", expires_at=now + timedelta(seconds=expires_in), **when)  # type: ignore[arg-type]
    assert no.value.details == {"field": "expires_at"}


def test_a_job_may_expire_any_time_after_it_is_due() -> None:
    soon = datetime.now(UTC) + timedelta(seconds=60)
    assert build_new_job("echo", delay=30, expires_at=soon).expires_at == soon


# -- a batch validates each request that differs from the one before in more than its payload
# and idempotency key, and those two in every request


def _first_of_batch() -> EnqueueRequest:
    return EnqueueRequest("echo", {"i": 0}, tenant_id="t", max_attempts=1, delay=1)


@pytest.mark.parametrize(
    "bad",
    [
        EnqueueRequest("echo", {"i": 1}, tenant_id="t", max_attempts=True, delay=1),  # == 1
        EnqueueRequest("echo", {"i": 1}, tenant_id="t", max_attempts=1.0, delay=1),  # == 1
        EnqueueRequest("echo", {"i": 1}, tenant_id="t", max_attempts=1, delay=True),  # == 1
        EnqueueRequest("echo", {"i": 1}, tenant_id="t ", max_attempts=1, delay=1),
        EnqueueRequest("echo", [1], tenant_id="t", max_attempts=1, delay=1),  # type: ignore[arg-type]
        EnqueueRequest("echo", {"i": math.nan}, tenant_id="t", max_attempts=1, delay=1),
        EnqueueRequest(
            "echo", {"i": 1}, tenant_id="t", max_attempts=1, delay=1, idempotency_key=""
        ),
        EnqueueRequest("echo", {"i": 1}, tenant_id="t", max_attempts=1, delay=1, idempotency_key=5),  # type: ignore[arg-type]
    ],
)
async def test_a_batch_refuses_a_request_that_differs_only_slightly(bad: EnqueueRequest) -> None:
    async with JobApp("memory://") as app:
        with pytest.raises(InvalidJobError):
            await app.enqueue_many([_first_of_batch(), _first_of_batch(), bad])
        assert (await app.list_jobs()).items == []


async def test_a_batch_refuses_a_backoff_equal_to_a_valid_one_but_not_valid() -> None:
    good = {"kind": "constant", "base_seconds": 1}
    bad = {"kind": "constant", "base_seconds": True}  # equal to good, but not a number
    async with JobApp("memory://") as app:
        with pytest.raises(InvalidJobError, match="base_seconds"):
            await app.enqueue_many(
                [EnqueueRequest("echo", backoff=good), EnqueueRequest("echo", backoff=bad)]
            )


async def test_each_job_of_a_batch_has_its_own_fields() -> None:
    shared = {"tenant_id": "t", "priority": "high", "max_attempts": 4}
    requests = [
        EnqueueRequest("echo", {"i": 0}, **shared),  # type: ignore[arg-type]
        EnqueueRequest("echo", {"i": 1}, idempotency_key="k1", **shared),  # type: ignore[arg-type]
        EnqueueRequest("echo", {"i": 2}, idempotency_key="k2", **shared),  # type: ignore[arg-type]
        EnqueueRequest("echo", {"i": 3}, tenant_id="other", max_attempts=4),
        EnqueueRequest("echo", {"i": 4}, tenant_id="other", max_attempts=4),
        EnqueueRequest("say_hello", {"i": 5}, tenant_id="other", max_attempts=4),
    ]
    async with JobApp("memory://") as app:
        jobs = await app.enqueue_many(requests)
    assert [j.payload for j in jobs] == [{"i": i} for i in range(6)]
    assert [j.idempotency_key for j in jobs] == [None, "k1", "k2", None, None, None]
    assert [j.tenant_id for j in jobs] == ["t"] * 3 + ["other"] * 3
    assert [j.priority for j in jobs] == [Priority.HIGH] * 3 + [Priority.MEDIUM] * 3
    assert [j.type for j in jobs] == ["echo"] * 5 + ["say_hello"]
    assert {j.max_attempts for j in jobs} == {4}
    assert len({j.id for j in jobs}) == 6
