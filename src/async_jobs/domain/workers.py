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
            "id": info.id,
            "kind": info.kind.value,
            "host": info.host,
            "pid": info.pid,
            "version": info.version,
            "concurrency": info.concurrency,
            "use_cases": list(info.use_cases),
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
