"""The dashboard over HTTP, on every store: sign-in and its cookie, CSRF, the security
headers, roles (read-only, tenant), escaping, actions and bulk actions. The browser suite
(tests/browser) drives the same pages in Chromium."""

from __future__ import annotations

import asyncio
import html
import re
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from async_jobs import JobApp, JobState, Settings
from async_jobs.api import create_api
from async_jobs.domain.scheduling import parse_quotas
from async_jobs.stores import store_from_dsn
from tests.helpers import age_leases, wait_until

TOKENS: dict[str, Any] = {
    "tok-admin": "*",
    "tok-a": "tenant-a",
    "tok-b": "tenant-b",
    "tok-read": {"tenant": "*", "role": "read"},
}
HOSTILE = ['<script>alert("x")</script>', '"><img src=x onerror=alert(1)>']


@pytest.fixture
def jobs(any_dsn: str) -> JobApp:
    return JobApp(
        settings=Settings(api_tokens=TOKENS),
        store=store_from_dsn(any_dsn),
        handler_modules=["async_jobs.demo"],
        strict_types=False,
    )


async def client_for(jobs: JobApp) -> AsyncIterator[httpx.AsyncClient]:
    api = create_api(jobs, migrate=True)
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


@pytest.fixture
async def browser(jobs: JobApp) -> AsyncIterator[httpx.AsyncClient]:
    async for c in client_for(jobs):
        yield c


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    form = await client.get("/dashboard/signin")
    return await client.post("/dashboard/signin", data={"token": token, "csrf": csrf_of(form.text)})


async def test_without_a_session_every_page_leads_to_the_sign_in_form(
    browser: httpx.AsyncClient,
) -> None:
    for path in ("/dashboard", "/dashboard/jobs", "/dashboard/workers", "/dashboard/tenants"):
        answer = await browser.get(path)
        assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/signin"
    live = await browser.get("/dashboard/live/jobs", headers={"hx-request": "true"})
    assert live.status_code == 401 and live.headers["hx-redirect"] == "/dashboard/signin"
    form = await browser.get("/dashboard/signin")
    assert form.status_code == 200 and 'type="password"' in form.text
    assert "frame-ancestors 'none'" in form.headers["content-security-policy"]
    assert "script-src 'self'" in form.headers["content-security-policy"]
    assert "unsafe-inline" not in form.headers["content-security-policy"]
    # The API's bearer check does not apply to the dashboard's own paths, and vice versa.
    assert (await browser.get("/jobs")).status_code == 401


async def test_signing_in_keeps_the_token_in_a_strict_http_only_cookie(
    browser: httpx.AsyncClient,
) -> None:
    wrong = await sign_in(browser, "nope")
    assert wrong.status_code == 401 and "not valid" in wrong.text
    answer = await sign_in(browser, "tok-admin")
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard"
    cookie = next(
        h for h in answer.headers.get_list("set-cookie") if h.startswith("async_jobs_session=")
    )
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    assert "Secure" not in cookie  # plain HTTP here
    page = await browser.get("/dashboard")
    assert page.status_code == 200 and "admin" in page.text and "open to anyone" not in page.text
    # Behind a proxy that terminated HTTPS, the cookie is Secure.
    form = await browser.get("/dashboard/signin")
    behind = await browser.post(
        "/dashboard/signin",
        data={"token": "tok-admin", "csrf": csrf_of(form.text)},
        headers={"x-forwarded-proto": "https"},
    )
    assert "Secure" in behind.headers["set-cookie"]


async def test_a_state_changing_request_without_the_csrf_token_changes_nothing(
    browser: httpx.AsyncClient, jobs: JobApp
) -> None:
    await sign_in(browser, "tok-admin")
    job = await jobs.enqueue("echo", {}, delay=3600)
    for data in ({}, {"csrf": "forged"}):
        refused = await browser.post(f"/dashboard/jobs/{job.id}/cancel", data=data)
        assert refused.status_code == 403
    assert (await jobs.get_job(job.id)).status is JobState.PENDING
    page = await browser.get(f"/dashboard/jobs/{job.id}")
    done = await browser.post(f"/dashboard/jobs/{job.id}/cancel", data={"csrf": csrf_of(page.text)})
    assert done.status_code == 303
    assert (await jobs.get_job(job.id)).status is JobState.CANCELLED


async def test_a_read_only_token_sees_no_buttons_and_its_posts_are_403(
    browser: httpx.AsyncClient, jobs: JobApp
) -> None:
    job = await jobs.enqueue("echo", {}, delay=3600)
    await sign_in(browser, "tok-read")
    page = await browser.get(f"/dashboard/jobs/{job.id}")
    assert page.status_code == 200 and "read-only" in page.text
    assert "/cancel" not in page.text and ">Pause<" not in (await browser.get("/dashboard")).text
    listing = await browser.get("/dashboard/jobs")
    assert 'name="ids"' not in listing.text and "Cancel all" not in listing.text
    csrf = csrf_of(page.text)
    for path in (f"/dashboard/jobs/{job.id}/cancel", "/dashboard/use-cases/default/pause"):
        assert (await browser.post(path, data={"csrf": csrf})).status_code == 403
    bulk = await browser.post("/dashboard/jobs/bulk", data={"csrf": csrf, "action": "cancel-all"})
    assert bulk.status_code == 403
    assert (await jobs.get_job(job.id)).status is JobState.PENDING
    assert not any(u.paused for u in await jobs.use_cases())


async def test_the_search_finds_a_job_by_its_idempotency_key_in_the_tenant_only(
    browser: httpx.AsyncClient, jobs: JobApp
) -> None:
    mine = await jobs.enqueue("echo", {}, tenant_id="tenant-a", idempotency_key="order-42")
    theirs = await jobs.enqueue("echo", {}, tenant_id="tenant-b", idempotency_key="order-43")
    await sign_in(browser, "tok-a")
    found = (await browser.get("/dashboard/jobs?q=order-42")).text
    assert f'data-job-id="{mine.id}"' in found
    other = (await browser.get("/dashboard/jobs?q=order-43")).text
    assert f'data-job-id="{theirs.id}"' not in other and "No job matches" in other


async def test_a_tenant_sees_only_its_own_jobs_counts_and_use_cases(
    browser: httpx.AsyncClient, jobs: JobApp
) -> None:
    mine = await jobs.enqueue("echo", {}, tenant_id="tenant-a", use_case="mail", delay=3600)
    theirs = await jobs.enqueue("echo", {}, tenant_id="tenant-b", use_case="secret-uc", delay=60)
    await sign_in(browser, "tok-a")
    assert (await browser.get(f"/dashboard/jobs/{theirs.id}")).status_code == 404
    listing = (await browser.get("/dashboard/jobs")).text
    assert str(mine.id) in listing and str(theirs.id) not in listing
    # Naming the other tenant in the filter changes nothing: the token's tenant applies.
    forced = (await browser.get("/dashboard/jobs?tenant=tenant-b")).text
    assert str(theirs.id) not in forced
    searched = (await browser.get(f"/dashboard/jobs?q={theirs.id}")).text
    assert f'data-job-id="{theirs.id}"' not in searched and "No job matches" in searched
    overview = (await browser.get("/dashboard")).text
    assert "mail" in overview and "secret-uc" not in overview
    page = await browser.get(f"/dashboard/jobs/{mine.id}")
    csrf = csrf_of(page.text)
    refused = await browser.post(f"/dashboard/jobs/{theirs.id}/cancel", data={"csrf": csrf})
    assert refused.status_code == 404
    assert (await jobs.get_job(theirs.id)).status is JobState.PENDING
    assert (await browser.get("/dashboard/workers")).status_code == 403


async def test_whatever_a_job_carries_is_shown_as_text(
    browser: httpx.AsyncClient, jobs: JobApp
) -> None:
    job = await jobs.enqueue(
        HOSTILE[1], {"a": HOSTILE[0], "b": HOSTILE[1]}, idempotency_key=HOSTILE[0], delay=60
    )
    await sign_in(browser, "tok-admin")
    for path in (f"/dashboard/jobs/{job.id}", "/dashboard/jobs", f"/dashboard/live/jobs/{job.id}"):
        html = (await browser.get(path)).text
        assert "<script>alert" not in html and "<img src=x" not in html
        if "live" not in path:  # the live part shows the state, progress and outcome only
            assert "&lt;img src=x onerror=alert(1)&gt;" in html


async def test_bulk_retry_of_every_failed_job_matching_the_filter(
    browser: httpx.AsyncClient, jobs: JobApp
) -> None:
    failed = [await jobs.enqueue("fail", {}, max_attempts=1, use_case="bulk") for _ in range(3)]
    other = await jobs.enqueue("fail", {}, max_attempts=1, use_case="elsewhere")
    worker = jobs.worker()
    task = asyncio.create_task(worker.run())
    try:

        async def all_failed() -> bool:
            done = [await jobs.get_job(j.id) for j in (*failed, other)]
            return all(j.status is JobState.FAILED for j in done)

        await wait_until(all_failed, timeout=15)
    finally:
        worker.stop()
        worker.stop()
        await task
    await sign_in(browser, "tok-admin")
    page = await browser.get("/dashboard/jobs?use_case=bulk&state=failed")
    assert page.text.count('name="ids"') == 3
    assert '<span id="matching-count">3</span>' in page.text
    form = {"csrf": csrf_of(page.text), "action": "retry-all", "filter_use_case": "bulk"}
    # First the plan, to confirm: nothing changes yet.
    plan = await browser.post("/dashboard/jobs/bulk", data=form)
    assert plan.status_code == 200 and "Retry 3 jobs" in plan.text
    assert 'name="confirmed" value="yes"' in plan.text and 'id="bulk-more"' not in plan.text
    assert {(await jobs.get_job(j.id)).status for j in failed} == {JobState.FAILED}
    answer = await browser.post("/dashboard/jobs/bulk", data={**form, "confirmed": "yes"})
    assert answer.status_code == 303
    assert "done=bulk&n=3&skipped=0&more=" in answer.headers["location"]
    assert {(await jobs.get_job(j.id)).status for j in failed} == {JobState.PENDING}
    assert (await jobs.get_job(other.id)).status is JobState.FAILED


async def test_cancel_all_on_a_search_cancels_what_the_search_found_only(
    browser: httpx.AsyncClient, jobs: JobApp
) -> None:
    found = await jobs.enqueue("echo", {}, tenant_id="tenant-a", idempotency_key="k-1", delay=60)
    other = await jobs.enqueue("echo", {}, tenant_id="tenant-a", delay=60)
    await sign_in(browser, "tok-a")
    page = await browser.get("/dashboard/jobs?q=k-1")
    assert '<span id="matching-count">1</span>' in page.text
    form = {"csrf": csrf_of(page.text), "action": "cancel-all", "filter_q": "k-1"}
    plan = await browser.post("/dashboard/jobs/bulk", data=form)
    assert plan.status_code == 200 and "Cancel 1 job?" in plan.text
    answer = await browser.post("/dashboard/jobs/bulk", data={**form, "confirmed": "yes"})
    assert "done=bulk&n=1&skipped=0" in answer.headers["location"]
    assert (await jobs.get_job(found.id)).status is JobState.CANCELLED
    assert (await jobs.get_job(other.id)).status is JobState.PENDING


# Not the memory store: its tests age a job by moving the store's clock, and the page reads
# the machine's.
@pytest.mark.stores("postgres", "sqlite")
async def test_a_job_past_its_expiry_offers_no_retry_and_no_bulk_retry_counts_it(
    browser: httpx.AsyncClient, jobs: JobApp
) -> None:
    later = datetime.now(UTC) + timedelta(days=1)
    expired = await jobs.enqueue("echo", {}, tenant_id="tenant-a", delay=60, expires_at=later)
    await age_leases(jobs.store, [expired.id], seconds=2 * 86400, column="expires_at")
    assert [job.id for job in await jobs.store.expire_jobs(10)] == [expired.id]
    await sign_in(browser, "tok-a")
    page = (await browser.get(f"/dashboard/jobs/{expired.id}")).text
    assert 'id="no-retry"' in page and f"/jobs/{expired.id}/retry" not in page
    form = {"csrf": csrf_of(page), "action": "retry-all", "filter_state": "cancelled"}
    plan = await browser.post("/dashboard/jobs/bulk", data=form)
    assert "done=nothing-retry" in plan.headers["location"]


async def posted(client: httpx.AsyncClient, path: str, **fields: str) -> httpx.Response:
    """A form POST to ``path`` with the CSRF token of the Jobs page."""
    csrf = csrf_of((await client.get("/dashboard/jobs")).text)
    return await client.post(path, data={"csrf": csrf, **fields})


BAD_FILTERS = [
    ("use_case=%00", "use_case contains a NUL character"),
    ("type=a%00b", "type contains a NUL character"),
    ("tenant=%00", "tenant_id contains a NUL character"),
    ("q=k%00", "idempotency_key contains a NUL character"),
    ("created_after=0001-01-01T00:00:00%2B14:00", "created_after is out of range"),
    ("created_before=9999-12-31T23:59:59-14:00", "created_before is out of range"),
]


async def test_a_filter_no_store_can_take_is_refused_before_the_store(
    browser: httpx.AsyncClient, jobs: JobApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As an unknown state is: said on the Jobs page, and a 400 for a bulk action. A NUL
    showed PostgreSQL's own error text, a time before year 1 in UTC "date value out of
    range", and a bulk action answered 503 store_error."""
    await sign_in(browser, "tok-admin")
    csrf = csrf_of((await browser.get("/dashboard/jobs")).text)

    def reached(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a bad filter reached the store: {args}")

    for read in ("list_jobs", "count_jobs", "scan_jobs", "get_job", "get_job_by_key"):
        monkeypatch.setattr(jobs.store, read, reached)
    for query, message in BAD_FILTERS:
        page = await browser.get(f"/dashboard/jobs?{query}")
        assert page.status_code == 200 and message in page.text, (query, page.text[-2000:])
        assert "PostgreSQL" not in page.text
        field, _, value = query.partition("=")
        if field == "q":  # a bulk action's filter leaves the search out
            continue
        form = {"csrf": csrf, "action": "retry-all", f"filter_{field}": urllib.parse.unquote(value)}
        bulk = await browser.post("/dashboard/jobs/bulk", data=form)
        assert bulk.status_code == 400 and message in bulk.text, (query, bulk.text[-2000:])


async def test_cancel_all_is_bounded_says_so_and_stays_in_the_tenant(
    browser: httpx.AsyncClient, jobs: JobApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    from async_jobs.api.dashboard import views

    monkeypatch.setattr(views, "BULK_MAX", 2)
    mine = [await jobs.enqueue("echo", {}, tenant_id="tenant-a", delay=3600) for _ in range(3)]
    theirs = await jobs.enqueue("echo", {}, tenant_id="tenant-b", delay=3600)
    await sign_in(browser, "tok-a")
    assert '<span id="matching-count">2+</span>' in (await browser.get("/dashboard/jobs")).text
    plan = await posted(browser, "/dashboard/jobs/bulk", action="cancel-all")
    assert "Cancel 2 jobs" in plan.text and 'id="bulk-more"' in plan.text
    answer = await posted(browser, "/dashboard/jobs/bulk", action="cancel-all", confirmed="yes")
    assert "done=bulk&n=2&skipped=0&more=cap" in answer.headers["location"]
    states = [(await jobs.get_job(j.id)).status for j in mine]
    assert sorted(states) == sorted([JobState.CANCELLED, JobState.CANCELLED, JobState.PENDING])
    assert (await jobs.get_job(theirs.id)).status is JobState.PENDING
    notice = await browser.get(answer.headers["location"])
    assert "2 jobs changed, 0 left as they were. More matched" in notice.text


async def test_retry_all_changes_nothing_when_the_filters_state_cannot_be_retried(
    browser: httpx.AsyncClient, jobs: JobApp
) -> None:
    """Only failed or cancelled jobs can be retried: a filter on another state finds none
    (the cancelled job does not match it, and stays as it is)."""
    cancelled = await jobs.cancel((await jobs.enqueue("echo", {}, delay=3600)).id)
    await jobs.enqueue("echo", {}, delay=3600)
    await sign_in(browser, "tok-admin")
    answer = await posted(
        browser, "/dashboard/jobs/bulk", action="retry-all", filter_state="pending"
    )
    assert answer.headers["location"].endswith("/jobs?state=pending&done=nothing-retry")
    assert (await jobs.get_job(cancelled.id)).status is JobState.CANCELLED
    refused = await posted(browser, "/dashboard/jobs/bulk", action="delete-all")
    assert refused.status_code == 400


async def test_a_filter_that_matches_few_jobs_searches_a_bounded_window_at_a_time(
    browser: httpx.AsyncClient, jobs: JobApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Jobs page reads at most SCAN_BUDGET jobs: when none of them match, it says how far
    it searched and offers to search older ones; a bulk action keeps to the same window."""
    from async_jobs.api.dashboard import views

    monkeypatch.setattr(views, "SCAN_BUDGET", 4)
    rare = await jobs.enqueue("rare", {}, delay=3600)
    apart = rare.created_at + timedelta(milliseconds=2)  # the oldest (SQLite counts whole ms)
    await wait_until(lambda: datetime.now(UTC) > apart)
    for _ in range(9):
        await jobs.enqueue("common", {}, delay=3600)
    await sign_in(browser, "tok-admin")
    path, seen = "/dashboard/jobs?type=rare", []
    for _ in range(3):
        page = (await browser.get(path)).text
        seen.append(f'data-job-id="{rare.id}"' in page)
        if 'id="search-older"' not in page:
            break
        assert 'id="searched"' in page and "No job matches" in page
        plan = await posted(
            browser, "/dashboard/jobs/bulk", action="cancel-all", filter_type="rare"
        )
        assert "done=nothing-cancel" in plan.headers["location"]  # not in this window
        path = html.unescape(re.search(r'id="search-older" href="([^"]+)"', page)[1])  # type: ignore[index]
    assert seen == [False, False, True]  # 4 + 4 jobs searched, then the last 2
    cursor = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)["cursor"][0]
    fields = {"action": "cancel-all", "filter_type": "rare", "cursor": cursor}
    plan = await posted(browser, "/dashboard/jobs/bulk", **fields)
    assert "Cancel 1 jobs" in plan.text
    await posted(browser, "/dashboard/jobs/bulk", **fields, confirmed="yes")
    assert (await jobs.get_job(rare.id)).status is JobState.CANCELLED


async def test_every_page_answers_and_assets_come_from_the_package(
    jobs: JobApp,
) -> None:
    open_jobs = JobApp(settings=Settings(), store=jobs.store, handler_modules=["async_jobs.demo"])
    async for client in client_for(open_jobs):
        job = await open_jobs.enqueue("echo", {"x": 1})
        for path in (
            "/dashboard",
            "/dashboard/jobs",
            f"/dashboard/jobs/{job.id}",
            "/dashboard/workers",
            "/dashboard/periodic",
            "/dashboard/tenants",
            "/dashboard/live/overview",
            "/dashboard/live/workers",
        ):
            answer = await client.get(path)
            assert answer.status_code == 200, (path, answer.text)
            if "/live/" not in path:  # said on every page when open
                assert "open to anyone" in answer.text
            assert answer.headers["x-frame-options"] == "DENY"
        htmx = await client.get("/dashboard/static/htmx.min.js")
        assert htmx.status_code == 200 and htmx.text.startswith("var htmx=")
        assert (await client.get("/dashboard/static/../router.py")).status_code == 404


async def test_the_tenants_page_counts_each_quota_in_the_principals_scope(
    jobs: JobApp,
) -> None:
    quotas = {
        "tenant-a": {"*": {"max_pending": 10}, "mail": {"max_running": 2}},
        "tenant-b": {"*": {"max_pending": 20}},
    }
    settings = Settings(api_tokens=TOKENS, per_tenant_quotas=parse_quotas(quotas, "test"))
    app = JobApp(settings=settings, store=jobs.store, strict_types=False)
    async for client in client_for(app):
        for _ in range(2):
            await app.enqueue("echo", {}, tenant_id="tenant-a", use_case="mail", delay=3600)
        await app.enqueue("echo", {}, tenant_id="tenant-a", use_case="sms", delay=3600)
        await sign_in(client, "tok-admin")
        rows = re.findall(
            r"<tr><td><a[^>]*>([^<]+)</a></td><td>([^<]+)</td>\s*<td class=\"num\">([^<]+)<",
            (await client.get("/dashboard/tenants")).text,
        )
        assert rows == [("tenant-a", "*", "3"), ("tenant-a", "mail", "2"), ("tenant-b", "*", "0")]
        await sign_in(client, "tok-a")
        page = (await client.get("/dashboard/tenants")).text
        assert "tenant-a" in page and "tenant-b" not in page


def _cell(html: str, use_case: str, state: str) -> str:
    row = html.split(f'data-use-case="{use_case}"', 1)[1].split("</tr>", 1)[0]
    found = re.search(rf"state={state}\">([^<]*)<", row)
    assert found, row
    return found.group(1)


async def test_the_overview_counts_ended_jobs_from_the_rollup_per_tenant(
    browser: httpx.AsyncClient, jobs: JobApp
) -> None:
    for tenant, n in (("tenant-a", 2), ("tenant-b", 3)):
        for _ in range(n):
            job = await jobs.enqueue("echo", {}, tenant_id=tenant, use_case="mail", delay=3600)
            await jobs.cancel(job.id)
    await sign_in(browser, "tok-admin")
    # Not rolled up yet: the Overview does not read the jobs that ended.
    assert 'data-use-case="mail"' not in (await browser.get("/dashboard")).text
    await jobs.store.roll_up_finished(120)
    assert _cell((await browser.get("/dashboard")).text, "mail", "cancelled") == "5"
    await sign_in(browser, "tok-a")
    assert _cell((await browser.get("/dashboard")).text, "mail", "cancelled") == "2"


async def test_the_jobs_page_filters_by_priority(browser: httpx.AsyncClient, jobs: JobApp) -> None:
    high = await jobs.enqueue("echo", {}, priority="high", delay=3600)
    low = await jobs.enqueue("echo", {}, priority="low", delay=3600)
    await sign_in(browser, "tok-admin")
    page = (await browser.get("/dashboard/jobs?priority=high")).text
    assert f'data-job-id="{high.id}"' in page and f'data-job-id="{low.id}"' not in page
    bad = await browser.get("/dashboard/jobs?priority=urgent")
    assert "unknown priority" in bad.text
    api = await browser.get("/jobs?priority=low", headers={"authorization": "Bearer tok-admin"})
    assert [item["id"] for item in api.json()["items"]] == [str(low.id)]
    assert (
        await browser.get("/jobs?priority=urgent", headers={"authorization": "Bearer tok-admin"})
    ).status_code == 422


def _events(body: str) -> list[tuple[str, str]]:
    """(event name, data) of a server-sent event stream."""
    found = []
    for block in body.split("\n\n"):
        lines = block.split("\n")
        name = next((x[len("event: ") :] for x in lines if x.startswith("event: ")), "")
        data = "\n".join(x[len("data: ") :] for x in lines if x.startswith("data: "))
        if name:
            found.append((name, data))
    return found


async def test_live_parts_stream_as_server_sent_events_in_the_principals_scope(
    browser: httpx.AsyncClient, jobs: JobApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    from async_jobs.api.dashboard import router

    # A stream ends after STREAM_SECONDS: short here, so that a whole stream can be read.
    monkeypatch.setattr(router, "STREAM_SECONDS", 0.3)
    assert (await browser.get("/dashboard/events/jobs")).status_code == 303  # signed out
    mine = await jobs.enqueue("echo", {}, tenant_id="tenant-a", use_case="mail", delay=3600)
    theirs = await jobs.enqueue("echo", {}, tenant_id="tenant-b", use_case="mail", delay=3600)
    await sign_in(browser, "tok-a")
    answer = await browser.get("/dashboard/events/jobs?use_case=mail")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.text.startswith("retry: ")
    events = _events(answer.text)
    assert [name for name, _ in events] == ["update"]  # sent once: it did not change
    assert f'data-job-id="{mine.id}"' in events[0][1]
    assert str(theirs.id) not in events[0][1]
    # Another tenant's job is not streamed: the stream says it is gone, and ends.
    gone = await browser.get(f"/dashboard/events/jobs/{theirs.id}")
    assert _events(gone.text) == [("gone", "")]
    # Pages that need an admin token end at once too.
    assert _events((await browser.get("/dashboard/events/workers")).text) == [("gone", "")]
    overview = _events((await browser.get("/dashboard/events/overview")).text)
    assert overview[0][0] == "update" and 'data-use-case="mail"' in overview[0][1]
