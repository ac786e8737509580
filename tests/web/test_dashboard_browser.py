"""The dashboard in real headless Chromium (Debian's package, driven by Playwright) against a
real worker on the embedded broker and chDB."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest

from pipeline.settings import Settings
from tests.helpers import (
    ARTIFACTS,
    get,
    produce,
    start_worker,
    wait_events,
    wait_ready,
)
from tests.helpers import now as clock_now

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"
# flags that keep Chromium off this sandbox's closed network and out of first-run work
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def event(tenant: str, n: int, at: datetime, model: str = "gpt-4o",
          feature: str = "chat") -> dict:
    return {"event_id": f"{tenant}-{n}-{at.timestamp()}", "timestamp": at.isoformat(),
            "tenant_id": tenant, "model": model, "feature": feature,
            "provider": "anthropic" if model.startswith("claude") else "openai",
            "input_tokens": 20_000, "output_tokens": 2_000}


def put_budget(settings: Settings, budget_id: str, body: dict) -> dict:
    req = urllib.request.Request(f"{settings.web_url}/api/budgets/{budget_id}",
                                 data=json.dumps(body).encode(), method="PUT",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def send(settings: Settings, events: list[dict]) -> None:
    msgs = [(e["tenant_id"].encode(), json.dumps(e).encode()) for e in events]
    # Playwright's sync API keeps an event loop on this thread: produce from another one
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, produce(settings, msgs)).result(timeout=60)


@pytest.fixture()
def worker(settings: Settings) -> Iterator[Settings]:
    proc = start_worker(settings)
    try:
        wait_ready(settings, proc)
        yield settings
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture()
def page(worker: Settings) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert shutil.which(CHROMIUM), "Debian chromium missing: `make test` installs it"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.errors = errors
        try:
            yield pg
        finally:
            browser.close()


def shot(pg: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def test_dashboard_live_in_chromium(worker: Settings, page: Any) -> None:
    settings = worker
    now = clock_now()
    traffic = [event(f"acme-{i % 3}", i, now - timedelta(minutes=i % 30),
                     model=("gpt-4o", "gpt-4o-mini", "claude-3-5-haiku")[i % 3],
                     feature=("chat", "search")[i % 2]) for i in range(60)]
    send(settings, traffic)
    assert wait_events(settings, 60) == 60

    # overview: charts drawn from real data
    page.goto(settings.web_url + "/")
    page.wait_for_function("() => window.Chart && Chart.getChart('rate-chart') && "
                           "Chart.getChart('rate-chart').data.datasets[0].data"
                           ".reduce((a, b) => a + b, 0) >= 60", timeout=15_000)
    page.evaluate("window.__sameDocument = true")  # gone if the page ever reloads
    top = page.evaluate("Chart.getChart('top-chart').data.labels")
    assert sorted(top) == ["acme-0", "acme-1", "acme-2"]
    assert page.locator("#ov-stats").inner_text().count("60 events") == 2
    shot(page, "overview")

    # a budget created through the API shows up in the budgets list without a reload
    page.goto(settings.web_url + "/#/budgets")
    page.locator("text=No budgets yet").wait_for(timeout=5_000)  # the empty state
    put_budget(settings, "acme-0-day", {"tenant_id": "acme-0", "period": "day",
                                        "limit": "1000", "thresholds": [50, 80, 100]})
    row = page.locator('tr[data-budget="acme-0-day"]')
    row.wait_for(timeout=5_000)
    assert "ok" in row.inner_text()

    # a breach caused now appears in the live feed within 5 s, without a reload
    page.goto(settings.web_url + "/#/breaches")
    page.evaluate("window.__sameDocument = true")
    put_budget(settings, "acme-1-tight", {"tenant_id": "acme-1", "period": "day",
                                          "limit": "0.01", "thresholds": [100]})
    send(settings, [event("acme-1", 999, clock_now())])
    deadline = time.monotonic() + 30
    while not get(settings, "/api/breaches?tenant_id=acme-1")[1].get("breaches"):
        assert time.monotonic() < deadline, "the worker never published the breach"
        time.sleep(0.1)
    published = time.monotonic()
    page.locator('tr[data-breach]:has-text("acme-1-tight")').first.wait_for(timeout=5_000)
    shown_after = time.monotonic() - published
    assert page.evaluate("window.__sameDocument") is True
    shot(page, "breaches")

    # tenant page: spend charts, the burn-down with threshold lines, the tenant's breaches
    page.goto(settings.web_url + "/#/tenant/acme-1")
    page.wait_for_function("() => Chart.getChart('burn-acme-1-tight')", timeout=10_000)
    labels = page.evaluate("Chart.getChart('burn-acme-1-tight').data.datasets.map(d => d.label)")
    assert labels[0] == "actual" and "100%" in labels
    assert page.evaluate("Chart.getChart('t-model-c').data.labels.length") >= 1
    assert "breached" in page.locator("#t-budgets").inner_text()
    assert "acme-1-tight" in page.locator("#t-breaches").inner_text()
    shot(page, "tenant")

    # runaway watch: a template's keys near their limits and an anomaly breach on the overview
    put_budget(settings, "acme-2-users", {
        "tenant_id": "acme-2", "period": "day", "each": "user_id", "limit": "0.001",
        "anomaly": {"enabled": True, "max_rate": "0.000001"}})
    send(settings, [dict(event("acme-2", 2000 + i, clock_now()), user_id=f"u{i % 2}")
                    for i in range(4)])
    page.goto(settings.web_url + "/")
    page.locator('tr[data-key="acme-2-users/u0"]').wait_for(timeout=10_000)
    assert "breached" in page.locator('tr[data-key="acme-2-users/u1"]').inner_text()
    page.locator('tr[data-anomaly]:has-text("acme-2-users")').first.wait_for(timeout=10_000)
    page.goto(settings.web_url + "/#/tenant/acme-2")
    page.locator('#t-budgets tr[data-key="acme-2-users/u0"]').wait_for(timeout=10_000)
    shot(page, "runaway")

    # keyboard: the skip link and the nav are reachable and work without a mouse
    page.goto(settings.web_url + "/")
    page.reload()
    page.locator("#ov-stats .card").first.wait_for(timeout=5_000)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Budgets"
    page.keyboard.press("Enter")
    page.locator('tr[data-budget="acme-1-tight"]').wait_for(timeout=5_000)
    assert "breached" in page.locator('tr[data-budget="acme-1-tight"]').inner_text()
    shot(page, "budgets")
    assert page.errors == [], page.errors
    print(f"breach shown {shown_after:.2f} s after it was published")
