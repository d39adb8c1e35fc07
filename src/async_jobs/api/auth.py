"""Bearer tokens and the tenant each one acts for.

``ASYNC_JOBS_ENQUEUE_AUTH_TOKEN`` is one token with every right; ``ASYNC_JOBS_API_TOKENS`` maps
tokens to a tenant (that tenant's jobs only) or to ``"*"`` (every tenant, administration), or
to an object ``{"tenant": "t1" or "*", "role": "read" or "write"}``: a ``read`` token sees what
its tenant may see and changes nothing (403 on every state-changing route).
With neither configured the API is open. A token is compared in constant time with every
configured token, so the time taken says nothing about which one nearly matched.

The check runs before the request body is read: as ASGI middleware in front of the body
limit in the standalone app, and in the route itself where an application mounts the router
in its own app (then it runs after that app's own middleware).
"""

from __future__ import annotations

import dataclasses
import hmac
import json
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from async_jobs.api.errors import on_http_error, on_invalid_request, on_our_error
from async_jobs.core.settings import Settings
from async_jobs.domain.errors import (
    AsyncJobsError,
    AuthTokenError,
    ConfigurationError,
    ForbiddenError,
)

ADMIN = "*"
Handler = Callable[[Request], Coroutine[Any, Any, Response]]
_STATE_KEY = "async_jobs_principal"


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: one tenant, or every tenant (``tenant_id`` None: admin)."""

    tenant_id: str | None
    read_only: bool = False

    @property
    def is_admin(self) -> bool:
        return self.tenant_id is None

    @property
    def can_act(self) -> bool:
        return not self.read_only

    def require_write(self) -> None:
        if self.read_only:
            raise ForbiddenError("this token is read-only")

    def tenant_for(self, asked: str | None) -> str | None:
        """The tenant a request may act on: its own for a tenant token (another one named is
        a 403), whatever was asked (None: every tenant) for an admin."""
        if self.tenant_id is None:
            return asked
        if asked is not None and asked != self.tenant_id:
            raise ForbiddenError(f"this token acts for tenant {self.tenant_id!r} only")
        return self.tenant_id

    def require_admin(self) -> None:
        if self.tenant_id is not None:
            raise ForbiddenError('this needs an admin token (one mapped to "*")')


OPEN = Principal(None)


class TokenAuth:
    """The configured tokens; ``authenticate`` turns an ``Authorization`` header into a
    ``Principal`` or raises ``AuthTokenError``."""

    def __init__(self, tokens: Mapping[str, object]) -> None:
        self._tokens = [
            (token.encode(), _principal(token, scope)) for token, scope in tokens.items()
        ]

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenAuth | None:
        """None when no token is configured: the API is open."""
        tokens: dict[str, object] = dict(settings.api_tokens)
        if settings.enqueue_auth_token:
            tokens[settings.enqueue_auth_token] = ADMIN
        return cls(tokens) if tokens else None

    def authenticate(self, authorization: str | None) -> Principal:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise AuthTokenError("a bearer token is required (Authorization: Bearer <token>)")
        return self.principal_for(given.strip())

    def principal_for(self, given: str) -> Principal:
        """The principal of a token presented by itself (the dashboard's cookie)."""
        presented = given.encode()
        matched: Principal | None = None
        for token, principal in self._tokens:  # every token, whatever matched first
            if hmac.compare_digest(presented, token):
                matched = principal
        if matched is None:
            raise AuthTokenError("the token is not valid")
        return matched


def _principal(token: str, scope: object) -> Principal:
    """A token's principal from its configured scope: a tenant or ``"*"``, or an object
    ``{"tenant": ..., "role": "read" | "write"}`` (role optional, ``write`` by default)."""
    role = "write"
    if isinstance(scope, Mapping):
        unknown = set(scope) - {"tenant", "role"}
        role = scope.get("role", "write")
        scope = scope.get("tenant")
        if unknown or role not in ("read", "write"):
            raise ConfigurationError(
                'an API token\'s object takes "tenant" and "role" ("read" or "write") only'
            )
    if not token or not isinstance(scope, str) or not scope:
        raise ConfigurationError(
            'API tokens must be non-empty strings mapped to a tenant or to "*" '
            '(or to {"tenant": ..., "role": "read"})'
        )
    return Principal(None if scope == ADMIN else scope, read_only=role == "read")


async def principal_of(request: Request) -> Principal:
    """The principal the route or the middleware established for this request (async: a
    plain function dependency would cost a thread hop per request)."""
    principal = getattr(request.state, _STATE_KEY, None)
    return principal if isinstance(principal, Principal) else OPEN


def route_class(auth: TokenAuth | None) -> type[APIRoute]:
    """Routes that authenticate before their handler reads the body (unless the middleware
    has done it already; ``/health`` stays open), and answer our errors as JSON themselves,
    so that the router keeps its contract in an app that did not install our handlers."""

    class JobsRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            handler = super().get_route_handler()
            checks = auth is not None and not self.path.endswith("/health")

            async def handle(request: Request) -> Response:
                try:
                    if checks and getattr(request.state, _STATE_KEY, None) is None:
                        assert auth is not None
                        principal = auth.authenticate(request.headers.get("authorization"))
                        setattr(request.state, _STATE_KEY, principal)
                    return await self.respond(request, handler)
                except AsyncJobsError as exc:
                    return await on_our_error(request, exc)
                except RequestValidationError as exc:
                    return await on_invalid_request(request, exc)
                except HTTPException as exc:  # e.g. a body too deeply nested to parse
                    return await on_http_error(request, exc)

            return handle

        async def respond(self, request: Request, general: Handler) -> Response:
            """The answer, once the caller is known: FastAPI's own handling (``general``:
            parameters and body validated, then the endpoint). A route may take a shorter
            way for requests it can answer without it."""
            return await general(request)

    return JobsRoute


class TokenAuthMiddleware:
    """ASGI: 401 JSON with ``WWW-Authenticate: Bearer`` for a request without a valid token,
    before anything reads its body; ``/health`` (and the OpenAPI pages) stay open."""

    OPEN_PATHS = ("/health", "/health/ready", "/metrics", "/docs", "/openapi.json", "/redoc")

    def __init__(
        self, app: ASGIApp, auth: TokenAuth, own_auth_prefixes: tuple[str, ...] = ()
    ) -> None:
        """``own_auth_prefixes``: paths that authenticate by themselves (the dashboard's
        sign-in cookie) and pass through unchecked here."""
        self.app = app
        self.auth = auth
        self.own_auth_prefixes = own_auth_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or path.endswith(self.OPEN_PATHS)
            or path.startswith(self.own_auth_prefixes)
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        raw = headers.get(b"authorization")
        try:
            principal = self.auth.authenticate(raw.decode("latin-1") if raw else None)
        except AuthTokenError as exc:
            await send_error(send, exc)
            return
        scope.setdefault("state", {})[_STATE_KEY] = principal
        await self.app(scope, receive, send)


async def send_error(send: Send, exc: AuthTokenError) -> None:
    body = json.dumps(exc.to_json()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if exc.http_status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": exc.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
