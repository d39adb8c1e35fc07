"""What a broker message says: "job X, attempt N, may start now, under dispatch D".

The store stays the truth. A message carries no tenant, handler or payload, only the ticket
that lets a worker claim the job: the claim succeeds only while the job is still ``queued``
under that very dispatch and attempt, so a duplicate, late or forged message changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from typing import Any

from async_jobs.domain.jobs import Job, JobId, uuid_of_digits

# A ticket is a few dozen bytes; anything much larger is not one of ours.
MAX_MESSAGE_BYTES = 1024
MESSAGE_VERSION = 1
# The body ``to_message`` writes, exactly: such a body is read without a JSON parser or
# UUID's parsing (each runs once per job a worker receives). Any other well-formed ticket
# (another writer's spacing, upper-case digits) takes the general path.
_UUID_TEXT = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_OWN_FORMAT = re.compile(
    f'\\{{"v":{MESSAGE_VERSION},"job_id":"({_UUID_TEXT})","attempt":([1-9][0-9]{{0,8}}),'
    f'"dispatch_id":"({_UUID_TEXT})"\\}}'
)


class MalformedMessageError(ValueError):
    """A message that is not a ticket (its text says why)."""


@dataclasses.dataclass(frozen=True, slots=True)
class DispatchTicket:
    job_id: JobId
    attempt: int  # the attempt the worker will run: the job's attempts + 1 at dispatch
    dispatch_id: uuid.UUID

    @classmethod
    def of(cls, job: Job) -> DispatchTicket:
        """The ticket of a job just dispatched (``queued``, with its dispatch id)."""
        if job.dispatch_id is None:
            raise ValueError(f"job {job.id} has not been dispatched")
        return cls.after(job.id, job.attempts, job.dispatch_id)

    @classmethod
    def after(cls, job_id: JobId, attempts: int, dispatch_id: uuid.UUID) -> DispatchTicket:
        """The ticket of a job dispatched after ``attempts`` attempts: the worker runs the
        next one."""
        return cls(job_id, attempts + 1, dispatch_id)

    def to_message(self) -> str:
        """The compact JSON object ``{"v":1,"job_id":"...","attempt":N,"dispatch_id":"..."}``
        (the wire format every version reads), formatted directly: this runs for every job
        dispatched, and a UUID's and an int's text need no escaping."""
        return (
            f'{{"v":{MESSAGE_VERSION},"job_id":"{self.job_id}",'
            f'"attempt":{int(self.attempt)},"dispatch_id":"{self.dispatch_id}"}}'
        )

    @classmethod
    def from_message(cls, body: str) -> DispatchTicket:
        """Parse a message body; ``MalformedMessageError`` unless it is a well-formed ticket."""
        own = _OWN_FORMAT.fullmatch(body)
        if own is not None:
            job_id, attempt, dispatch_id = own.groups()
            return cls(
                JobId(uuid_of_digits(job_id.replace("-", ""))),
                int(attempt),
                uuid_of_digits(dispatch_id.replace("-", "")),
            )
        if len(body.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
            raise MalformedMessageError(f"the body is larger than {MAX_MESSAGE_BYTES} bytes")
        try:
            data: Any = json.loads(body)
        except ValueError as exc:
            raise MalformedMessageError(f"the body is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise MalformedMessageError("the body is not a JSON object")
        if data.get("v") != MESSAGE_VERSION:
            raise MalformedMessageError(f"unknown message version {data.get('v')!r}")
        attempt = data.get("attempt")
        if type(attempt) is not int or attempt < 1:
            raise MalformedMessageError("attempt must be a positive integer")
        try:
            job_id = uuid.UUID(data["job_id"])
            dispatch_id = uuid.UUID(data["dispatch_id"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedMessageError("job_id and dispatch_id must be UUIDs") from exc
        return cls(JobId(job_id), attempt, dispatch_id)


def truncated(body: str, limit: int = 200) -> str:
    """A message body fit for a log line."""
    return body if len(body) <= limit else f"{body[:limit]}... ({len(body)} characters)"
