"""Migrations load shared definitions: ``-- include: FILE.sql`` stands for the store's file."""

from __future__ import annotations

import re
from importlib import resources

from async_jobs.stores.sqlfile import load_migrations


def test_the_claim_function_has_one_home_that_its_migrations_load() -> None:
    claim = resources.files("async_jobs.stores.postgres").joinpath("claim.sql").read_text("utf-8")
    migrations = dict(load_migrations("async_jobs.stores.postgres.migrations"))
    loading = sorted(name for name, sql in migrations.items() if claim in sql)
    assert loading[:2] == ["0005_dispatch", "0008_uncapped_claim"]
    assert not [name for name, sql in migrations.items() if re.search("^-- include:", sql, re.M)]
    # Created nowhere else: outside the file's text, only 0001 created a first version (of
    # another signature, which 0003 drops).
    elsewhere = [
        name
        for name, sql in migrations.items()
        if re.search(r"CREATE (OR REPLACE )?FUNCTION async_jobs_claim\(", sql.replace(claim, ""))
    ]
    assert elsewhere == ["0001_initial"]
