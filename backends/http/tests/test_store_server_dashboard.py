"""The dashboard mounted by the store server (``/dashboard``), with the server's API key, over real HTTP."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from agent_lightning.errors import StoreError
from agent_lightning.store import open_store
from agent_lightning.types import RolloutRequest
from agent_lightning_http import StoreServer

pytest.importorskip("agent_lightning_dashboard", reason="pip install agent-lightning-dashboard")
pytestmark = pytest.mark.timeout(120)
KEY = "dashboard-test-key"


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/store.db"
    store = open_store(url)

    async def fill() -> None:
        await store.enqueue_rollouts(
            [RolloutRequest(input=i, task_type="calc" if i % 3 else "search") for i in range(7)]
        )
        await store.subscribe("trainer", task_types=["calc"])
        await store.close()

    asyncio.run(fill())
    return url


@pytest.fixture
def server(db: str) -> Iterator[StoreServer]:
    with StoreServer(open_store(db), api_key=KEY, close_store=True, dashboard_path="/dashboard") as running:
        yield running


def test_dashboard_is_served_under_its_path_with_the_servers_key(server: StoreServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        moved = client.get("/dashboard")
        assert moved.status_code == 308 and moved.headers["location"] == "/dashboard/"
        login = client.get("/dashboard/")
        assert login.status_code == 401 and 'name="key"' in login.text
        assert client.get("/dashboard/api/rollouts").status_code == 401
        assert client.get("/dashboard/api/rollouts", headers={"x-api-key": "wrong"}).status_code == 401
        page = client.get("/dashboard/", headers={"authorization": f"Bearer {KEY}"})
        assert page.status_code == 200 and "<script" in page.text
        assert client.get("/dashboard/static/app.js").status_code == 200, "assets need no key"
        rollouts = client.get("/dashboard/api/rollouts", headers={"x-api-key": KEY}).json()
        assert rollouts["total"] == 7 and len(rollouts["items"]) == 7


def test_the_key_cookie_opens_the_dashboard_but_not_the_store_api(server: StoreServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        opened = client.get(f"/dashboard/?key={KEY}")
        assert opened.status_code == 303 and opened.headers["location"] == "./"
        assert "path=/dashboard/" in opened.headers["set-cookie"].lower()
        assert client.get("/dashboard/").status_code == 200
        queues = client.get("/dashboard/api/queues")
        assert queues.status_code == 200
        body = queues.json()
        assert body["subscription_groups"] == [
            {"group": "trainer", "task_types": ["calc"], "pending": 0, "delivered": 0}
        ]
        assert {row["task_type"]: row["depth"] for row in body["rows"]} == {None: 7, "calc": 4, "search": 3}
        refused = client.post("/v1/query_rollouts", json={})
        assert refused.status_code == 401, "the dashboard's cookie is no credential for the store API"
        assert client.post("/v1/query_rollouts", json={}, headers={"x-api-key": KEY}).status_code == 200


def test_the_mounted_dashboard_does_not_close_the_store(db: str) -> None:
    store = open_store(db)
    with StoreServer(store, api_key=KEY, dashboard_path="/dashboard") as running:
        assert httpx.get(running.url + "/dashboard/api/info", headers={"x-api-key": KEY}).status_code == 200
    assert len(asyncio.run(store.query_rollouts())) == 7, "the store is still open after the server stopped"
    asyncio.run(store.close())
    with StoreServer(open_store(db), close_store=True, dashboard_path="/dashboard") as running:
        closing = running.app.state.store
    with pytest.raises(StoreError):
        asyncio.run(closing.query_rollouts())


def test_no_dashboard_unless_asked_and_never_over_the_api(db: str) -> None:
    with StoreServer(open_store(db), api_key=KEY, close_store=True) as running:
        assert httpx.get(running.url + "/dashboard/", headers={"x-api-key": KEY}).status_code == 404
        assert httpx.get(running.url + "/dashboard/").status_code == 401, "the guard checks every other path"
    for path in ("/v1", "/v1/x", "/health", "/docs", "/"):
        with pytest.raises(ValueError, match="cannot be served"):
            StoreServer(open_store(db), close_store=True, dashboard_path=path)


def test_agl_store_serve_prints_and_serves_the_dashboard(db: str) -> None:
    env = {**os.environ, "AGL_STORE_API_KEY": KEY}
    process = subprocess.Popen(
        [sys.executable, "-m", "agent_lightning_http", "--store", db, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline(), process.stdout.readline()]
        found = re.search(r"dashboard at (http://\S+/dashboard/)", lines[1])
        assert found, lines
        deadline = time.monotonic() + 10
        while True:
            try:
                page = httpx.get(found.group(1), headers={"x-api-key": KEY})
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert page.status_code == 200
        info = httpx.get(found.group(1) + "api/runs", headers={"x-api-key": KEY}).json()
        assert info["runs"] == [], "the store's folder holds no metrics.jsonl"
    finally:
        process.terminate()
        process.wait(10)
