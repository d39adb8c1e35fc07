"""The job state machine, written once: what each event does to a job.

``decide(facts, event)`` is the whole rule: from the few facts that matter (the job's state,
whether its cancellation was asked, whether it has attempts left, whether its lease ran out,
whether it could not start in time) and an event (a worker's outcome, or one of the chores:
reap, cancel, manual retry, expire) it gives the ``Transition``, or None where the event
changes nothing (the fence refuses it). ``applied`` makes the changed ``Job`` from it.

The memory store applies these functions directly. The SQL stores write the same rules as
guarded statements (``record_outcomes``, ``reap_expired_leases``, ``cancel_job``,
``retry_job``, ``expire_jobs`` in each ``queries.sql``), taking ``MAX_HISTORY`` and
``ERROR_MESSAGE_LIMIT`` from here as parameters; a conformance test walks every combination
of facts and event through each store and compares the row with ``decide``
(``tests/integration/test_transitions.py``).

    event \\ state   pending/queued     running                         failed/cancelled
    outcome          -                  see ``_outcome``                 -
    reap             -                  lease ran out: pending (now),    -
                                        failed (no attempts left) or
                                        cancelled (asked); worker_lost
    cancel           cancelled          flagged (cancel_requested)      -
    retry            -                  -                               pending (now), unless
                                                                        past its expires_at
    expire           cancelled/expired  -                               -

A job ends in a terminal state once: no event leads out of ``succeeded``, and only a manual
retry out of ``failed`` or ``cancelled`` (not of a job past its ``expires_at``, which would
only expire again).
"""

from __future__ import annotations

import dataclasses
import enum
from datetime import datetime, timedelta

from async_jobs.domain.jobs import (
    ERROR_MESSAGE_LIMIT,
    MAX_HISTORY,
    AttemptRecord,
    Job,
    JobError,
    JobState,
    OutcomeKind,
    Reason,
)

# The error a reaped attempt leaves in its history entry (the job's own error says more).
LOST_ENTRY_ERROR = JobError("WorkerLost", "the lease expired")


class Chore(enum.StrEnum):
    """An event that is not a worker's outcome."""

    REAP = "reap"  # the reaper found the lease expired
    CANCEL = "cancel"
    RETRY = "manual_retry"
    EXPIRE = "expire"  # the job could not start before its expires_at


Event = OutcomeKind | Chore


class RunAt(enum.Enum):
    """What becomes of ``run_at`` (and ``deadline_at``, which is run_at + tolerance)."""

    KEEP = "keep"
    NOW = "now"
    AFTER_DELAY = "after_delay"  # now + the outcome's retry delay


class Keep(enum.Enum):
    """A field the transition leaves as it was."""

    KEEP = "keep"


KEEP = Keep.KEEP


@dataclasses.dataclass(frozen=True, slots=True)
class Facts:
    """What a transition depends on. ``attempts_left``: attempts < max_attempts.
    ``lease_expired``: running, and its lease ran out by the database clock.
    ``past_expiry``: its ``expires_at`` is in the past."""

    status: JobState
    cancel_requested: bool = False
    attempts_left: bool = True
    lease_expired: bool = False
    past_expiry: bool = False

    @classmethod
    def of(cls, job: Job, now: datetime) -> Facts:
        return cls(
            status=job.status,
            cancel_requested=job.cancel_requested,
            attempts_left=job.attempts < job.max_attempts,
            lease_expired=job.lease_expires_at is not None and job.lease_expires_at < now,
            past_expiry=job.expires_at is not None and job.expires_at < now,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    """What an event does to a job. ``attempts``: added to the count (-1 gives back an
    attempt that is not to count). ``entry``: the outcome of the history entry that the
    ending attempt leaves, None for none. ``ends_attempt``: the lease is dropped.
    ``rerun``: a manual retry's fresh start (result, progress, worker and times cleared,
    at least one attempt left). ``finished_at`` follows the state: set when it is terminal,
    cleared otherwise."""

    status: JobState
    attempts: int = 0
    run_at: RunAt = RunAt.KEEP
    entry: str | None = None
    reason: str | Keep | None = KEEP
    cancel_requested: bool | Keep = KEEP
    ends_attempt: bool = False
    clears_start: bool = False
    rerun: bool = False


_CANCELLED = Reason.CANCELLED.value


def retryable(job: Job, now: datetime) -> bool:
    """Whether a manual retry of ``job`` at ``now`` would change it (as ``decide`` says):
    failed or cancelled, and not past its ``expires_at``."""
    return decide(Facts.of(job, now), Chore.RETRY) is not None


def decide(facts: Facts, event: Event) -> Transition | None:
    """The transition ``event`` makes from ``facts``; None where it changes nothing."""
    if isinstance(event, OutcomeKind):
        return _outcome(facts, event) if facts.status is JobState.RUNNING else None
    if event is Chore.REAP:
        return _reap(facts) if facts.status is JobState.RUNNING and facts.lease_expired else None
    if event is Chore.CANCEL:
        return _cancel(facts)
    if event is Chore.RETRY:
        # A job past its expires_at would only be expired again: it is enqueued anew instead.
        if facts.status not in (JobState.FAILED, JobState.CANCELLED) or facts.past_expiry:
            return None
        return Transition(
            JobState.PENDING,
            run_at=RunAt.NOW,
            reason=Reason.MANUAL_RETRY.value,
            cancel_requested=False,
            clears_start=True,
            rerun=True,
        )
    waiting = facts.status in (JobState.PENDING, JobState.QUEUED)
    if waiting and facts.past_expiry:  # Chore.EXPIRE
        return Transition(JobState.CANCELLED, reason=Reason.EXPIRED.value)
    return None


def _outcome(facts: Facts, kind: OutcomeKind) -> Transition:
    """A worker's outcome for the attempt it holds (the fence: running, same attempt and
    lease token; a lease that ran out but was not reaped yet still holds). A job whose
    cancellation was asked ends cancelled instead of being retried or handed back."""
    handed_back = kind in (OutcomeKind.RETRY, OutcomeKind.RELEASED)
    if handed_back and facts.cancel_requested:
        return Transition(
            JobState.CANCELLED,
            entry=OutcomeKind.CANCELLED.value,
            reason=_CANCELLED,
            ends_attempt=True,
        )
    if kind is OutcomeKind.RELEASED:  # handed back unstarted: the attempt does not count
        return Transition(JobState.PENDING, attempts=-1, ends_attempt=True, clears_start=True)
    if kind is OutcomeKind.RETRY:
        return Transition(
            JobState.PENDING,
            run_at=RunAt.AFTER_DELAY,
            entry=kind.value,
            reason=None,
            ends_attempt=True,
        )
    if kind is OutcomeKind.SUCCEEDED:  # a success is the row itself, not a history entry
        return Transition(JobState.SUCCEEDED, reason=None, ends_attempt=True)
    reason = _CANCELLED if kind is OutcomeKind.CANCELLED else None
    return Transition(JobState(kind.value), entry=kind.value, reason=reason, ends_attempt=True)


def _reap(facts: Facts) -> Transition:
    """A lease that ran out counts its attempt, which ends ``worker_lost``."""
    lost = "worker_lost"
    if facts.cancel_requested:
        return Transition(JobState.CANCELLED, entry=lost, reason=_CANCELLED, ends_attempt=True)
    if not facts.attempts_left:
        return Transition(JobState.FAILED, entry=lost, reason=lost, ends_attempt=True)
    return Transition(
        JobState.PENDING, run_at=RunAt.NOW, entry=lost, reason=lost, ends_attempt=True
    )


def _cancel(facts: Facts) -> Transition | None:
    """Waiting: cancelled at once. Running: flagged, its worker stops it. Otherwise (ended,
    or asked already) nothing."""
    if facts.status in (JobState.PENDING, JobState.QUEUED):
        return Transition(JobState.CANCELLED, reason=_CANCELLED, cancel_requested=True)
    if facts.status is JobState.RUNNING and not facts.cancel_requested:
        return Transition(JobState.RUNNING, reason=_CANCELLED, cancel_requested=True)
    return None


def applied(
    job: Job,
    change: Transition,
    now: datetime,
    *,
    error: JobError | None = None,
    delay_seconds: float = 0.0,
) -> Job:
    """``job`` after ``change`` at ``now``. ``error``: the ending attempt's error, for its
    history entry; ``delay_seconds``: a retry's delay. The fields an event sets beyond the
    state machine (an outcome's result and error, the reaper's error) are the caller's."""
    run_at, deadline_at = job.run_at, job.deadline_at
    if change.run_at is not RunAt.KEEP:
        delay = delay_seconds if change.run_at is RunAt.AFTER_DELAY else 0.0
        run_at = now + timedelta(seconds=delay)
        deadline_at = run_at + timedelta(seconds=job.delay_tolerance_seconds)
    out = dataclasses.replace(
        job,
        status=change.status,
        attempts=job.attempts + change.attempts,
        run_at=run_at,
        deadline_at=deadline_at,
        history=job.history if change.entry is None else with_entry(job, now, change.entry, error),
        reason=job.reason if change.reason is KEEP else change.reason,
        cancel_requested=(
            job.cancel_requested if change.cancel_requested is KEEP else change.cancel_requested
        ),
        started_at=None if change.clears_start else job.started_at,
        finished_at=now if change.status.is_terminal else None,
        updated_at=now,
    )
    if change.ends_attempt:
        out = dataclasses.replace(out, lease_token=None, lease_expires_at=None)
    if change.rerun:
        out = dataclasses.replace(
            out,
            max_attempts=max(job.max_attempts, job.attempts + 1),
            result=None,
            progress=None,
            worker_id=None,
        )
    return out


def with_entry(
    job: Job, now: datetime, outcome: str, error: JobError | None
) -> list[AttemptRecord]:
    """The history with the attempt now ending appended, the latest ``MAX_HISTORY`` kept."""
    entry = AttemptRecord(
        attempt=job.attempts,
        worker_id=job.worker_id,
        started_at=job.started_at,
        finished_at=now,
        outcome=outcome,
        error_type=None if error is None else error.type,
        error_message=None if error is None else error.message[:ERROR_MESSAGE_LIMIT],
    )
    return [*job.history, entry][-MAX_HISTORY:]


def lost_error(job: Job) -> JobError:
    """The error a reaped job is left with."""
    message = (
        f"the lease of attempt {job.attempts} expired: "
        f"worker {job.worker_id or '?'} stopped renewing it"
    )
    return JobError("WorkerLost", message, None)
