"""A process's record in the store's registry of live processes (``domain.workers``): written
at start, renewed with the heartbeats the process already makes, removed on a clean stop.
The record is advisory (it feeds ``async-jobs workers`` and the dashboard): a store error
while writing it is logged and tried again at the next beat, never fatal."""

from __future__ import annotations

import logging
import os
import socket
from importlib import metadata

from async_jobs.domain.errors import StoreError
from async_jobs.domain.workers import ProcessInfo, ProcessKind
from async_jobs.ports import JobStore

log = logging.getLogger("async_jobs.presence")


def package_version() -> str:
    try:
        return metadata.version("async-job-server")
    except metadata.PackageNotFoundError:
        return "unknown"


def process_info(
    process_id: str, kind: ProcessKind, concurrency: int = 0, use_cases: tuple[str, ...] = ()
) -> ProcessInfo:
    return ProcessInfo(
        process_id,
        kind,
        socket.gethostname(),
        os.getpid(),
        package_version(),
        concurrency,
        use_cases,
    )


class Presence:
    """Keeps one process's record alive: ``beat`` renews it (registering again if it lapsed
    meanwhile), ``leave`` removes it. ``ttl_seconds`` should cover about three beats; a
    presence that is not ``enabled`` writes nothing."""

    def __init__(
        self, store: JobStore, info: ProcessInfo, ttl_seconds: float, enabled: bool = True
    ) -> None:
        self._store = store
        self.info = info
        self._ttl = ttl_seconds
        self._registered = False
        self._enabled = enabled

    async def beat(self, jobs_held: int = 0) -> None:
        if not self._enabled:
            return
        try:
            if self._registered and await self._store.beat_process(
                self.info.id, jobs_held, self._ttl
            ):
                return
            await self._store.register_process(self.info, self._ttl)
            self._registered = True
            if jobs_held:
                await self._store.beat_process(self.info.id, jobs_held, self._ttl)
        except StoreError as exc:
            log.warning("cannot record %s %s as live: %s", self.info.kind, self.info.id, exc)

    async def leave(self) -> None:
        if not self._registered:
            return
        try:
            await self._store.remove_process(self.info.id)
        except StoreError as exc:
            log.warning("cannot remove the record of %s: %s", self.info.id, exc)
        self._registered = False
