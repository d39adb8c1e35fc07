"""Load a store's named SQL queries from its one ``queries.sql`` file.

A query starts at a ``-- name: NAME`` line and runs to the next one; other ``--`` lines
above the SQL are its documentation.
"""

from __future__ import annotations

import re
from importlib import resources

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_INCLUDE = re.compile(r"^-- include: (?P<file>[\w.]+\.sql)\s*$", re.MULTILINE)


def load_queries(package: str, filename: str = "queries.sql") -> dict[str, str]:
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        sql = "\n".join(line for line in body.splitlines() if not line.startswith("--"))
        queries[name] = sql.strip().rstrip(";")
    return queries


def load_migrations(package: str) -> list[tuple[str, str]]:
    """(name, sql) of every ``NNNN_*.sql`` file in the package, in number order. A line
    ``-- include: FILE.sql`` stands for the whole of that file of the parent package (the
    store's), so that a definition several migrations create (PostgreSQL's claim function)
    has one home."""
    folder = resources.files(package)
    store = resources.files(package.rpartition(".")[0])
    names = sorted(
        entry.name for entry in folder.iterdir() if re.fullmatch(r"\d{4}_\w+\.sql", entry.name)
    )

    def include(match: re.Match[str]) -> str:
        return store.joinpath(match["file"]).read_text("utf-8")

    return [
        (name.removesuffix(".sql"), _INCLUDE.sub(include, folder.joinpath(name).read_text("utf-8")))
        for name in names
    ]
