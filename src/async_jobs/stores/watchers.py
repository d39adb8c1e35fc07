"""Telling the callbacks a store was given (``watch_cancellations``, ``watch_finished``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from async_jobs.domain.jobs import JobId

log = logging.getLogger(__name__)


def tell(watchers: Sequence[Callable[[JobId], None]], job_ids: Iterable[JobId]) -> None:
    """Call every watcher for every job; one that fails is logged and does not silence the
    others."""
    for job_id in job_ids:
        for watcher in watchers:
            try:
                watcher(job_id)
            except Exception:
                log.exception("a watcher failed for job %s", job_id)
