"""The queues of the sqs transport: their creation for local development (``async-jobs sqs
create-queues``) and the check of their redrive policy that every worker makes at start."""

from __future__ import annotations

import json

from async_jobs.domain.errors import ConfigurationError
from async_jobs.transports.sqs.client import SqsClient, SqsConfig, translated


async def check_redrive(client: SqsClient, queue_url: str, max_attempts: int) -> int:
    """Refuse a queue whose dead-letter queue would take a message before its job's attempts
    are spent (``maxReceiveCount`` must exceed the largest ``max_attempts``). Returns the
    queue's visibility timeout (seconds)."""
    attributes = await client.attributes(queue_url)
    policy = attributes.get("RedrivePolicy")
    if policy:
        try:
            receives = int(json.loads(policy)["maxReceiveCount"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(
                f"SQS queue {queue_url} has a redrive policy we cannot read: {policy!r}"
            ) from exc
        if receives <= max_attempts:
            raise ConfigurationError(
                f"SQS queue {queue_url} moves a message to its dead-letter queue after "
                f"{receives} receives, but jobs may make up to {max_attempts} attempts: set "
                f"its maxReceiveCount to at least {max_attempts + 1} (the job's own `failed` "
                "state is the dead letter of this server)"
            )
    return int(attributes.get("VisibilityTimeout", 30))


async def create_queues(config: SqsConfig, max_attempts: int) -> list[dict[str, str]]:
    """Create each configured queue with a dead-letter queue (``<name>-dlq``) whose
    ``maxReceiveCount`` exceeds ``max_attempts`` (local development; idempotent)."""
    client = SqsClient(config)
    await client.open()
    made = []
    try:
        for use_case, url in sorted(config.queues.items()):
            name = url.rstrip("/").rsplit("/", 1)[-1]
            async with translated(f"create the queues of {use_case}"):
                dlq = await client.client.create_queue(QueueName=f"{name}-dlq")
                arn = await client.client.get_queue_attributes(
                    QueueUrl=dlq["QueueUrl"], AttributeNames=["QueueArn"]
                )
                redrive = json.dumps(
                    {
                        "deadLetterTargetArn": arn["Attributes"]["QueueArn"],
                        "maxReceiveCount": str(max(10, max_attempts + 1)),
                    }
                )
                queue = await client.client.create_queue(QueueName=name)
                await client.client.set_queue_attributes(
                    QueueUrl=queue["QueueUrl"],
                    Attributes={
                        "RedrivePolicy": redrive,
                        "VisibilityTimeout": str(config.visibility_timeout_seconds or 30),
                    },
                )
            made.append(
                {
                    "use_case": use_case,
                    "queue_url": queue["QueueUrl"],
                    "configured_url": url,
                    "dead_letter_queue_url": dlq["QueueUrl"],
                }
            )
    finally:
        await client.close()
    return made
