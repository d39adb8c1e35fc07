"""SQLite store (aiosqlite): the embedded default."""

from async_jobs.stores.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]
