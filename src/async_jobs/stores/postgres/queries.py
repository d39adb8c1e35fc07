"""The store's named queries, read once from ``queries.sql``."""

from __future__ import annotations

from async_jobs.stores.sqlfile import load_queries

QUERIES = load_queries("async_jobs.stores.postgres")
