"""The sqs transport: the leading scheduler dispatches jobs to one SQS queue per use case,
workers on any number of machines receive them.

The store stays the truth; a message only carries a ``DispatchTicket`` ("job X, attempt N,
under dispatch D"). The flow, each step guarded:

1. ``SqsDispatcher`` (in the leading scheduler) moves due jobs within every limit from
   ``pending`` to ``queued`` under a fresh dispatch id and a deadline (the outbox), then
   sends their tickets in batches of 10. A failed send puts its jobs back to ``pending`` at
   once; a send lost without an error is caught by the deadline: a job nobody claimed by
   then goes back to ``pending`` and is sent again.
2. ``SqsTransport`` (in a worker) long-polls its queues, only for as many messages as it has
   free slots, and claims the named jobs in one statement (``queued`` -> ``running``) only
   while each is still queued under that dispatch and attempt. A message for anything else
   (a duplicate delivery, a late or forged message, a cancelled job) is deleted and counted;
   a malformed one is logged (truncated), deleted and counted. This side is
   ``transports.broker``'s (``BrokerTransport``, shared with the redis transport); this
   package gives it the polls, the visibility, the release and the deletes.
3. While a job runs, its message stays in flight: its visibility is extended alongside the
   lease, and it is deleted once the job's outcome is committed. On SIGTERM, messages
   received but not yet claimed are made visible again at once.

Only dispatched jobs are in a queue, and at most the dispatch window of each use case
(``ASYNC_JOBS_DISPATCH_WINDOW``, fewer if its cap is lower) at once, so the broker stays
shallow whatever the backlog in the store (``transports.dispatch``).

The package: ``client`` (``SqsConfig``, ``SqsClient``, ``SqsError``), ``admin`` (queue
creation, the redrive check), ``dispatcher`` (the scheduler's side), ``transport`` (the
worker's side); every name is importable from here.
"""

from async_jobs.transports.sqs.admin import check_redrive, create_queues
from async_jobs.transports.sqs.client import (
    BACKOFF,
    BATCH,
    DEFAULT_REGION,
    SqsClient,
    SqsConfig,
    SqsError,
)
from async_jobs.transports.sqs.dispatcher import SqsDispatcher
from async_jobs.transports.sqs.transport import POLL_TASK, Received, SqsTransport

__all__ = [
    "BACKOFF",
    "BATCH",
    "DEFAULT_REGION",
    "POLL_TASK",
    "Received",
    "SqsClient",
    "SqsConfig",
    "SqsDispatcher",
    "SqsError",
    "SqsTransport",
    "check_redrive",
    "create_queues",
]
