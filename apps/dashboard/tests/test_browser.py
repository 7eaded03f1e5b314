"""Each page in a real headless Chromium (Debian's ``chromium``, driven by ``playwright``), against the
demo-like run; screenshots go to ``apps/dashboard/docs/``.

Without Chromium or playwright these tests skip saying how to install them, unless ``CI`` is set: then
they fail. Install: ``apt-get install chromium`` and ``pip install playwright`` (never
``playwright install``: the system Chromium is used through its path, ``$AGL_CHROMIUM`` to override).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY, Served

pytestmark = pytest.mark.slow
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _unavailable(reason: str) -> None:
    message = f"{reason}: apt-get install chromium && pip install playwright (the browser tests need both)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _chromium() -> str | None:
    return os.environ.get("AGL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed")
    executable = _chromium()
    if executable is None:
        _unavailable("no chromium executable found")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1180, "height": 760})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    context.close()
    assert errors == [], f"JavaScript errors: {errors}"


def shot(page: Any, name: str) -> None:
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / f"{name}.png"))


def test_rollouts_list(page: Any, served: Served) -> None:
    run = served.run
    page.goto(served.url + "/#/rollouts")
    page.wait_for_selector("#rollouts tbody tr")
    assert page.locator("#rollouts tbody tr").count() == 15
    row = page.locator(f'tr[data-rollout="{run.known["solved"]}"]')
    text = row.inner_text()
    assert "succeeded" in text and "v1" in text and "runner-0" in text and "1/3" in text
    assert row.locator("td.reward").inner_text() == "1"
    shot(page, "rollouts")
    page.select_option("select[name=status]", "queuing")
    page.wait_for_function("document.querySelectorAll('#rollouts tbody tr').length === 4")
    assert "page 1 of 1 · 4 rollouts" in page.locator("#page-info").inner_text()


def test_rollout_trace(page: Any, served: Served) -> None:
    run = served.run
    page.goto(served.url + f"/#/rollout/{run.known['solved']}")
    page.wait_for_selector("#timeline tr")
    assert page.locator("#timeline tr").count() == 6
    step = page.locator(f'#timeline tr[data-span="{run.known["solved_step"]}"]')
    assert step.locator(".reward-badge").inner_text() == "reward 1"
    page.locator(f'#timeline tr[data-span="{run.known["solved_llm2"]}"]').click()
    details = page.locator("#span-details").inner_text()
    assert "latency 412.5 ms" in details and "RESULT 84" in details and "ANSWER: 84" in details
    calls = page.locator("#llm-calls .llm-call")
    assert calls.count() == 2 and "tool call calculator" in calls.nth(0).inner_text()
    shot(page, "trace")


def test_training_view_trained_and_masked_tokens(page: Any, served: Served) -> None:
    run = served.run
    page.goto(served.url + f"/#/rollout/{run.known['solved']}/training?aggregation=trajectory")
    page.wait_for_selector(".sample")
    assert page.locator("#warnings").count() == 0 and page.locator("#no-training-data").count() == 0
    trained = "".join(page.locator(".completion .tok.trained").all_inner_texts())
    masked = "".join(page.locator(".completion .tok.masked").all_inner_texts())
    assert "ANSWER: 84" in trained and "RESULT 84" in masked and "RESULT" not in trained
    colours = page.evaluate(
        "[...['trained', 'masked']].map(c => getComputedStyle(document.querySelector('.completion .tok.' + c))"
        ".backgroundColor)"
    )
    assert colours[0] != colours[1]
    assert page.locator(".sample-advantage").inner_text() == "0.5"
    title = page.locator(".completion .tok.trained").first.get_attribute("title")
    assert "return 1" in title and "advantage 0.5" in title and "logprob -0.25" in title
    shot(page, "training")


def test_training_view_shows_no_training_data(page: Any, served: Served) -> None:
    page.goto(served.url + f"/#/rollout/{served.run.known['no_ids']}/training")
    page.wait_for_selector("#no-training-data")
    assert "produced no training samples" in page.locator("#no-training-data").inner_text()
    assert "without token ids" in page.locator("#warnings").inner_text()
    shot(page, "no-training-data")


def test_runs_plots_update_live(page: Any, served: Served) -> None:
    run = served.run
    path = run.folder / "metrics.jsonl"
    original = path.read_text()
    page.goto(served.url + "/#/runs")
    page.wait_for_selector('svg[data-key="train/reward_mean"]')
    assert page.locator('svg[data-key="train/reward_mean"] circle.pt').count() == run.metrics_steps
    assert page.locator('svg[data-key="eval/accuracy"] circle.pt').count() == 3
    assert page.locator('svg[data-key="train/kl"] circle.pt').count() == run.metrics_steps
    assert page.locator('svg[data-key="perf/tokens_per_s"] circle.pt').count() == run.metrics_steps
    versions = page.locator("#resources tbody tr")
    assert versions.count() == 2 and versions.nth(0).locator(".produced").inner_text() == "4"
    shot(page, "runs")
    try:
        with path.open("a") as handle:
            handle.write(json.dumps({"step": 7, "time": 0.0, "train/reward_mean": 0.9}) + "\n")
        page.wait_for_function(
            "document.querySelectorAll('svg[data-key=\"train/reward_mean\"] circle.pt').length === 7", timeout=10000
        )
    finally:
        path.write_text(original)


def test_queues(page: Any, served: Served) -> None:
    page.goto(served.url + "/#/queues")
    page.wait_for_selector("#queues tbody tr")
    assert page.locator('#queues tr[data-task-type="calc"] .depth').inner_text() == "3"
    assert page.locator('#queues tr[data-task-type="search"] .depth').inner_text() == "1"
    assert "running 1" in page.locator("#totals").inner_text()
    trainer = page.locator('#subscriptions tr[data-group="trainer"]')
    assert trainer.locator(".pending").inner_text() == "6" and trainer.locator(".delivered").inner_text() == "4"
    assert "calc" in trainer.inner_text() and page.locator('#subscriptions tr[data-group="archive"]').count() == 1
    shot(page, "queues")


def test_api_key_form(page: Any, served_with_key: Served) -> None:
    page.goto(served_with_key.url + "/")
    page.fill("input[name=key]", API_KEY)
    page.click("button[type=submit]")
    page.wait_for_selector("#rollouts tbody tr")
    assert page.locator("#rollouts tbody tr").count() == 15


def test_the_page_mounted_by_agl_store_serve_with_a_key(page: Any, served: Served) -> None:
    pytest.importorskip("agent_lightning_http", reason="pip install agent-lightning-http")
    from agent_lightning.store import open_store
    from agent_lightning_http import StoreServer

    store = open_store(served.run.url)
    with StoreServer(store, api_key=API_KEY, close_store=True, dashboard_path="/dashboard") as server:
        page.goto(server.url + "/dashboard")
        assert page.url == server.url + "/dashboard/"
        page.fill("input[name=key]", API_KEY)
        page.click("button[type=submit]")
        page.wait_for_selector("#rollouts tbody tr")
        assert page.locator("#rollouts tbody tr").count() == 15
        assert page.locator(f'tr[data-rollout="{served.run.known["solved"]}"] td.reward').inner_text() == "1"
        shot(page, "store-serve")
        page.goto(server.url + "/dashboard/#/queues")
        page.wait_for_selector('#subscriptions tr[data-group="trainer"]')
        assert page.locator('#queues tr[data-task-type="calc"] .depth').inner_text() == "3"
        shown = page.evaluate("fetch('/v1/get_latest_resources', {method: 'POST'}).then((r) => r.status)")
        assert shown == 401, "the dashboard's cookie opens no store API call"
