"""PostgreSQL store (asyncpg)."""

from async_jobs.stores.postgres.store import PostgresStore, insert_jobs_on

__all__ = ["PostgresStore", "insert_jobs_on"]
