"""Who is looking at the dashboard, and what protects them.

- Sign-in: the same tokens as the API (``api.auth.TokenAuth``). The token is asked for once
  and kept in an HttpOnly, SameSite=Strict cookie scoped to the dashboard's path (Secure when
  the request came over HTTPS, directly or through a proxy that says so). With no token
  configured the dashboard is open, like the API, and says so on every page.
- CSRF: a random token in its own SameSite=Strict cookie, echoed by every state-changing
  request (a form field or the ``X-CSRF-Token`` header htmx sends); compared in constant time.
- Headers: a Content-Security-Policy that allows scripts and styles from the dashboard's
  own origin only (no inline script, no eval) and no framing; no MIME sniffing; no referrer.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request
from starlette.responses import Response

from async_jobs.api.auth import OPEN, Principal, TokenAuth
from async_jobs.domain.errors import AuthTokenError

SESSION_COOKIE = "async_jobs_session"
CSRF_COOKIE = "async_jobs_csrf"
CSRF_HEADER = "x-csrf-token"

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def principal_of(request: Request, auth: TokenAuth | None) -> Principal | None:
    """The signed-in principal (``OPEN`` when no token is configured), or None."""
    if auth is None:
        return OPEN
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        return auth.principal_for(token)
    except AuthTokenError:
        return None


def csrf_token(request: Request) -> str:
    """This browser's CSRF token: the cookie's, or a new one (set by ``protect``)."""
    token = request.cookies.get(CSRF_COOKIE)
    if token and len(token) == 43:
        return token
    new: str = getattr(request.state, "async_jobs_new_csrf", None) or secrets.token_urlsafe(32)
    request.state.async_jobs_new_csrf = new
    return new


def csrf_ok(request: Request, form: dict[str, str]) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE)
    given = request.headers.get(CSRF_HEADER) or form.get("csrf") or ""
    return cookie is not None and hmac.compare_digest(cookie.encode(), given.encode())


def is_https(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip()
    return request.url.scheme == "https" or forwarded == "https"


def protect(request: Request, response: Response, path: str) -> Response:
    """Add the security headers, and the CSRF cookie if this browser has none yet."""
    response.headers.update(HEADERS)
    new = getattr(request.state, "async_jobs_new_csrf", None)
    if new:
        response.set_cookie(
            CSRF_COOKIE,
            new,
            path=path,
            httponly=True,
            samesite="strict",
            secure=is_https(request),
        )
    return response


def sign_in(request: Request, response: Response, token: str, path: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        path=path,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def sign_out(response: Response, path: str) -> None:
    response.delete_cookie(SESSION_COOKIE, path=path)
