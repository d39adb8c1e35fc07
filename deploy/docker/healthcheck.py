#!/usr/bin/env python3
"""The image's HEALTHCHECK: exit 0 when the process's health endpoint answers 200, else 1.

Which endpoint, from the same variables the process reads:
- ``HEALTHCHECK_URL`` when set (any URL; for roles or set-ups the rules below miss);
- else ``ASYNC_JOBS_METRICS_PORT`` when set: a worker's or scheduler's own health port;
- else the API: ``ASYNC_JOBS_API_PORT`` (default 8000) under ``ASYNC_JOBS_API_PREFIX``.

The path is ``/health`` (liveness). Once ``GET /health/ready`` exists, set
``HEALTHCHECK_PATH=/health/ready`` to probe readiness instead.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def health_url(env: dict[str, str]) -> str:
    if env.get("HEALTHCHECK_URL"):
        return env["HEALTHCHECK_URL"]
    path = env.get("HEALTHCHECK_PATH") or "/health"
    if env.get("ASYNC_JOBS_METRICS_PORT"):
        return f"http://127.0.0.1:{env['ASYNC_JOBS_METRICS_PORT']}{path}"
    port = env.get("ASYNC_JOBS_API_PORT") or "8000"
    prefix = (env.get("ASYNC_JOBS_API_PREFIX") or "").rstrip("/")
    return f"http://127.0.0.1:{port}{prefix}{path}"


def main() -> int:
    url = health_url(dict(os.environ))
    try:
        with urllib.request.urlopen(url, timeout=4) as answer:  # noqa: S310 - our own URL
            status = answer.status
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    print(f"{url}: {status}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
