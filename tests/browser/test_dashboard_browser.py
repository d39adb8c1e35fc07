"""The dashboard in Chromium against a real server: sign-in, live updates, actions, roles,
and hostile job data that must stay inert. Every page is saved as a screenshot under
tests/browser/artifacts/."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from playwright.sync_api import Page, expect

from tests.browser.conftest import Server, shot


def sign_in(page: Page, server: Server, token: str) -> None:
    page.goto(f"{server.url}/dashboard")
    expect(page).to_have_url(f"{server.url}/dashboard/signin")
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page.locator("header.top .who")).to_be_visible()


def wait_for_state(server: Server, job_id: object, state: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while server.job(job_id)["status"] != state:
        assert time.monotonic() < deadline, server.job(job_id)
        time.sleep(0.05)  # wait-ok: polling the API with a deadline


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_signing_in_with_a_token(page: Page, server: Server) -> None:
    page.goto(f"{server.url}/dashboard")
    shot(page, "signin")
    page.fill("#token", "not-a-token")
    page.click("button[type=submit]")
    expect(page.locator("#signin-error")).to_have_text("That token is not valid.")
    page.fill("#token", "admin-token")
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{server.url}/dashboard")
    expect(page.locator("header.top .who")).to_contain_text("admin")
    expect(page.locator("#open-banner")).to_have_count(0)
    cookie = next(c for c in page.context.cookies() if c["name"] == "async_jobs_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"


def test_a_job_enqueued_over_http_appears_on_the_jobs_page_without_a_reload(
    page: Page, server: Server
) -> None:
    use_case = unique("live")
    sign_in(page, server, "admin-token")
    page.goto(f"{server.url}/dashboard/jobs?use_case={use_case}")
    expect(page.locator("#job-rows")).to_contain_text("No job matches")
    page.evaluate("window.__same_page = true")
    job = server.enqueue(type="echo", use_case=use_case, payload={"n": 1}, delay_seconds=3600)
    expect(page.locator(f'tr[data-job-id="{job["id"]}"]')).to_be_visible(timeout=10_000)
    assert page.evaluate("window.__same_page") is True  # no reload happened


def test_the_jobs_table_follows_server_sent_events(page: Page, server: Server) -> None:
    """The live table is an EventSource stream (no polling request): a job that changes
    state, and one that arrives, show up without a reload."""
    use_case = unique("sse")
    waiting = server.enqueue(type="echo", use_case=use_case, delay_seconds=3600)
    streams: list[str] = []
    page.on(
        "request", lambda r: streams.append(r.url) if r.resource_type == "eventsource" else None
    )
    sign_in(page, server, "admin-token")
    page.goto(f"{server.url}/dashboard/jobs?use_case={use_case}")
    row = page.locator(f'tr[data-job-id="{waiting["id"]}"]')
    expect(row).to_contain_text("pending")
    answer = server.http.post(f"/jobs/{waiting['id']}/cancel", headers=server.api())
    assert answer.status_code == 200, answer.text
    expect(row).to_contain_text("cancelled", timeout=10_000)
    new = server.enqueue(type="echo", use_case=use_case, delay_seconds=3600)
    expect(page.locator(f'tr[data-job-id="{new["id"]}"]')).to_be_visible(timeout=10_000)
    assert any("/dashboard/events/jobs?use_case=" in url for url in streams), streams
    assert page.locator("#job-rows").get_attribute("data-updated")


def test_filtering_the_jobs_by_priority(page: Page, server: Server) -> None:
    use_case = unique("prio")
    high = server.enqueue(type="echo", use_case=use_case, priority="high", delay_seconds=600)
    low = server.enqueue(type="echo", use_case=use_case, priority="low", delay_seconds=600)
    sign_in(page, server, "admin-token")
    page.goto(f"{server.url}/dashboard/jobs?use_case={use_case}")
    expect(page.locator(f'tr[data-job-id="{low["id"]}"]')).to_be_visible()
    page.select_option("select[name=priority]", "high")
    page.click("#filters button[type=submit]")
    expect(page).to_have_url(re.compile(r"priority=high"))
    expect(page.locator(f'tr[data-job-id="{high["id"]}"]')).to_be_visible()
    expect(page.locator(f'tr[data-job-id="{low["id"]}"]')).to_have_count(0)
    expect(page.locator("select[name=priority]")).to_have_value("high")


def test_cancelling_every_job_that_matches_the_filter_after_confirming(
    page: Page, server: Server
) -> None:
    use_case = unique("bulk")
    waiting = [server.enqueue(type="echo", use_case=use_case, delay_seconds=3600) for _ in "ab"]
    other = server.enqueue(type="echo", use_case=unique("other"), delay_seconds=3600)
    sign_in(page, server, "admin-token")
    page.goto(f"{server.url}/dashboard/jobs?use_case={use_case}")
    expect(page.locator("#matching-count")).to_have_text("2")
    page.click("button:has-text('Cancel all')")
    expect(page.locator("main h1")).to_have_text("Cancel 2 jobs?")
    shot(page, "bulk-confirm")
    assert {server.job(j["id"])["status"] for j in waiting} == {"pending"}  # not yet
    page.click("#bulk-confirm button[type=submit]")
    expect(page.locator("#notice")).to_contain_text("2 jobs changed, 0 left as they were.")
    expect(page).to_have_url(re.compile(rf"use_case={use_case}"))
    assert {server.job(j["id"])["status"] for j in waiting} == {"cancelled"}
    assert server.job(other["id"])["status"] == "pending"


def test_a_running_job_shows_its_progress_bar_moving(page: Page, server: Server) -> None:
    sign_in(page, server, "admin-token")
    job = server.enqueue(type="steps", payload={"steps": 10, "pause": 0.6})
    page.goto(f"{server.url}/dashboard/jobs/{job['id']}")
    bar = page.locator("#job-progress")
    expect(bar).to_be_visible(timeout=10_000)
    first = float(bar.get_attribute("value") or 0)
    deadline = time.monotonic() + 15
    while float(page.locator("#job-progress").get_attribute("value") or 0) <= first:
        assert time.monotonic() < deadline, "the progress bar did not move"
        page.wait_for_timeout(100)  # wait-ok: polling the page with a deadline
    shot(page, "job-running")
    expect(page.locator("#job-state")).to_contain_text("succeeded", timeout=20_000)
    expect(page.locator("#job-progress-text")).to_have_text("100%")


def test_retrying_a_failed_job_makes_it_succeed(page: Page, server: Server) -> None:
    job = server.enqueue(type="fail", payload={"times": 1}, max_attempts=1)
    wait_for_state(server, job["id"], "failed")
    sign_in(page, server, "admin-token")
    page.goto(f"{server.url}/dashboard/jobs/{job['id']}")
    expect(page.locator("#job-state")).to_contain_text("failed")
    expect(page.locator("#job-error")).to_contain_text("failing on attempt 1")
    shot(page, "job-failed")
    page.click("button:has-text('Retry')")
    expect(page.locator("#notice")).to_contain_text("pending again")
    expect(page.locator("#job-state")).to_contain_text("succeeded", timeout=15_000)
    expect(page.locator("#attempts")).to_contain_text("#1 failed")


def test_cancelling_a_running_job(page: Page, server: Server) -> None:
    job = server.enqueue(type="hold")
    wait_for_state(server, job["id"], "running")
    sign_in(page, server, "admin-token")
    page.goto(f"{server.url}/dashboard/jobs/{job['id']}")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Cancel')")
    expect(page.locator("#job-state")).to_contain_text("cancelled", timeout=15_000)
    assert server.job(job["id"])["status"] == "cancelled"


def test_pausing_a_use_case_stops_its_jobs_from_starting(page: Page, server: Server) -> None:
    use_case = unique("pausable")
    first = server.enqueue(type="echo", use_case=use_case)
    wait_for_state(server, first["id"], "succeeded")
    sign_in(page, server, "admin-token")
    row = page.locator(f'tr[data-use-case="{use_case}"]')
    # Listed once the leader's rollup (every 10 s) has its ended job, streamed within 3 s.
    expect(row).to_be_visible(timeout=30_000)
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button:has-text('Pause')").click()
    expect(page.locator("#notice")).to_contain_text("paused")
    expect(row).to_contain_text("paused")
    held = server.enqueue(type="echo", use_case=use_case)
    time.sleep(1.5)  # wait-ok: long enough for several polls (0.1 s) to have started it
    assert server.job(held["id"])["status"] == "pending"
    expect(row.locator("td").nth(1)).to_have_text("1", timeout=10_000)  # pending, live
    shot(page, "overview-paused")
    row.locator("button:has-text('Resume')").click()
    wait_for_state(server, held["id"], "succeeded")


def test_a_tenant_token_cannot_see_another_tenants_job(page: Page, server: Server) -> None:
    theirs = server.enqueue(
        "tenant-b-token", type="echo", payload={"secret": "b"}, delay_seconds=600
    )
    mine = server.enqueue("tenant-a-token", type="echo", delay_seconds=600)
    sign_in(page, server, "tenant-a-token")
    page.goto(f"{server.url}/dashboard/jobs/{theirs['id']}")
    expect(page.locator("#message")).to_contain_text("No such job")
    page.goto(f"{server.url}/dashboard/jobs")
    expect(page.locator(f'tr[data-job-id="{mine["id"]}"]')).to_be_visible()
    expect(page.locator(f'tr[data-job-id="{theirs["id"]}"]')).to_have_count(0)
    expect(page.locator("#jobs")).not_to_contain_text("tenant-b")


def test_a_read_only_token_cannot_act(page: Page, server: Server) -> None:
    job = server.enqueue(type="echo", delay_seconds=600)
    sign_in(page, server, "read-token")
    page.goto(f"{server.url}/dashboard/jobs/{job['id']}")
    expect(page.locator("header.top .who")).to_contain_text("read-only")
    expect(page.locator("button:has-text('Cancel')")).to_have_count(0)
    page.goto(f"{server.url}/dashboard")
    expect(page.locator("button:has-text('Pause')")).to_have_count(0)
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    answer = page.request.post(
        f"{server.url}/dashboard/jobs/{job['id']}/cancel", form={"csrf": str(csrf)}
    )
    assert answer.status == 403
    assert server.job(job["id"])["status"] == "pending"


def test_hostile_payloads_stay_inert(page: Page, server: Server) -> None:
    dialogs: list[Any] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    script = "<script>window.__pwned = 1; alert('script')</script>"
    image = '"><img src=x onerror="window.__pwned = 2; alert(\'img\')">'
    echoed = server.enqueue(type="echo", payload={"a": script, "b": image}, idempotency_key=image)
    failed = server.enqueue(type="fail", payload={"message": image + script}, max_attempts=1)
    wait_for_state(server, echoed["id"], "succeeded")
    wait_for_state(server, failed["id"], "failed")
    sign_in(page, server, "admin-token")
    for job in (echoed, failed):
        page.goto(f"{server.url}/dashboard/jobs/{job['id']}")
        expect(page.locator("#payload")).to_contain_text("onerror")
        page.wait_for_timeout(1500)  # wait-ok: a live refresh or two, which must stay inert too
        assert page.evaluate("window.__pwned") is None
        assert page.locator("main img").count() == 0 and page.locator("main script").count() == 0
    expect(page.locator("#job-error")).to_contain_text("<img src=x onerror=")
    page.goto(f"{server.url}/dashboard/jobs")
    page.wait_for_timeout(1000)  # wait-ok: as above, on the live jobs table
    assert page.evaluate("window.__pwned") is None
    assert dialogs == []
    shot(page, "hostile")


def test_a_screenshot_of_every_page(page: Page, server: Server) -> None:
    for n in range(3):
        server.enqueue(type="steps", payload={"steps": 4, "pause": 0.2}, priority="high")
        server.enqueue(type="echo", payload={"order": n}, use_case="notifications")
    server.enqueue(type="fail", payload={"times": 5}, max_attempts=2, use_case="billing")
    server.enqueue("tenant-a-token", type="echo", delay_seconds=900, use_case="notifications")
    running = server.enqueue(type="steps", payload={"steps": 100, "pause": 0.3})
    wait_for_state(server, running["id"], "running")
    sign_in(page, server, "admin-token")
    for path, name in (
        ("", "overview"),
        ("/jobs", "jobs"),
        (f"/jobs/{running['id']}", "job"),
        ("/workers", "workers"),
        ("/periodic", "periodic"),
        ("/tenants", "tenants"),
    ):
        page.goto(f"{server.url}/dashboard{path}")
        expect(page.locator("main h1")).to_be_visible()
        shot(page, name)
    expect(page.locator("main")).to_contain_text("Tenants")
    page.goto(f"{server.url}/dashboard/workers")
    expect(page.locator("#workers tbody tr")).to_have_count(1)
    expect(page.locator("#schedulers")).to_contain_text("leader")
