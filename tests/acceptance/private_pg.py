"""A throwaway PostgreSQL cluster of a test's own, which the test may stop and start.

The shared server cannot be stopped under other tests, so outage scenarios get a private
cluster: ``initdb`` (trust auth, no fsync) in a temporary directory, ``pg_ctl start`` on
127.0.0.1 and a free port, one database created and migrated. ``stop()`` is ``pg_ctl stop -m
fast`` (every session is terminated, as in a real restart); ``start()`` brings it back on the
same port and data directory. ``close()`` stops it (immediately, if need be) and removes the
directory; the fixture calls it even when the test fails.

Run as root, PostgreSQL refuses to start, so the binaries then run as the ``postgres`` user.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import asyncpg

from async_jobs import JobApp
from tests.helpers import free_port

PG_BIN = Path(os.environ.get("ASYNC_JOBS_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
DATABASE = "aj_outage"
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
}


class PrivatePostgres:
    """One private cluster; ``dsn`` names its migrated database."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="aj-private-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"
        self.admin_dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._user = _run_as_user()
        if self._user is not None:
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)

    # -- set up -----------------------------------------------------------------------------

    def create(self) -> None:
        """initdb, start, create the database and migrate it."""
        self._pg(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            what="initdb",
        )
        conf = "".join(f"{key} = {value}\n" for key, value in SETTINGS.items())
        conf += f"port = {self.port}\nunix_socket_directories = '{self.root}'\n"
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as f:
            f.write(conf)
        self.start()
        asyncio.run(self._create_and_migrate())

    async def _create_and_migrate(self) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()
        app = JobApp(self.dsn)
        async with app:
            await app.migrate()

    # -- the outage -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the cluster and wait until it accepts connections."""
        self._pg(
            "pg_ctl",
            "start",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "30",
            what="pg_ctl start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (``fast``: every session is terminated) and wait until it is down."""
        self._pg(
            "pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "30", what="pg_ctl stop"
        )

    def is_running(self) -> bool:
        status = subprocess.run(
            self._command("pg_ctl", "status", "-D", str(self.data)),
            capture_output=True,
            text=True,
            check=False,
        )
        return status.returncode == 0

    def close(self) -> None:
        """Stop (fast, then immediate) if running, and remove every file."""
        try:
            if self.data.exists() and self.is_running():
                try:
                    self.stop("fast")
                except AssertionError:
                    self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return "(no server log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    # -- plumbing ---------------------------------------------------------------------------

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(PG_BIN / program), *args]
        if self._user is not None:
            command = ["runuser", "-u", self._user.pw_name, "--", *command]
        return command

    def _pg(self, program: str, *args: str, what: str) -> None:
        try:
            done = subprocess.run(
                self._command(program, *args),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                cwd=self.root,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AssertionError(f"{what} could not run: {exc}") from exc
        if done.returncode != 0:
            raise AssertionError(
                f"{what} failed (exit {done.returncode}) for the private cluster in "
                f"{self.root}:\n{done.stdout}\n{done.stderr}\nserver log:\n{self.log_tail()}"
            )


def _run_as_user() -> pwd.struct_passwd | None:
    """PostgreSQL will not run as root: as root, run its binaries as ``postgres``."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(os.environ.get("ASYNC_JOBS_TEST_PG_USER", "postgres"))
    except KeyError as exc:
        raise AssertionError(
            "running as root, a private PostgreSQL cluster needs the 'postgres' OS user"
        ) from exc
