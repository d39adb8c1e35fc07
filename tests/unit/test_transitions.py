"""The state machine against the README's guarantees, event by event (the stores are checked
against it in tests/integration/test_transitions.py)."""

from __future__ import annotations

import itertools

import pytest

from async_jobs.domain.jobs import JobState, OutcomeKind, Reason
from async_jobs.domain.transitions import KEEP, Chore, Facts, RunAt, decide

EVENTS = [*OutcomeKind, *Chore]
ALL_FACTS = [
    Facts(status, cancel, left, lost, expired)
    for status, cancel, left, lost, expired in itertools.product(
        JobState, (False, True), (False, True), (False, True), (False, True)
    )
]


@pytest.mark.parametrize("event", EVENTS)
def test_a_succeeded_job_never_changes(event: OutcomeKind | Chore) -> None:
    for facts in ALL_FACTS:
        if facts.status is JobState.SUCCEEDED:
            assert decide(facts, event) is None


def test_only_a_manual_retry_leads_out_of_failed_or_cancelled() -> None:
    """And not of a job past its expires_at, which would only expire again."""
    for facts, event in itertools.product(ALL_FACTS, EVENTS):
        if facts.status in (JobState.FAILED, JobState.CANCELLED):
            change = decide(facts, event)
            assert (change is not None) == (event is Chore.RETRY and not facts.past_expiry)


def test_an_outcome_counts_only_while_the_job_runs() -> None:
    """A late or duplicate worker (the job reaped, cancelled or finished meanwhile)
    overwrites nothing; a lease that ran out but was not reaped yet still holds."""
    for facts, kind in itertools.product(ALL_FACTS, OutcomeKind):
        assert (decide(facts, kind) is not None) == (facts.status is JobState.RUNNING)


def test_a_cancel_asked_turns_a_retry_or_a_hand_back_into_cancelled() -> None:
    running = Facts(JobState.RUNNING, cancel_requested=True)
    for kind in (OutcomeKind.RETRY, OutcomeKind.RELEASED):
        change = decide(running, kind)
        assert change is not None
        assert (change.status, change.reason, change.entry) == (
            JobState.CANCELLED,
            Reason.CANCELLED.value,
            "cancelled",
        )
        assert change.attempts == 0  # the attempt counts


def test_a_plain_release_gives_the_attempt_back_and_leaves_no_history() -> None:
    change = decide(Facts(JobState.RUNNING), OutcomeKind.RELEASED)
    assert change is not None
    assert (change.status, change.attempts, change.entry) == (JobState.PENDING, -1, None)
    assert change.reason is KEEP and change.clears_start


@pytest.mark.parametrize(
    ("cancel", "left", "status", "run_at"),
    [
        (False, True, JobState.PENDING, RunAt.NOW),
        (False, False, JobState.FAILED, RunAt.KEEP),
        (True, True, JobState.CANCELLED, RunAt.KEEP),
        (True, False, JobState.CANCELLED, RunAt.KEEP),
    ],
)
def test_a_lost_worker_counts_the_attempt(
    cancel: bool, left: bool, status: JobState, run_at: RunAt
) -> None:
    """Crashes count: a job that kills its worker every time ends failed."""
    facts = Facts(JobState.RUNNING, cancel, left, lease_expired=True)
    change = decide(facts, Chore.REAP)
    assert change is not None
    assert (change.status, change.run_at, change.entry, change.attempts) == (
        status,
        run_at,
        "worker_lost",
        0,
    )
    assert decide(Facts(JobState.RUNNING, cancel, left, lease_expired=False), Chore.REAP) is None


def test_expiry_cancels_only_waiting_jobs_past_their_time() -> None:
    for facts in ALL_FACTS:
        change = decide(facts, Chore.EXPIRE)
        waiting = facts.status in (JobState.PENDING, JobState.QUEUED)
        assert (change is not None) == (waiting and facts.past_expiry)
        if change is not None:
            assert (change.status, change.reason) == (JobState.CANCELLED, Reason.EXPIRED.value)
