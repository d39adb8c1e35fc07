"""``async-jobs worker --processes N``: N worker processes under one command, so that one
command uses every core of its machine. The processes share nothing but the store: each is
a whole ``async-jobs worker`` of its own (its own connections, claims, leases, heartbeats),
started by this parent with the same options.

The parent only watches them:

- SIGTERM or SIGINT to the parent is passed to every worker as SIGTERM (each stops taking
  work and lets its jobs finish within its grace period); a second one is passed on again,
  which stops the workers at once, as it does for a single worker. The parent exits 0 once
  every worker has exited 0 (or died of that first signal before it could handle it).
- A worker that dies (a non-zero exit, a signal, the OOM killer) is reported on stderr and
  started again after a short pause; its jobs come back when their leases expire, like any
  lost worker's. A worker that exits with the configuration error code (2) is not: the
  others are stopped and the parent exits 2. More than ``max_restarts`` deaths within
  ``restart_window_seconds`` (a crash loop) stop everything too: exit 1.
- A worker that exits 0 by itself (``--burst`` with nothing left) is not started again; the
  parent exits when the last one has.
- With a metrics port (``--metrics-port P`` or ``ASYNC_JOBS_METRICS_PORT``), worker process
  i serves ``/metrics`` and the probes on port P+i (each says its own in its ready line);
  port 0 gives each a free port of its own.
- The workers run in their own session (a Ctrl-C at the terminal reaches the parent only,
  which passes it on once) and, on Linux, get SIGTERM when the parent dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import signal
import sys
from collections.abc import Mapping, Sequence

log = logging.getLogger("async_jobs.supervisor")

CONFIGURATION_ERROR_EXIT = 2
_PR_SET_PDEATHSIG = 1


@dataclasses.dataclass(frozen=True, slots=True)
class SupervisorConfig:
    processes: int
    command: Sequence[str]  # the argv of one worker process
    # Arguments added to the command of one slot's process (slot i: slot_arguments[i]), for
    # what each must have of its own, such as its metrics port; empty: none.
    slot_arguments: Sequence[Sequence[str]] = ()
    grace_seconds: float = 30.0
    restart_delay_seconds: float = 1.0
    max_restarts: int = 5
    restart_window_seconds: float = 60.0
    # After the first stop, workers still alive this long after their grace are killed.
    kill_margin_seconds: float = 15.0

    def __post_init__(self) -> None:
        if self.slot_arguments and len(self.slot_arguments) != self.processes:
            raise ValueError("slot_arguments needs one entry per process")

    def command_of(self, slot: int) -> list[str]:
        own = self.slot_arguments[slot] if self.slot_arguments else ()
        return [*self.command, *own]


class Supervisor:
    def __init__(self, config: SupervisorConfig, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self._env = None if env is None else dict(env)
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()
        self._deaths: list[float] = []
        self._exit_code = 0
        self._killer: asyncio.TimerHandle | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        try:
            await asyncio.gather(*(self._keep(slot) for slot in range(self.config.processes)))
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            if self._killer is not None:
                self._killer.cancel()
        return self._exit_code

    def stop(self) -> None:
        """Pass a stop on to every worker (a second call: stop them at once)."""
        if not self._stopping.is_set():
            self._stopping.set()
            delay = self.config.grace_seconds + self.config.kill_margin_seconds
            self._killer = asyncio.get_running_loop().call_later(delay, self._kill_all)
        for proc in list(self._procs.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    def _kill_all(self) -> None:
        for slot, proc in list(self._procs.items()):
            log.error("worker process %d (pid %d) outlived its grace: killing it", slot, proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        self._exit_code = self._exit_code or 1

    async def _keep(self, slot: int) -> None:
        """Run the slot's worker, and start it again after each death, until a stop."""
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            proc = await asyncio.create_subprocess_exec(
                *self.config.command_of(slot),
                env=self._env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            self._procs[slot] = proc
            code = await proc.wait()
            del self._procs[slot]
            if self._stopping.is_set():
                if code not in (0, -signal.SIGTERM):
                    log.error("worker process %d (pid %d) stopped %s", slot, proc.pid, _how(code))
                    self._exit_code = self._exit_code or 1
                return
            if code == 0:
                log.info("worker process %d (pid %d) finished", slot, proc.pid)
                return
            if code == CONFIGURATION_ERROR_EXIT:
                log.error("worker process %d: configuration error; stopping the others", slot)
                self._exit_code = CONFIGURATION_ERROR_EXIT
                self.stop()
                return
            now = loop.time()
            self._deaths = [t for t in self._deaths if t > now - self.config.restart_window_seconds]
            self._deaths.append(now)
            if len(self._deaths) > self.config.max_restarts:
                log.error(
                    "worker process %d (pid %d) died %s; %d deaths within %.0f s: stopping",
                    slot,
                    proc.pid,
                    _how(code),
                    len(self._deaths),
                    self.config.restart_window_seconds,
                )
                self._exit_code = 1
                self.stop()
                return
            log.error(
                "worker process %d (pid %d) died %s; starting it again in %.1f s",
                slot,
                proc.pid,
                _how(code),
                self.config.restart_delay_seconds,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.config.restart_delay_seconds)


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"of signal {signal.Signals(-code).name}"
        except ValueError:
            return f"of signal {-code}"
    return f"with exit code {code}"


# Looked up here, in the parent: the child runs ``_die_with_parent`` between fork and exec,
# where a process that had threads (asyncio's child watcher starts one per child) must not
# take a lock another thread may have held at the fork, such as the dynamic loader's.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child before it runs: SIGTERM when the parent dies (Linux only)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)
