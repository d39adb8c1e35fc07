"""The dashboard's routes: server-rendered pages (Jinja2, every value escaped), server-sent
events for live parts, plain forms for actions (each with a CSRF token, answered by a
redirect)."""

from __future__ import annotations

import asyncio
import dataclasses
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from async_jobs.api.auth import Principal, TokenAuth
from async_jobs.api.dashboard import security, views
from async_jobs.api.schemas import decode_cursor, encode_cursor
from async_jobs.app import JobApp, parse_job_id
from async_jobs.domain.errors import (
    AsyncJobsError,
    AuthTokenError,
    InvalidJobError,
    InvalidTransitionError,
    JobNotFoundError,
)
from async_jobs.domain.jobs import Job, JobFilter, JobId, JobState, Priority
from async_jobs.domain.transitions import retryable
from async_jobs.domain.validation import check_filter
from async_jobs.domain.workers import ProcessKind

STATIC = {
    "htmx.min.js": "text/javascript; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
NOTICES = {
    "retried": "The job is pending again.",
    "cancelled": "Cancellation asked: a waiting job is cancelled now, a running one when its "
    "handler stops.",
    "paused": "Use case paused: its jobs stop starting (running ones finish).",
    "resumed": "Use case resumed.",
    "periodic-paused": "Periodic job paused: its ticks pass without a job.",
    "periodic-resumed": "Periodic job resumed from its next tick.",
    "invalid": "Nothing changed: the job is not in a state that allows this.",
    "nothing": "Nothing selected.",
    "nothing-retry": "No job matching the filter can be retried: only failed or cancelled ones "
    "can (among the jobs searched).",
    "nothing-cancel": "No job matching the filter can be cancelled: only pending, queued or "
    "running ones can (among the jobs searched).",
}
# After a bulk action, why more jobs may match than it changed (BulkPlan.more).
MORE = {
    "cap": f" More matched: at most {views.BULK_MAX:,} change at a time; do it again for "
    "the next ones.",
    "window": f" Only the newest jobs were searched (at most {views.SCAN_BUDGET:,}): older ones "
    "that match are found with “Search older »”, and can be changed from there.",
}
ADMIN_NAV = [("", "Overview"), ("/jobs", "Jobs"), ("/workers", "Workers"),
             ("/periodic", "Periodic"), ("/tenants", "Tenants")]  # fmt: skip
TENANT_NAV = [("", "Overview"), ("/jobs", "Jobs"), ("/tenants", "Tenants")]
# Live parts are server-sent events (``/events/...``): each open stream renders its fragment
# once per interval (a few small bounded reads) and sends it only when it changed; a comment
# line keeps a quiet stream open (and finds a client that left). A stream ends after
# STREAM_SECONDS (the browser's EventSource reconnects, signing in again) or when its client
# goes; at most STREAM_MAX are open in a process (more are answered 503 and retry).
STREAM_INTERVALS = {"overview": 3.0, "jobs": 2.0, "job": 1.0, "workers": 3.0}
STREAM_SECONDS = 300.0
STREAM_KEEPALIVE_SECONDS = 15.0
STREAM_MAX = 64
# A bulk action changes its jobs one by one (each change is the single-job operation, with
# its guard), this many at once: half of a PostgreSQL store's default pool, so that the
# workers and other requests of the process keep connections.
BULK_LANES = 4

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("async_jobs.api.dashboard", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

Page = Callable[[Request, Principal], Awaitable[Response]]


@dataclasses.dataclass(frozen=True, slots=True)
class JobQuery:
    """The Jobs page's filters as the browser sent them (strings, '' for none)."""

    state: str = ""
    use_case: str = ""
    type: str = ""
    tenant: str = ""
    priority: str = ""
    created_after: str = ""
    created_before: str = ""
    q: str = ""

    @classmethod
    def of(cls, values: dict[str, str], prefix: str = "") -> JobQuery:
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: values.get(prefix + n, "").strip()[:200] for n in names})

    @property
    def query_items(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in dataclasses.asdict(self).items() if v]

    @property
    def query(self) -> str:
        return urllib.parse.urlencode(self.query_items)

    def where(self, who: Principal) -> JobFilter:
        """``InvalidJobError`` for a value that cannot be a filter: an unknown state or
        priority, or what no store takes (``check_filter``: a NUL, a time out of range)."""
        if self.state and self.state not in views.STATES:
            raise InvalidJobError(f"unknown state {self.state!r}", field="state")
        if self.priority and self.priority not in views.PRIORITIES:
            raise InvalidJobError(f"unknown priority {self.priority!r}", field="priority")
        return check_filter(
            JobFilter(
                tenant_id=who.tenant_id if who.tenant_id is not None else (self.tenant or None),
                status=JobState(self.state) if self.state else None,
                use_case=self.use_case or None,
                type=self.type or None,
                created_after=_time(self.created_after, "created_after"),
                created_before=_time(self.created_before, "created_before"),
                priority=Priority(self.priority) if self.priority else None,
            )
        )


def _time(text: str, field: str) -> datetime | None:
    """A time the browser sent: without a time zone (a datetime-local field), in UTC."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidJobError(f"{field} is not a date and time", field=field) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def create_dashboard_router(
    jobs: JobApp, auth: TokenAuth | None = None, *, path: str = "/dashboard"
) -> APIRouter:
    """The dashboard at ``path``, for an app to mount next to ``create_jobs_router``:
    ``app.include_router(create_dashboard_router(jobs))``. ``auth``: the tokens that may sign
    in (default: those of ``jobs.settings``, as the API; none configured: open)."""
    d = _Dashboard(jobs, auth if auth is not None else TokenAuth.from_settings(jobs.settings), path)
    router = APIRouter(include_in_schema=False)
    add = router.add_api_route
    add(f"{d.base}/signin", d.signin_form, methods=["GET"])
    add(f"{d.base}/signin", d.signin, methods=["POST"])
    add(f"{d.base}/signout", d.signout, methods=["POST"])
    add(f"{d.base}/static/{{name}}", d.static, methods=["GET"])
    gets: list[tuple[str, Page]] = [
        ("", d.overview),
        ("/", d.overview),
        ("/live/overview", d.overview_live),
        ("/jobs", d.job_list),
        ("/live/jobs", d.job_rows),
        ("/jobs/{job_id}", d.job_page),
        ("/live/jobs/{job_id}", d.job_live),
        ("/workers", d.workers),
        ("/live/workers", d.workers_live),
        ("/periodic", d.periodic),
        ("/tenants", d.tenants),
    ]
    streams: list[tuple[str, Page, float]] = [
        ("/events/overview", d.overview_live, STREAM_INTERVALS["overview"]),
        ("/events/jobs", d.job_rows, STREAM_INTERVALS["jobs"]),
        ("/events/jobs/{job_id}", d.job_live, STREAM_INTERVALS["job"]),
        ("/events/workers", d.workers_live, STREAM_INTERVALS["workers"]),
    ]
    gets += [(route, d.stream(fragment, every)) for route, fragment, every in streams]
    for route, handler in gets:
        add(f"{d.base}{route}", d.page(handler), methods=["GET"])
    posts: list[tuple[str, Page]] = [
        ("/jobs/bulk", d.bulk),
        ("/jobs/{job_id}/retry", d.job_action),
        ("/jobs/{job_id}/cancel", d.job_action),
        ("/use-cases/{name}/pause", d.use_case_action),
        ("/use-cases/{name}/resume", d.use_case_action),
        ("/periodic/{name}/pause", d.periodic_action),
        ("/periodic/{name}/resume", d.periodic_action),
    ]
    for route, handler in posts:
        add(f"{d.base}{route}", d.page(handler), methods=["POST"])
    return router


class _Dashboard:
    """The pages and actions; each page method takes the request and its principal."""

    def __init__(self, jobs: JobApp, auth: TokenAuth | None, path: str) -> None:
        self.jobs = jobs
        self.auth = auth
        self.base = path.rstrip("/")
        self.streams_open = 0

    def render(self, request: Request, who: Principal, template: str, **values: Any) -> Response:
        done = request.query_params.get("done", "")
        notice = NOTICES.get(done)
        if done == "bulk":
            notice = (
                f"{_int(request.query_params.get('n'))} jobs changed, "
                f"{_int(request.query_params.get('skipped'))} left as they were."
                + MORE.get(request.query_params.get("more", ""), "")
            )
        context = {
            "base": self.base,
            "nav": ADMIN_NAV if who.is_admin else TENANT_NAV,
            "principal": who,
            "open_mode": self.auth is None,
            "csrf": security.csrf_token(request),
            "can_act": who.can_act,
            "can_admin": who.can_act and who.is_admin,
            "notice": notice,
            "states": views.STATES,
            "priorities": views.PRIORITIES,
            "cap": views.COUNT_CAP,
            "bulk_max": views.BULK_MAX,
            "scan_budget": views.SCAN_BUDGET,
            "page_title": "",
            **values,
        }
        html = _templates.get_template(template).render(context)
        status = values.get("status_code", 200)
        return security.protect(request, HTMLResponse(html, status_code=status), self.base)

    def page(self, handler: Page) -> Callable[[Request], Awaitable[Response]]:
        """Signed-in requests only: a browser without a session goes to the sign-in form
        (an htmx request is told to); a state-changing one needs the CSRF token too."""

        async def guarded(request: Request) -> Response:
            who = security.principal_of(request, self.auth)
            if who is None:
                if request.headers.get("hx-request"):
                    return Response(status_code=401, headers={"hx-redirect": f"{self.base}/signin"})
                return security.protect(
                    request, RedirectResponse(f"{self.base}/signin", status_code=303), self.base
                )
            if request.method == "POST":
                form = await _form(request)
                if not security.csrf_ok(request, _first(form)):
                    return self._refused(
                        request, who, 403, "The form was stale: reload and try again."
                    )
                if not who.can_act:
                    return self._refused(request, who, 403, "This token is read-only.")
                request.state.async_jobs_form = form
            try:
                return await handler(request, who)
            except JobNotFoundError:
                return self._refused(request, who, 404, "No such job.")
            except InvalidJobError as exc:
                return self._refused(request, who, 400, exc.message)

        return guarded

    def _refused(self, request: Request, who: Principal, status: int, text: str) -> Response:
        return self.render(
            request, who, "message.html", page_title="", message=text, status_code=status
        )

    def back(self, to: str, **query: object) -> Response:
        sep = "&" if "?" in to else "?"
        url = (
            f"{self.base}{to}{sep}{urllib.parse.urlencode(query)}" if query else f"{self.base}{to}"
        )
        return RedirectResponse(url, status_code=303)

    # -- sign-in ----------------------------------------------------------------------------

    async def signin_form(self, request: Request) -> Response:
        if self.auth is None:
            return RedirectResponse(f"{self.base}", status_code=303)
        html = _templates.get_template("signin.html").render(
            base=self.base, csrf=security.csrf_token(request), error=None
        )
        return security.protect(request, HTMLResponse(html), self.base)

    async def signin(self, request: Request) -> Response:
        form = _first(await _form(request))
        if self.auth is None:
            return RedirectResponse(f"{self.base}", status_code=303)
        error = None
        if not security.csrf_ok(request, form):
            error = "The form was stale: try again."
        else:
            try:
                self.auth.principal_for(form.get("token", "").strip())
            except AuthTokenError:
                error = "That token is not valid."
        if error is not None:
            html = _templates.get_template("signin.html").render(
                base=self.base, csrf=security.csrf_token(request), error=error
            )
            return security.protect(request, HTMLResponse(html, status_code=401), self.base)
        response = RedirectResponse(f"{self.base}", status_code=303)
        security.sign_in(request, response, form["token"].strip(), self.base)
        return security.protect(request, response, self.base)

    async def signout(self, request: Request) -> Response:
        form = _first(await _form(request))
        response = RedirectResponse(f"{self.base}/signin", status_code=303)
        if security.csrf_ok(request, form):
            security.sign_out(response, self.base)
        return security.protect(request, response, self.base)

    # -- pages ------------------------------------------------------------------------------

    async def overview(self, request: Request, who: Principal) -> Response:
        data = await views.overview(self.jobs, who)
        return self.render(request, who, "overview.html", page_title="Overview", ov=data)

    async def overview_live(self, request: Request, who: Principal) -> Response:
        data = await views.overview(self.jobs, who)
        return self.render(request, who, "_overview_live.html", ov=data)

    async def job_list(self, request: Request, who: Principal) -> Response:
        return await self._jobs_page(request, who, "jobs.html")

    async def job_rows(self, request: Request, who: Principal) -> Response:
        return await self._jobs_page(request, who, "_jobs_rows.html")

    async def _jobs_page(self, request: Request, who: Principal, template: str) -> Response:
        query = JobQuery.of(dict(request.query_params))
        cursor_text = request.query_params.get("cursor") or None
        error = None
        listing = views.JobList([])
        try:
            where = query.where(who)
            if query.q:
                found = await self._find(query.q, where.tenant_id)
                listing = views.JobList(found, str(len(found)))
            else:
                # The live rows show no count: they do without it.
                counted = template == "jobs.html"
                listing = await views.job_list(
                    self.jobs, where, decode_cursor(cursor_text), counted
                )
        except AsyncJobsError as exc:
            error = exc.message
        live_url = f"{self.base}/events/jobs?{query.query}"
        return self.render(
            request,
            who,
            template,
            page_title="Jobs",
            f=query,
            page_jobs=listing.items,
            next_cursor=encode_cursor(listing.older),
            search_older=encode_cursor(listing.searched_to),
            searched_to=listing.searched_to,
            cursor=cursor_text,
            live=cursor_text is None and not query.q,
            live_url=live_url,
            matching=listing.matching,
            error=error,
        )

    async def _find(self, q: str, tenant_id: str | None) -> list[Job]:
        """A job by id, or by idempotency key (in ``tenant_id``, or the default tenant)."""
        try:
            job_id = parse_job_id(q)
        except JobNotFoundError:  # not a job id: a key
            return await self.jobs.find_by_idempotency_key(q, tenant_id)
        try:
            return [await self.jobs.get_job(job_id, tenant_id)]
        except JobNotFoundError:
            return []

    async def job_page(self, request: Request, who: Principal) -> Response:
        job = await self.jobs.get_job(request.path_params["job_id"], who.tenant_id)
        return self.render(request, who, "job.html", page_title="Job", **_job_values(job))

    async def job_live(self, request: Request, who: Principal) -> Response:
        job = await self.jobs.get_job(request.path_params["job_id"], who.tenant_id)
        return self.render(request, who, "_job_live.html", **_job_values(job))

    async def job_action(self, request: Request, who: Principal) -> Response:
        job_id = request.path_params["job_id"]
        action = request.url.path.rsplit("/", 1)[-1]
        try:
            if action == "retry":
                await self.jobs.retry(job_id, who.tenant_id)
            else:
                await self.jobs.cancel(job_id, who.tenant_id)
        except InvalidTransitionError:
            return self.back(f"/jobs/{job_id}", done="invalid")
        return self.back(f"/jobs/{job_id}", done="retried" if action == "retry" else "cancelled")

    async def bulk(self, request: Request, who: Principal) -> Response:
        """Retry or cancel the selected jobs; or (``retry-all``, ``cancel-all``) every job
        matching the page's filter, from the page's position: bounded (``views.bulk_plan``)
        and only once the user confirmed the plan's page (``confirmed=yes``)."""
        form: dict[str, list[str]] = request.state.async_jobs_form
        fields = _first(form)
        action = fields.get("action", "")
        if action not in ("retry", "cancel", "retry-all", "cancel-all"):
            return self._refused(request, who, 400, "No such action.")
        verb = action.removesuffix("-all")
        query = JobQuery.of(fields, prefix="filter_")
        cursor = fields.get("cursor") or None
        position = [*query.query_items, *([("cursor", cursor)] if cursor else [])]
        page = f"/jobs?{urllib.parse.urlencode(position)}" if position else "/jobs"
        if not action.endswith("-all"):
            targets = [parse_job_id(i) for i in form.get("ids", [])[: views.BULK_MAX]]
            return await self._change(who, verb, targets, page)
        where = query.where(who)
        if query.q:  # the page lists what the search found: "all" is those, not the filter's
            plan = views.found_plan(await self._find(query.q, where.tenant_id), verb)
        else:
            plan = await views.bulk_plan(self.jobs, where, verb, decode_cursor(cursor))
        if not plan.jobs:
            return self.back(page, done=f"nothing-{verb}")
        if fields.get("confirmed") != "yes":
            return self.render(
                request,
                who,
                "bulk.html",
                page_title="Jobs",
                plan=plan,
                f=query,
                cursor=cursor,
                back_url=page,
            )
        return await self._change(who, verb, [j.id for j in plan.jobs], page, plan.more)

    async def _change(
        self, who: Principal, verb: str, targets: list[JobId], page: str, more: str = ""
    ) -> Response:
        if not targets:
            return self.back(page, done="nothing")
        change = self.jobs.retry if verb == "retry" else self.jobs.cancel
        lanes = asyncio.Semaphore(BULK_LANES)

        async def changes(job_id: JobId) -> bool:
            async with lanes:
                try:
                    await change(job_id, who.tenant_id)
                except (InvalidTransitionError, JobNotFoundError):
                    return False
                return True

        changed = sum(await asyncio.gather(*map(changes, targets)))
        skipped = len(targets) - changed
        return self.back(page, done="bulk", n=changed, skipped=skipped, more=more)

    async def use_case_action(self, request: Request, who: Principal) -> Response:
        if not who.is_admin:
            return self._refused(request, who, 403, "Pausing a use case needs an admin token.")
        name = request.path_params["name"]
        if request.url.path.endswith("/pause"):
            await self.jobs.pause(name)
            return self.back("", done="paused")
        await self.jobs.resume(name)
        return self.back("", done="resumed")

    async def periodic_action(self, request: Request, who: Principal) -> Response:
        if not who.is_admin:
            return self._refused(request, who, 403, "Pausing a periodic job needs an admin token.")
        pausing = request.url.path.endswith("/pause")
        await self.jobs.pause_periodic(request.path_params["name"], pausing)
        return self.back("/periodic", done="periodic-paused" if pausing else "periodic-resumed")

    async def workers(self, request: Request, who: Principal) -> Response:
        return await self._workers(request, who, "workers.html")

    async def workers_live(self, request: Request, who: Principal) -> Response:
        return await self._workers(request, who, "_workers_live.html")

    async def _workers(self, request: Request, who: Principal, template: str) -> Response:
        if not who.is_admin:
            return self._refused(request, who, 403, "The workers page needs an admin token.")
        processes, lead = await self.jobs.processes()
        schedulers = [p for p in processes if p.info.kind is ProcessKind.SCHEDULER]
        return self.render(
            request,
            who,
            template,
            page_title="Workers",
            workers=[p for p in processes if p.info.kind is ProcessKind.WORKER],
            schedulers=schedulers,
            leader=lead,
        )

    async def periodic(self, request: Request, who: Principal) -> Response:
        if not who.is_admin:
            return self._refused(request, who, 403, "The periodic jobs page needs an admin token.")
        rows = await views.periodic(self.jobs)
        return self.render(request, who, "periodic.html", page_title="Periodic", periodic=rows)

    async def tenants(self, request: Request, who: Principal) -> Response:
        rows = await views.tenants(self.jobs, who)
        return self.render(request, who, "tenants.html", page_title="Tenants", tenants=rows)

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        media = STATIC.get(name)
        if media is None:
            return Response(status_code=404)
        body = resources.files("async_jobs.api.dashboard").joinpath("static", name).read_bytes()
        headers = {"cache-control": "public, max-age=3600", "x-content-type-options": "nosniff"}
        return Response(body, media_type=media, headers=headers)

    # -- live updates: server-sent events ---------------------------------------------------

    def stream(self, fragment: Page, interval: float) -> Page:
        """A page that streams ``fragment`` (rendered for the same request and principal)
        as an ``update`` event whenever it changes; ``gone`` when it can no longer be shown
        (the job is not the principal's, or no longer exists), which ends the stream."""

        async def handler(request: Request, who: Principal) -> Response:
            if self.streams_open >= STREAM_MAX:
                return Response(status_code=503, headers={"retry-after": "5"})
            headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
            response = StreamingResponse(
                self._events(request, who, fragment, interval),
                media_type="text/event-stream",
                headers=headers,
            )
            return security.protect(request, response, self.base)

        return handler

    async def _events(
        self, request: Request, who: Principal, fragment: Page, interval: float
    ) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        self.streams_open += 1
        try:
            yield "retry: 2000\n\n"
            ends = loop.time() + STREAM_SECONDS
            last_sent, last_html = loop.time(), ""
            while loop.time() < ends and not _stopping(request):
                if await request.is_disconnected():
                    return
                try:
                    answer = await fragment(request, who)
                except JobNotFoundError:
                    yield "event: gone\ndata: \n\n"
                    return
                except AsyncJobsError:  # the store did not answer: try at the next tick
                    answer = None
                if answer is not None and answer.status_code != 200:
                    yield "event: gone\ndata: \n\n"
                    return
                html = bytes(answer.body).decode() if answer is not None else last_html
                if html != last_html:
                    last_html, last_sent = html, loop.time()
                    yield (
                        "event: update\n"
                        + "".join(f"data: {line}\n" for line in html.split("\n"))
                        + "\n"
                    )
                elif loop.time() - last_sent >= STREAM_KEEPALIVE_SECONDS:
                    last_sent = loop.time()
                    yield ": still here\n\n"
                await asyncio.sleep(min(interval, max(ends - loop.time(), 0.0)))
        finally:
            self.streams_open -= 1


def _stopping(request: Request) -> bool:
    """The server is shutting down (``async-jobs serve`` and ``api`` say so on SIGTERM):
    streams end, or the server would wait for them."""
    return bool(getattr(request.app.state, "async_jobs_stopping", False))


def _job_values(job: Job) -> dict[str, Any]:
    note = None
    if job.finished_at is not None:
        margin = (job.deadline_at - (job.started_at or job.finished_at)).total_seconds()
        note = (
            f"started {views.seconds_text(-margin)} after it"
            if margin < 0
            else f"started {views.seconds_text(margin)} before it"
        )
    elif job.deadline_missed:
        note = "missed"
    return {
        "job": job,
        "retryable": retryable(job, datetime.now(UTC)),
        "payload_text": views.pretty_json(job.payload),
        "result_text": views.pretty_json(job.result) if job.result is not None else "-",
        "deadline_note": note,
        # Trace context: shown once jobs carry one (the observability work adds it).
        "trace_id": getattr(job, "trace_id", None),
    }


async def _form(request: Request) -> dict[str, list[str]]:
    body = await request.body()
    return urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)


def _first(form: dict[str, list[str]]) -> dict[str, str]:
    return {k: v[0] for k, v in form.items() if v}


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0
