"""The web dashboard (``GET /dashboard``): see ``docs/dashboard.md``."""

from async_jobs.api.dashboard.router import create_dashboard_router

HTMX_VERSION = "2.0.11"  # static/htmx.min.js, vendored (static/VENDORED.md)

__all__ = ["HTMX_VERSION", "create_dashboard_router"]
