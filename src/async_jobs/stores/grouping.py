"""Group commit for single enqueues: jobs that arrive while earlier ones are being written go
to the database together, in one statement, once a writer is free.

A job that finds a writer free is written at once, alone: one caller at a time (a script, a
quiet API) waits for nothing. Under load (an API answering many requests at once) each
statement carries every job that arrived meanwhile, so the client and the database do per
statement what they did per job. Each caller still gets its own job back, after the commit
of the statement that wrote it, and its own error: when a group fails, every job of it is
written again by itself, so one job's problem is never another's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


class Grouped(Generic[In, Out]):
    """``write_many`` writes a group and returns one result per item, in order; ``write_one``
    writes one item (used for the first item to find a writer free, and to write the items of
    a failed group one by one). At most ``writers`` writes run at once; a group holds at most
    ``max_group`` items."""

    def __init__(
        self,
        write_one: Callable[[In], Awaitable[Out]],
        write_many: Callable[[Sequence[In]], Awaitable[Sequence[Out]]],
        writers: int = 2,
        max_group: int = 500,
    ) -> None:
        if writers < 1 or max_group < 1:
            raise ValueError("writers and max_group must be at least 1")
        self._write_one = write_one
        self._write_many = write_many
        self._writers = writers
        self._max_group = max_group
        self._busy = 0
        self._waiting: list[tuple[In, asyncio.Future[Out]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.statements = 0  # writes made, to compare with the items written
        self.items = 0

    async def write(self, item: In) -> Out:
        if self._busy < self._writers and not self._waiting:
            self._busy += 1
            try:
                self.statements += 1
                self.items += 1
                return await self._write_one(item)
            finally:
                self._writer_done()
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        return await future  # cancelled before its group is taken: it is left out

    async def drain(self) -> None:
        """Wait until every job handed over is written (or has failed)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _writer_done(self) -> None:
        self._busy -= 1
        self._waiting = [(item, f) for item, f in self._waiting if not f.done()]
        while self._waiting and self._busy < self._writers:
            group = self._waiting[: self._max_group]
            del self._waiting[: self._max_group]
            self._busy += 1
            task = asyncio.get_running_loop().create_task(self._write_group(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write_group(self, group: list[tuple[In, asyncio.Future[Out]]]) -> None:
        try:
            self.statements += 1
            self.items += len(group)
            try:
                results = await self._write_many([item for item, _ in group])
            except Exception as exc:
                if len(group) == 1:
                    _settle(group[0][1], exc)
                    return
                log.debug(
                    "a group of %d failed (%s); writing its items one by one", len(group), exc
                )
                await asyncio.gather(*(self._alone(item, future) for item, future in group))
                return
            for (_, future), result in zip(group, results, strict=True):
                if not future.done():
                    future.set_result(result)
        except BaseException as exc:  # cancelled (the store closing): nobody is left waiting
            for _, future in group:
                _settle(future, exc)
            raise
        finally:
            self._writer_done()

    async def _alone(self, item: In, future: asyncio.Future[Out]) -> None:
        try:
            result = await self._write_one(item)
        except Exception as exc:
            _settle(future, exc)
        else:
            if not future.done():
                future.set_result(result)


def _settle(future: asyncio.Future[Out], exc: BaseException) -> None:
    if future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)
