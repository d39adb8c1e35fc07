"""The migrations build exactly the expected schema, and running them again changes nothing.

After a deliberate schema change, refresh the snapshot with
``UPDATE_SCHEMA_SNAPSHOT=1 pytest tests/integration/test_postgres_schema.py`` and review it.
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg

from async_jobs.stores.postgres import PostgresStore

SNAPSHOT = Path(__file__).with_name("expected_postgres_schema.txt")

DESCRIBE = {
    "enums": """
        SELECT t.typname || ': ' || string_agg(e.enumlabel, ', ' ORDER BY e.enumsortorder)
        FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
        JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'public'
        GROUP BY t.typname ORDER BY 1""",
    "columns": """
        SELECT table_name || '.' || column_name || ' ' || udt_name
               || CASE WHEN is_nullable = 'NO' THEN ' not null' ELSE '' END
               || COALESCE(' default ' || column_default, '')
        FROM information_schema.columns WHERE table_schema = 'public'
        ORDER BY table_name, ordinal_position""",
    "constraints": """
        SELECT conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1""",
    "indexes": """
        SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname""",
    "triggers": """
        SELECT tgrelid::regclass || ' ' || tgname || ' ' || pg_get_triggerdef(oid)
        FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1""",
    "storage": """
        SELECT relname || ' ' || array_to_string(reloptions, ', ')
        FROM pg_class WHERE relnamespace = 'public'::regnamespace AND reloptions IS NOT NULL
        ORDER BY 1""",
}


async def describe(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        lines = []
        for section, sql in DESCRIBE.items():
            lines.append(f"[{section}]")
            lines += [row[0] for row in await conn.fetch(sql)]
        return "\n".join(lines) + "\n"
    finally:
        await conn.close()


async def test_migrations_build_the_expected_schema_and_are_idempotent(
    empty_pg_database: str,
) -> None:
    store = PostgresStore(empty_pg_database)
    await store.open()
    try:
        applied = await store.migrate()
        assert applied and applied[0] == "0001_initial"
        schema = await describe(empty_pg_database)
        assert await store.migrate() == []
        assert await describe(empty_pg_database) == schema
    finally:
        await store.close()
    if os.environ.get("UPDATE_SCHEMA_SNAPSHOT"):
        SNAPSHOT.write_text(schema)
    assert schema == SNAPSHOT.read_text()
