"""Tests wait on conditions with a deadline (``tests.helpers.wait_until``, ``poll``,
``wait_for_line``, Playwright's ``expect``), never on a bare sleep: under the load of a
parallel run a sleep that was long enough alone is not. A sleep that is no such wait (a job's
own work, an outage that lasts on purpose, the interval of a deadline-bound poll, a check that
nothing happens) says so on its line: ``# wait-ok: why``."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).parents[1]
SLEEP = re.compile(r"\b(?:time\.sleep|asyncio\.sleep|wait_for_timeout)\(")


def test_every_sleep_in_the_tests_says_why_it_is_no_synchronisation() -> None:
    untagged = [
        f"{path.relative_to(TESTS)}:{number}: {line.strip()}"
        for path in sorted(TESTS.rglob("*.py"))
        if path != Path(__file__)  # its own examples below
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if SLEEP.search(line) and "# wait-ok:" not in line
    ]
    assert untagged == []


def test_the_check_finds_an_untagged_sleep() -> None:
    assert SLEEP.search("    await asyncio.sleep(0.5)")  # wait-ok: a sample string
    assert SLEEP.search("    page.wait_for_timeout(500)")
    assert not SLEEP.search("    await wait_until(lambda: done, timeout=5)")
