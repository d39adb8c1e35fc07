"""The global invariants checked after every reliability scenario (RELIABILITY.md)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg

from tests.acceptance.ledger_jobs import read_ledger

TERMINAL = {"succeeded", "failed", "cancelled"}


async def assert_invariants(
    dsn: str,
    ledger: Path,
    accepted: set[str],
    *,
    all_terminal: bool = True,
) -> list[dict[str, Any]]:
    """Every accepted job has a row; every row is terminal (unless told otherwise); each
    terminal job ended once; attempts match the ledger's starts; nothing is running with an
    expired lease. Returns the rows."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = [
            dict(r)
            for r in await conn.fetch(
                "SELECT id::text, status::text, attempts, max_attempts, history::text, "
                "lease_expires_at < now() AS lease_expired FROM async_jobs"
            )
        ]
    finally:
        await conn.close()
    by_id = {r["id"]: r for r in rows}
    missing = accepted - by_id.keys()
    assert not missing, f"accepted jobs without a row: {sorted(missing)[:5]}"
    starts = Counter(e["job"] for e in read_ledger(ledger) if e["event"] == "start")
    for row in rows:
        history = json.loads(row["history"])
        if all_terminal:
            assert row["status"] in TERMINAL, row
        assert not (row["status"] == "running" and row["lease_expired"]), row
        if row["status"] in TERMINAL:
            ends = [h for h in history if h["outcome"] in ("failed", "cancelled")]
            assert len(ends) <= 1, f"more than one terminal transition: {row}"
            assert not (ends and row["status"] == "succeeded"), row
        assert row["attempts"] <= row["max_attempts"], row
        # The history holds every counted attempt that did not succeed; a success is the row.
        unsuccessful = row["attempts"] - (row["status"] == "succeeded")
        assert row["attempts"] == 0 or len(history) == unsuccessful or row["status"] == "running"
        assert len(history) <= row["attempts"], row
        # Every counted attempt either reached the handler (a ledger start) or was lost
        # before it wrote one; never did the handler run more often than attempts say.
        assert starts[row["id"]] <= row["attempts"], (row, starts[row["id"]])
    return rows
