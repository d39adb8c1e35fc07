"""Load a store's named SQL queries from its one ``queries.sql`` file.

A query starts at a ``-- name: NAME`` line and runs to the next header; other ``--`` lines
above the SQL are its documentation. A ``-- part: NAME`` header starts, the same way, a
fragment that is not a query itself: SQL that several queries of the file share (a fence, a
list of filters), written once. A line ``-- use: NAME`` in a query stands for that part's
lines, each indented as the ``-- use:`` line is.
"""

from __future__ import annotations

import re
from importlib import resources

_HEADER = re.compile(r"^-- (name|part): (\w+)\s*$", re.MULTILINE)
_USE = re.compile(r"^(?P<indent>[ \t]*)-- use: (?P<part>\w+)[ \t]*$", re.MULTILINE)
_INCLUDE = re.compile(r"^-- include: (?P<file>[\w.]+\.sql)\s*$", re.MULTILINE)


def load_queries(package: str, filename: str = "queries.sql") -> dict[str, str]:
    queries, parts = _read(package, filename)
    return {name: _spliced(sql, parts, name) for name, sql in queries.items()}


def _read(package: str, filename: str) -> tuple[dict[str, str], dict[str, str]]:
    """The queries and the parts of a queries file, parts not yet written in."""
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    pieces = _HEADER.split(text)
    queries: dict[str, str] = {}
    parts: dict[str, str] = {}
    for kind, name, body in zip(pieces[1::3], pieces[2::3], pieces[3::3], strict=True):
        (queries if kind == "name" else parts)[name] = _statement(body)
    if nested := [name for name, sql in parts.items() if _USE.search(sql)]:
        raise ValueError(f"{filename}: a part uses no other part ({', '.join(nested)})")
    return queries, parts


def _statement(body: str) -> str:
    """The SQL of a query or part: the ``--`` lines at its margin (documentation) dropped,
    except ``-- use:`` lines, which ``_spliced`` replaces."""
    lines = [line for line in body.splitlines() if not line.startswith("--") or _USE.match(line)]
    return "\n".join(lines).strip().rstrip(";")


def _spliced(sql: str, parts: dict[str, str], query: str) -> str:
    def part(match: re.Match[str]) -> str:
        if match["part"] not in parts:
            raise ValueError(f"query {query} uses the part {match['part']}, which is not defined")
        return "\n".join(match["indent"] + line for line in parts[match["part"]].splitlines())

    return _USE.sub(part, sql)


def load_migrations(package: str) -> list[tuple[str, str]]:
    """(name, sql) of every ``NNNN_*.sql`` file in the package, in number order. A line
    ``-- include: FILE.sql`` stands for the whole of that file of the parent package (the
    store's), so that a definition several migrations create (PostgreSQL's claim function)
    has one home; its ``-- use: PART`` lines are the parts of the store's ``queries.sql``, as
    they are when the migration runs."""
    folder = resources.files(package)
    store_package = package.rpartition(".")[0]
    store = resources.files(store_package)
    names = sorted(
        entry.name for entry in folder.iterdir() if re.fullmatch(r"\d{4}_\w+\.sql", entry.name)
    )

    def include(match: re.Match[str]) -> str:
        text = store.joinpath(match["file"]).read_text("utf-8")
        if not _USE.search(text):
            return text
        _, parts = _read(store_package, "queries.sql")
        return _spliced(text, parts, match["file"])

    return [
        (name.removesuffix(".sql"), _INCLUDE.sub(include, folder.joinpath(name).read_text("utf-8")))
        for name in names
    ]
