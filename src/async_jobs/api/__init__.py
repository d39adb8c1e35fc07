"""HTTP adapters: the jobs router that apps mount, and the standalone app."""

from async_jobs.api.app import create_api
from async_jobs.api.auth import TokenAuth
from async_jobs.api.dashboard import create_dashboard_router
from async_jobs.api.errors import install_error_handlers
from async_jobs.api.ops import OpsServer, create_ops_router
from async_jobs.api.router import create_jobs_router

__all__ = [
    "OpsServer",
    "TokenAuth",
    "create_api",
    "create_dashboard_router",
    "create_jobs_router",
    "create_ops_router",
    "install_error_handlers",
]
