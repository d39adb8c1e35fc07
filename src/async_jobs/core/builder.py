"""Enqueue requests made into ``NewJob`` rows: validated, with the defaults of their handler
and use case filled in, and the batch fast path (``built``) that validates a run of like
requests only in what differs between them."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from async_jobs.core.registry import HandlerOptions, Registry
from async_jobs.core.settings import Settings
from async_jobs.domain.errors import UnknownJobTypeError
from async_jobs.domain.jobs import DEFAULT_USE_CASE, NewJob
from async_jobs.domain.requests import EnqueueRequest
from async_jobs.domain.scheduling import Limits
from async_jobs.domain.validation import build_like, build_new_job
from async_jobs.domain.webhooks import check_webhook_target

T = TypeVar("T")


class JobBuilder:
    """Validates an app's enqueue requests against its handlers, settings and quotas."""

    def __init__(
        self, registry: Registry, settings: Settings, limits: Limits, strict_types: bool | None
    ) -> None:
        """``strict_types``: see ``JobApp``."""
        self.registry = registry
        self.settings = settings
        self.limits = limits
        self.strict_types = strict_types
        self._webhook_allow = settings.webhook_allow_list()

    def built(self, requests: Iterable[EnqueueRequest], into: list[NewJob]) -> Iterator[NewJob]:
        """Each request validated, in order (appended to ``into`` too). A request that
        differs from the one before at most in payload and idempotency key is validated
        only in those two (``build_like``)."""
        before: tuple[object, ...] = ()
        for request in requests:
            options = _options(request)
            if before and _same_options(options, before):
                new = build_like(into[-1], request.payload, request.idempotency_key)
            else:
                new = self.build(request)
            into.append(new)
            before = options
            yield new

    def build(self, request: EnqueueRequest) -> NewJob:
        """Validate a request and fill in the defaults of its handler and use case."""
        handler = self.registry.get(request.type)
        if handler is None and self._requires_known_types():
            known = ", ".join(sorted(self.registry.types)) or "none"
            raise UnknownJobTypeError(
                f"unknown job type {request.type!r}; registered types: {known}", field="type"
            )
        default = handler or _NO_HANDLER
        use_case = _first(request.use_case, default.use_case)
        tolerance = _first(request.delay_tolerance_seconds, default.delay_tolerance_seconds)
        if tolerance is None:
            named = DEFAULT_USE_CASE if use_case is None else use_case  # as build_new_job does
            tolerance = self.settings.delay_tolerance_for(named)
        new = build_new_job(
            request.type,
            request.payload,
            tenant_id=request.tenant_id,
            use_case=use_case,
            priority=_first(request.priority, default.priority),
            max_attempts=_first(request.max_attempts, default.max_attempts),
            delay=request.delay,
            run_at=request.run_at,
            delay_tolerance_seconds=tolerance,
            timeout_seconds=_first(request.timeout_seconds, default.timeout_seconds),
            idempotency_key=request.idempotency_key,
            webhook_url=request.webhook_url,
            backoff=request.backoff,
            expires_at=request.expires_at,
        )
        if new.webhook_url is not None:
            check_webhook_target(new.webhook_url, self._webhook_allow)
        if self.limits.quotas:
            quota = self.limits.quota(new.tenant_id, new.use_case)
            if quota is not None and quota.max_pending is not None:
                new.max_pending = quota.max_pending
        return new

    def _requires_known_types(self) -> bool:
        if self.strict_types is not None:
            return self.strict_types
        return len(self.registry) > 0


_NO_HANDLER = HandlerOptions()


# The fields of a request that build() validates and fills in: all but the payload and the
# idempotency key; the backoff first.
_options: Callable[[EnqueueRequest], tuple[object, ...]] = operator.attrgetter(
    "backoff",
    *(
        field.name
        for field in dataclasses.fields(EnqueueRequest)
        if field.name not in ("payload", "idempotency_key", "backoff")
    ),
)


def _same_options(mine: tuple[object, ...], theirs: tuple[object, ...]) -> bool:
    """Whether a request with the options ``mine`` validates as one with ``theirs`` did but
    for its payload and key: each option is the same object, or an equal value of the same
    type (1 and True are equal, but only one of them is a valid max_attempts). A backoff
    must be the same object: equal mappings may still hold values of different types."""
    if all(map(operator.is_, mine, theirs)):
        return True
    return (
        mine[0] is theirs[0] and mine == theirs and list(map(type, mine)) == list(map(type, theirs))
    )


def _first(own: T | None, default: T | None) -> T | None:
    """A request's own value when it gave one, else its handler's default."""
    return own if own is not None else default
