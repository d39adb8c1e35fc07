"""``python -m async_jobs`` is ``async-jobs``."""

from async_jobs.cli import main

raise SystemExit(main())
