"""OpenTelemetry traces, when ``opentelemetry-api`` is installed (``pip install
'async-job-server[otel]'``); without it nothing here imports it and every hook is a no-op.

The library only uses the API: the application (or ``opentelemetry-instrument``) installs
an SDK and its exporters. Spans follow the messaging semantic conventions:

- ``send {type}`` (PRODUCER) around an enqueue. Its context is injected as W3C
  ``traceparent``/``tracestate`` into the job's ``trace_context`` column, in the same
  INSERT as the job;
- ``process {type}`` (CONSUMER) around each attempt, in whichever process runs it, as a
  **child** of that send span: a job is one message, so its trace reads HTTP request ->
  send -> attempt 1, attempt 2... -> webhook delivery. A link would start a new trace per
  attempt, which suits batch consumers that mix messages of many traces; a worker here
  runs each job in a task of its own, so a parent keeps the whole story in one trace;
- ``POST`` (CLIENT) around each webhook delivery attempt, also a child of the send span,
  with ``traceparent`` sent to the receiver.

Attributes: ``messaging.system=async_jobs``, ``messaging.operation.type``,
``messaging.destination.name`` (the use case), ``messaging.message.id`` (the job id),
``async_jobs.type``, ``async_jobs.attempt``, ``async_jobs.tenant_id``. Never the payload,
the result, a token or a secret.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from async_jobs.domain.jobs import AttemptOutcome, Job, NewJob, OutcomeKind

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - the [otel] extra is not installed
    trace = None  # type: ignore[assignment]

SYSTEM = "async_jobs"
TRACER_NAME = "async_jobs"


def available() -> bool:
    return trace is not None


class Tracing:
    """The hooks the app, the worker and the webhook sender call; see the module docstring.
    ``Tracing.off()`` (or no ``opentelemetry-api``) makes each one cost a test of a flag."""

    def __init__(self, enabled: bool = True, tracer_provider: Any = None) -> None:
        """``tracer_provider``: an SDK ``TracerProvider`` of the app's own (default: the
        global one, as ``opentelemetry.trace.set_tracer_provider`` set it)."""
        self.enabled = enabled and trace is not None
        self._tracer: Any = None
        self._own_provider = tracer_provider is not None
        if self.enabled:
            self._tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)

    @classmethod
    def off(cls) -> Tracing:
        return cls(enabled=False)

    # With the API alone (no SDK installed, as where the [otel] extra comes with another
    # package) every span is a no-op that only passes a current context on: the hooks are
    # then skipped unless there is a context to pass on. That is about 13 us of a worker's
    # CPU per job and a few per enqueue, a fifth of what a no-op job costs the worker.

    def _recording(self) -> bool:
        """Whether spans are made: an SDK's tracer provider, given or global (set at any
        time: the global one is looked up on every call, as cheap as a dict lookup)."""
        return self._own_provider or not isinstance(
            trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        )

    def sending(self) -> bool:
        """Whether an enqueue now is worth ``send``: spans are recorded, or a trace is
        current (a request's ``traceparent``) for the stored context to continue."""
        return self.enabled and (
            self._recording() or trace.get_current_span().get_span_context().is_valid
        )

    def processing(self, job: Job) -> bool:
        """Whether an attempt of ``job`` is worth ``process``: spans are recorded, or the
        job carries a trace context (its log lines then carry that trace's ids)."""
        return self.enabled and (job.trace_context is not None or self._recording())

    # -- enqueue ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def send(self, jobs: Sequence[NewJob]) -> Iterator[None]:
        """Around storing ``jobs`` (one enqueue call): a PRODUCER span whose context every
        job carries."""
        if not self.enabled or not jobs:
            yield
            return
        first = jobs[0]
        attributes = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": first.use_case,
            "async_jobs.type": first.type,
            "async_jobs.tenant_id": first.tenant_id,
        }
        if len(jobs) == 1:
            attributes["messaging.message.id"] = str(first.id)
        with self._tracer.start_as_current_span(
            f"send {first.type}", kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:  # the jobs are all built: a batch is validated before its span
            carried = _carrier()
            for job in jobs:
                job.trace_context = carried
            yield
            if len(jobs) > 1:
                span.set_attribute("messaging.batch.message_count", len(jobs))

    # -- attempts ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def process(self, job: Job) -> Iterator[TracedSpan]:
        """Around one attempt: a CONSUMER span, child of the job's send span."""
        if not self.enabled:
            yield TracedSpan(None)
            return
        attributes = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": job.use_case,
            "messaging.message.id": str(job.id),
            "async_jobs.type": job.type,
            "async_jobs.attempt": job.attempts,
            "async_jobs.tenant_id": job.tenant_id,
        }
        with (
            _attached(job.trace_context),
            self._tracer.start_as_current_span(
                f"process {job.type}",
                kind=SpanKind.CONSUMER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span,
        ):
            yield TracedSpan(span)

    # -- webhooks ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def webhook(self, job: Job, url_host: str, attempt: int) -> Iterator[TracedSpan]:
        """Around one webhook delivery attempt: a CLIENT span in the job's trace."""
        if not self.enabled:
            yield TracedSpan(None)
            return
        attributes = {
            "http.request.method": "POST",
            "server.address": url_host,
            "messaging.message.id": str(job.id),
            "async_jobs.webhook.attempt": attempt,
            "async_jobs.tenant_id": job.tenant_id,
        }
        with (
            _attached(job.trace_context),
            self._tracer.start_as_current_span(
                "POST", kind=SpanKind.CLIENT, attributes=attributes
            ) as span,
        ):
            yield TracedSpan(span)

    def headers(self) -> dict[str, str]:
        """``traceparent`` (and ``tracestate``) of the current span, for an outgoing call."""
        carrier: dict[str, str] = {}
        if self.enabled:
            propagate.inject(carrier)
        return carrier


class TracedSpan:
    """The span of an attempt or delivery (or nothing), to end it with its outcome."""

    def __init__(self, span: Any) -> None:
        self.span = span

    def ids(self) -> dict[str, str]:
        """``trace_id`` and ``span_id`` for log lines (empty when not tracing)."""
        if self.span is None:
            return {}
        context = self.span.get_span_context()
        if not context.is_valid:
            return {}
        return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}

    def outcome(self, outcome: AttemptOutcome) -> None:
        if self.span is None:
            return
        self.span.set_attribute("async_jobs.outcome", outcome.kind.value)
        if outcome.kind is OutcomeKind.SUCCEEDED:
            self.span.set_status(Status(StatusCode.OK))
            return
        if outcome.error is not None and outcome.kind is not OutcomeKind.RELEASED:
            self.span.add_event(
                "exception",
                {
                    "exception.type": outcome.error.type,
                    "exception.message": outcome.error.message,
                    "exception.stacktrace": outcome.error.traceback or "",
                },
            )
        if outcome.kind in (OutcomeKind.FAILED, OutcomeKind.RETRY):
            description = outcome.error.type if outcome.error is not None else outcome.kind.value
            self.span.set_status(Status(StatusCode.ERROR, description))

    def delivered(self, ok: bool, status_code: int | None, error: str | None) -> None:
        if self.span is None:
            return
        if status_code is not None:
            self.span.set_attribute("http.response.status_code", status_code)
        if ok:
            self.span.set_status(Status(StatusCode.OK))
        else:
            self.span.set_status(Status(StatusCode.ERROR, error or "not delivered"))


def _carrier() -> str | None:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return json.dumps(carrier, sort_keys=True) if carrier else None


@contextlib.contextmanager
def request_context(headers: Mapping[str, str]) -> Iterator[None]:
    """The trace context an incoming request's headers carry (``traceparent``), current
    while the block runs, unless a span is current already (an instrumented server)."""
    if trace is None or trace.get_current_span().get_span_context().is_valid:
        yield
        return
    with _current(propagate.extract(headers)):
        yield


@contextlib.contextmanager
def _attached(trace_context: str | None) -> Iterator[None]:
    """A job's stored trace context (JSON of the W3C headers), current in the block."""
    try:
        carrier = json.loads(trace_context) if trace_context else None
    except ValueError:
        carrier = None
    if not isinstance(carrier, dict):
        yield
        return
    with _current(propagate.extract(carrier)):
        yield


@contextlib.contextmanager
def _current(context: Any) -> Iterator[None]:
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)
