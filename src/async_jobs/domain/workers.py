"""Who is running: the registry of live worker and scheduler processes.

Each process writes one record when it starts, renews it with the heartbeats it already makes
(a worker's lease renewals, a scheduler's leadership rounds), and removes it on a clean stop.
A process that dies leaves a record that lapses at ``expires_at`` by the store's clock and is
then no longer listed (and is deleted by the next registration).
"""

from __future__ import annotations

import dataclasses
import enum
from datetime import datetime
from typing import Any

from async_jobs.domain.scheduling import Leader


class ProcessKind(enum.StrEnum):
    WORKER = "worker"
    SCHEDULER = "scheduler"


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessInfo:
    """What a process says about itself when it registers (``started_at`` and heartbeats are
    the store's clock)."""

    id: str
    kind: ProcessKind
    host: str
    pid: int
    version: str
    concurrency: int = 0
    use_cases: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Its fields as JSON values (the API's, and the SQLite registry row's but for the
        use cases, which SQLite keeps as JSON text)."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "host": self.host,
            "pid": self.pid,
            "version": self.version,
            "concurrency": self.concurrency,
            "use_cases": list(self.use_cases),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class LiveProcess:
    """A registered process as the store holds it."""

    info: ProcessInfo
    started_at: datetime
    heartbeat_at: datetime
    expires_at: datetime
    jobs_held: int

    def to_json(self, leader: Leader | None = None) -> dict[str, Any]:
        """``leader``: who leads the chores now, to mark this process as leading (a
        scheduler that does not lead is a standby)."""
        info = self.info
        out: dict[str, Any] = {
            **info.to_json(),
            "started_at": self.started_at.isoformat(),
            "heartbeat_at": self.heartbeat_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "jobs_held": self.jobs_held,
        }
        out["leads"] = self.leads(leader)
        if info.kind is ProcessKind.SCHEDULER:
            out["role"] = "leader" if out["leads"] else "standby"
        return out

    def leads(self, leader: Leader | None) -> bool:
        return leader is not None and leader.process_id == self.info.id
