"""``python -m build`` makes a wheel and an sdist, and the wheel alone, installed into a clean
virtual environment, runs the quick start: migrate, enqueue, ``worker --burst`` on SQLite.

About 30 s once the dependencies sit in a local wheelhouse (the first run fills it from the
package index: a minute or two). Deselect with ``-m "not packaging"``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "async-jobs" / "wheelhouse"
)

pytestmark = [pytest.mark.packaging, pytest.mark.cpu_heavy, pytest.mark.timeout(400)]


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"
    return done.stdout


def install(python: Path, wheel: Path, cwd: Path) -> None:
    """Into the venv of ``python``: the wheel and its dependencies, from the wheelhouse alone
    (fast, no index), refilling the wheelhouse from the index when a dependency is missing."""
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    offline = [*pip, "install", "--quiet", "--no-index", "--find-links", str(WHEELHOUSE)]
    if subprocess.run([*offline, str(wheel)], cwd=cwd, capture_output=True, check=False).returncode:
        WHEELHOUSE.mkdir(parents=True, exist_ok=True)
        lock = ["--constraint", str(ROOT / "requirements.lock")]
        # The wheelhouse keeps dependencies only: a copy of our own wheel left there is taken,
        # with its older dependencies, by pip wheel instead of the new one.
        for own in WHEELHOUSE.glob("async_job_server-*.whl"):
            own.unlink()
        run([*pip, "wheel", "--quiet", *lock, "--wheel-dir", str(WHEELHOUSE), str(wheel)], cwd)
        for own in WHEELHOUSE.glob("async_job_server-*.whl"):
            own.unlink()
        run([*offline, str(wheel)], cwd)


def test_the_wheel_installs_into_a_clean_venv_and_runs_the_quick_start(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], tmp_path)
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")

    shipped = zipfile.ZipFile(wheel).namelist()
    for store in ("postgres", "sqlite"):
        migrations = (ROOT / "src" / "async_jobs" / "stores" / store / "migrations").glob("*.sql")
        for sql in [*migrations, ROOT / "src" / "async_jobs" / "stores" / store / "queries.sql"]:
            assert str(sql.relative_to(ROOT / "src")) in shipped
    assert "async_jobs/py.typed" in shipped
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert any(n.endswith("/pyproject.toml") for n in names)
    assert any(
        n.endswith("/src/async_jobs/stores/sqlite/migrations/0001_initial.sql") for n in names
    )

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    install(venv / "bin" / "python", wheel, tmp_path)

    # The quick start, in a directory far from the sources, with nothing but the venv.
    home = tmp_path / "user"
    home.mkdir()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "ASYNC_JOBS_DB_DSN": f"sqlite:///{home / 'jobs.db'}",
        "ASYNC_JOBS_HANDLERS": "async_jobs.demo",
    }
    where = run(
        ["python", "-c", "import async_jobs, sys; print(async_jobs.__file__, sys.prefix)"],
        home,
        env,
    )
    assert where.startswith(str(venv)) and str(ROOT) not in where
    assert "0001_initial" in run(["async-jobs", "migrate"], home, env)
    job = json.loads(run(["async-jobs", "enqueue", "say_hello"], home, env))
    assert job["status"] == "pending"
    worked = run(["async-jobs", "worker", "--burst", "--handlers", "async_jobs.demo"], home, env)
    assert "say hello" in worked
    final = json.loads(run(["async-jobs", "jobs", "show", job["id"]], home, env))
    assert (final["status"], final["result"]) == ("succeeded", "say hello")
