"""Group commit (``stores.grouping.Grouped``): its logic with writers that record their calls
(the PostgreSQL store's use of it is tested against PostgreSQL in test_store_lifecycle)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from async_jobs.stores.grouping import Grouped
from tests.helpers import wait_until


class Writes:
    """Writers that double each item and hold every write until ``release`` is set; an item
    in ``bad`` makes any write holding it fail."""

    def __init__(self, bad: Sequence[int] = ()) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.bad = set(bad)
        self.calls: list[list[int]] = []
        self.running = 0

    async def one(self, item: int) -> int:
        return (await self.many([item]))[0]

    async def many(self, items: Sequence[int]) -> list[int]:
        self.calls.append(list(items))
        self.running += 1
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        if self.bad & set(items):
            raise ValueError(f"bad item in {list(items)}")
        return [2 * i for i in items]


async def test_a_lone_item_is_written_at_once_by_itself() -> None:
    writes = Writes()
    grouped = Grouped(writes.one, writes.many, writers=2)
    assert [await grouped.write(n) for n in (1, 2, 3)] == [2, 4, 6]
    assert writes.calls == [[1], [2], [3]]


async def test_items_arriving_while_writers_are_busy_go_together() -> None:
    writes = Writes()
    writes.release.clear()
    grouped = Grouped(writes.one, writes.many, writers=2, max_group=4)
    tasks = [asyncio.create_task(grouped.write(n)) for n in range(12)]
    await wait_until(lambda: writes.running == 2, timeout=5)
    assert writes.calls == [[0], [1]]  # the first two found a writer free
    writes.release.set()
    assert await asyncio.gather(*tasks) == [2 * n for n in range(12)]
    assert writes.calls[:2] == [[0], [1]]
    assert sorted(len(call) for call in writes.calls[2:]) == [2, 4, 4]  # at most 4 a group
    assert sorted(n for call in writes.calls for n in call) == list(range(12))
    assert writes.running == 0
    assert (grouped.statements, grouped.items) == (len(writes.calls), 12)


async def test_a_failing_group_is_written_again_item_by_item() -> None:
    writes = Writes(bad=[5])
    writes.release.clear()
    grouped = Grouped(writes.one, writes.many, writers=1)
    first = asyncio.create_task(grouped.write(0))
    await wait_until(lambda: writes.running == 1, timeout=5)
    rest = [asyncio.create_task(grouped.write(n)) for n in range(1, 8)]
    await wait_until(lambda: len(grouped._waiting) == 7, timeout=5)
    writes.release.set()
    assert await first == 0
    results = await asyncio.gather(*rest, return_exceptions=True)
    assert results[:4] == [2, 4, 6, 8] and results[5:] == [12, 14]
    assert isinstance(results[4], ValueError)  # item 5's own error, and only its
    assert writes.calls[1] == list(range(1, 8))
    assert sorted(writes.calls[2:]) == [[n] for n in range(1, 8)]


async def test_a_caller_cancelled_while_waiting_is_left_out_of_the_group() -> None:
    writes = Writes()
    writes.release.clear()
    grouped = Grouped(writes.one, writes.many, writers=1)
    first = asyncio.create_task(grouped.write(0))
    await wait_until(lambda: writes.running == 1, timeout=5)
    gone = asyncio.create_task(grouped.write(1))
    kept = asyncio.create_task(grouped.write(2))
    await wait_until(lambda: len(grouped._waiting) == 2, timeout=5)
    gone.cancel()
    writes.release.set()
    assert (await first, await kept) == (0, 4)
    assert gone.cancelled()
    assert writes.calls == [[0], [2]]


async def test_drain_waits_for_every_group_handed_over() -> None:
    writes = Writes()
    writes.release.clear()
    grouped = Grouped(writes.one, writes.many, writers=1)
    tasks = [asyncio.create_task(grouped.write(n)) for n in range(5)]
    await wait_until(lambda: len(grouped._waiting) == 4, timeout=5)
    writes.release.set()
    await tasks[0]
    await grouped.drain()
    assert all(task.done() for task in tasks)
    assert sorted(n for call in writes.calls for n in call) == list(range(5))


def test_writers_and_group_size_must_be_positive() -> None:
    async def never(item: int) -> int:
        raise AssertionError

    async def never_many(items: Sequence[int]) -> list[int]:
        raise AssertionError

    with pytest.raises(ValueError, match="at least 1"):
        Grouped(never, never_many, writers=0)
    with pytest.raises(ValueError, match="at least 1"):
        Grouped(never, never_many, max_group=0)
