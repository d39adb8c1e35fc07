"""PostgreSQL store (asyncpg)."""

from async_jobs.stores.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
