"""The SQL files of a store: migrations load shared definitions (``-- include: FILE.sql``
stands for the store's file), and a query's ``-- use: NAME`` stands for a part of its file."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

from async_jobs.stores.sqlfile import load_migrations, load_queries

STORES = ("async_jobs.stores.postgres", "async_jobs.stores.sqlite")


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


def _package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sql: str) -> str:
    package = f"sqlfile_{tmp_path.name}"  # a name of its own: imported packages stay cached
    folder = tmp_path / package
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "queries.sql").write_text(sql)
    monkeypatch.syspath_prepend(str(tmp_path))
    return package


def test_a_use_line_stands_for_the_part_indented_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = _package(
        tmp_path,
        monkeypatch,
        "-- The file's own notes.\n\n"
        "-- part: fence\n-- Documentation, not SQL.\nWHERE a = 1\n  AND b = 2\n\n"
        "-- name: one\nSELECT 1 FROM t\n-- use: fence\n\n"
        "-- name: two\nSELECT count(*) FROM (\n    SELECT 1 FROM t\n    -- use: fence\n) AS s;\n",
    )
    assert load_queries(package) == {
        "one": "SELECT 1 FROM t\nWHERE a = 1\n  AND b = 2",
        "two": "SELECT count(*) FROM (\n    SELECT 1 FROM t\n"
        "    WHERE a = 1\n      AND b = 2\n) AS s",
    }


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("-- name: one\nSELECT 1\n-- use: nowhere\n", "uses the part nowhere"),
        ("-- part: a\nx\n-- part: b\n-- use: a\n-- name: one\n-- use: b\n", "no other part"),
    ],
)
def test_an_unknown_or_nested_part_is_refused_when_the_file_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sql: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        load_queries(_package(tmp_path, monkeypatch, sql))


def test_an_included_file_takes_the_parts_of_the_stores_queries() -> None:
    """outcomes.sql's functions keep the fence and history parts of queries.sql, written in
    when a migration includes the file: no migration is left with a ``-- use:`` line."""
    migrations = dict(load_migrations("async_jobs.stores.postgres.migrations"))
    assert not [name for name, sql in migrations.items() if re.search("^\\s*-- use:", sql, re.M)]
    outcomes = migrations["0020_outcomes_without_table_scans"]
    assert "CREATE OR REPLACE FUNCTION async_jobs_record_outcomes(" in outcomes
    assert "    WHERE j.id = ANY($1::uuid[])\n      AND j.id = u.id" in outcomes  # the fence
    assert "'attempt', j.attempts," in outcomes  # the history entry's part


@pytest.mark.parametrize("package", STORES)
def test_every_part_of_a_store_serves_several_queries(package: str) -> None:
    """Counted in queries.sql and the files that migrations include (outcomes.sql)."""
    files = resources.files(package)
    text = "".join(f.read_text("utf-8") for f in files.iterdir() if f.name.endswith(".sql"))
    uses = re.findall(r"^\s*-- use: (\w+)", text, re.M)
    parts = re.findall(r"^-- part: (\w+)", text, re.M)
    assert {part: uses.count(part) for part in parts if uses.count(part) < 2} == {}
    assert not [sql for sql in load_queries(package).values() if "-- use:" in sql]
