"""Handlers and their defaults, kept on the app instance (never in a module global).

A module marks its handlers with ``@job(...)``; marking only attaches options to the object.
``Registry.add_module`` then finds the marked objects of an imported module. An app can also
register directly with ``app.job(...)``.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, Unpack

from async_jobs.domain.errors import ConfigurationError, HandlerRegistrationError
from async_jobs.domain.jobs import Priority
from async_jobs.domain.retry import DEFAULT_BACKOFF, Backoff
from async_jobs.domain.validation import check_name, parse_priority

if TYPE_CHECKING:
    from async_jobs.core.context import JobContext

T = TypeVar("T")
HandlerFunc = Callable[["JobContext", dict[str, Any]], Any]

_MARK = "__async_jobs_options__"
_PERIODIC_MARK = "__async_jobs_periodic__"


@dataclasses.dataclass(frozen=True, slots=True)
class HandlerOptions:
    """Defaults a handler gives its jobs; ``None`` leaves the app's default in force."""

    name: str | None = None
    use_case: str | None = None
    priority: Priority | str | None = None
    max_attempts: int | None = None
    timeout_seconds: float | None = None
    delay_tolerance_seconds: float | None = None
    backoff: Backoff | None = None
    non_retryable: tuple[type[BaseException], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Handler:
    """A registered job type: what to call and with which defaults."""

    type: str
    func: HandlerFunc
    source: object  # the function or class that was registered
    is_async: bool
    use_case: str | None
    priority: Priority
    max_attempts: int | None
    timeout_seconds: float | None
    delay_tolerance_seconds: float | None
    backoff: Backoff
    non_retryable: tuple[builtins.type[BaseException], ...] = ()


class JobOptions(TypedDict, total=False):
    """The keyword options of ``@job`` and ``app.job``: a ``HandlerOptions`` but its name."""

    use_case: str | None
    priority: Priority | str | None
    max_attempts: int | None
    timeout_seconds: float | None
    delay_tolerance_seconds: float | None
    backoff: Backoff | None
    non_retryable: tuple[type[BaseException], ...]


def job(name: str | None = None, **options: Unpack[JobOptions]) -> Callable[[T], T]:
    """Mark a function ``(ctx, payload)`` or a class with ``handle(ctx, payload)`` as a job
    handler. Without a name, a function keeps its own name and ``SendEmailJob`` becomes
    ``send_email``. ``non_retryable``: exception types that fail the job at once."""
    marked = HandlerOptions(name, **options)

    def mark(obj: T) -> T:
        setattr(obj, _MARK, marked)
        return obj

    return mark


@dataclasses.dataclass(frozen=True, slots=True)
class PeriodicMark:
    """A cron schedule a handler was marked with (see ``periodic``)."""

    cron: str
    name: str | None
    payload: dict[str, Any]
    options: dict[str, Any]


def periodic(
    cron: str, *, name: str | None = None, payload: dict[str, Any] | None = None, **options: Any
) -> Callable[[T], T]:
    """Mark a handler to be enqueued on a cron schedule (five fields, UTC), in a module an
    app loads with ``--handlers``: the leading scheduler enqueues it once per tick. Stack it
    on ``@job(...)`` for the handler's own options (alone, it marks a handler with
    defaults). ``options`` are ``enqueue``'s keyword arguments."""

    def mark(obj: T) -> T:
        if getattr(obj, _MARK, None) is None:
            setattr(obj, _MARK, HandlerOptions())
        marks = getattr(obj, _PERIODIC_MARK, ())
        setattr(obj, _PERIODIC_MARK, (*marks, PeriodicMark(cron, name, payload or {}, options)))
        return obj

    return mark


def periodic_marks(obj: object) -> tuple[PeriodicMark, ...]:
    marks: tuple[PeriodicMark, ...] = getattr(obj, _PERIODIC_MARK, ())
    return marks


class Registry:
    """Job type -> handler."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def __contains__(self, job_type: object) -> bool:
        return job_type in self._handlers

    def __iter__(self) -> Iterator[Handler]:
        return iter(self._handlers.values())

    def __len__(self) -> int:
        return len(self._handlers)

    def get(self, job_type: str) -> Handler | None:
        return self._handlers.get(job_type)

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self._handlers)

    def add(self, obj: object, options: HandlerOptions | None = None) -> Handler:
        """Register a function or handler class, with ``options`` or those it was marked with."""
        options = options or getattr(obj, _MARK, None) or HandlerOptions()
        func = _callable_of(obj)
        handler = Handler(
            type=check_name(options.name or default_type_name(obj), "job type"),
            func=func,
            source=obj,
            is_async=inspect.iscoroutinefunction(func),
            use_case=options.use_case,
            priority=parse_priority(options.priority),
            max_attempts=options.max_attempts,
            timeout_seconds=options.timeout_seconds,
            delay_tolerance_seconds=options.delay_tolerance_seconds,
            backoff=options.backoff or DEFAULT_BACKOFF,
            non_retryable=_check_exception_types(options.non_retryable),
        )
        existing = self._handlers.get(handler.type)
        if existing is not None and existing.source is not obj:
            raise HandlerRegistrationError(
                f"job type {handler.type!r} is already registered to another handler"
            )
        self._handlers[handler.type] = handler
        return handler

    def add_module(self, module: ModuleType | str) -> list[Handler]:
        """Import a module (by name or object) and register every handler it marked."""
        if isinstance(module, str):
            module = import_handler_module(module)
        marked = [obj for obj in vars(module).values() if _is_marked_here(obj, module)]
        return [self.add(obj) for obj in marked]


def import_handler_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import handler module {name!r}: {exc}") from exc


def default_type_name(obj: object) -> str:
    name = getattr(obj, "__name__", "")
    if inspect.isclass(obj):
        name = name.removesuffix("Job") or name
        name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    return name


def _check_exception_types(
    types: tuple[type[BaseException], ...],
) -> tuple[type[BaseException], ...]:
    types = tuple(types)
    for kind in types:
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            raise HandlerRegistrationError(f"non_retryable holds {kind!r}, not an exception type")
    return types


def _is_marked_here(obj: object, module: ModuleType) -> bool:
    return hasattr(obj, _MARK) and getattr(obj, "__module__", None) == module.__name__


def _callable_of(obj: object) -> HandlerFunc:
    if inspect.isclass(obj):
        handle = getattr(obj, "handle", None)
        if handle is None:
            raise HandlerRegistrationError(f"{obj.__name__} has no handle(ctx, payload) method")
        try:
            instance = obj()
        except TypeError as exc:
            raise HandlerRegistrationError(
                f"{obj.__name__} must be constructible without arguments: {exc}"
            ) from exc
        func: HandlerFunc = getattr(instance, "handle")  # noqa: B009 - typed as object
    elif callable(obj):
        func = obj
    else:
        raise HandlerRegistrationError(f"{obj!r} is neither a function nor a handler class")
    _check_signature(func)
    return func


def _check_signature(func: HandlerFunc) -> None:
    try:
        signature = inspect.signature(func)
        signature.bind(None, None)
    except (TypeError, ValueError) as exc:
        name = getattr(func, "__qualname__", repr(func))
        raise HandlerRegistrationError(f"handler {name} must accept (ctx, payload): {exc}") from exc
