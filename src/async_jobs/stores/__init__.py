"""Stores: where jobs live. ``store_from_dsn`` picks one from a DSN."""

from __future__ import annotations

from urllib.parse import urlsplit

from async_jobs.domain.errors import ConfigurationError
from async_jobs.ports import JobStore


def store_from_dsn(dsn: str) -> JobStore:
    """``postgresql://...``, ``sqlite:///relative.db``, ``sqlite:////absolute.db``, ``memory://``."""
    scheme = dsn.split(":", 1)[0].lower() if ":" in dsn else ""
    if scheme in ("postgresql", "postgres"):
        _check_postgres_dsn(dsn)
        from async_jobs.stores.postgres import PostgresStore

        return PostgresStore(dsn)
    if scheme == "sqlite":
        from async_jobs.stores.sqlite import SqliteStore

        return SqliteStore(sqlite_path(dsn))
    if scheme == "memory":
        from async_jobs.stores.memory import MemoryStore

        return MemoryStore()
    raise ConfigurationError(
        f"cannot use database DSN {_redact(dsn)!r}: it must start with postgresql://, "
        "sqlite:/// or memory://"
    )


def no_caller_transaction(store: str) -> ConfigurationError:
    """What ``insert_jobs_in`` raises in a store that cannot join a caller's transaction."""
    return ConfigurationError(
        f"transactional enqueue needs the PostgreSQL store; the {store} store cannot "
        "join a transaction on a connection of the caller's"
    )


def sqlite_path(dsn: str) -> str:
    """``sqlite:///a.db`` -> ``a.db``; ``sqlite:////tmp/a.db`` -> ``/tmp/a.db``."""
    if not dsn.lower().startswith("sqlite:///"):
        raise ConfigurationError(f"a SQLite DSN looks like sqlite:///path/to.db, not {dsn!r}")
    path = dsn[len("sqlite:///") :]
    if not path:
        raise ConfigurationError("the SQLite DSN names no file: use sqlite:///path/to.db")
    return path


def _check_postgres_dsn(dsn: str) -> None:
    try:
        parts = urlsplit(dsn)
        _ = parts.port
    except ValueError as exc:
        raise ConfigurationError(
            f"cannot parse the PostgreSQL DSN {_redact(dsn)!r}: {exc}"
        ) from exc


def _redact(dsn: str) -> str:
    """Hide a password before a DSN goes into a message."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparseable>"
    if parts.password:
        return dsn.replace(f":{parts.password}@", ":***@")
    return dsn
