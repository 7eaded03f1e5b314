"""Regression tests of issue 17's defects 4, 5 and 9 (store server, client, runner, CLIs)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from agent_lightning.errors import StoreUnavailable
from agent_lightning.runner import Runner
from agent_lightning.store import InMemoryLightningStore
from agent_lightning.types import RolloutConfig, RolloutRequest
from agent_lightning_http import HttpLightningStore, StoreServer

pytestmark = pytest.mark.timeout(120)
LONG = RolloutConfig(lease_seconds=3600)
SECRET = "s3cretpw-for-the-test"


@pytest.fixture
def server(store: InMemoryLightningStore) -> Iterator[StoreServer]:
    with StoreServer(store) as running:
        yield running


# ---------------------------------------------------------------------- defect 4
def test_an_idempotency_key_is_scoped_by_endpoint(server: StoreServer, store: InMemoryLightningStore) -> None:
    """The same key on claim_rollout, then on enqueue_rollouts, enqueues (it answered null and stored nothing)."""
    headers = {"idempotency-key": "same-key"}
    with httpx.Client(base_url=server.url) as http:
        claimed = http.post("/v1/claim_rollout", json={"worker_id": "w"}, headers=headers)
        assert claimed.status_code == 200 and claimed.json() is None
        enqueued = http.post("/v1/enqueue_rollouts", json={"requests": [{"input": 1}]}, headers=headers)
    assert enqueued.status_code == 200
    assert isinstance(enqueued.json(), list) and len(enqueued.json()) == 1
    assert len(asyncio.run(store.query_rollouts())) == 1


def test_an_idempotency_key_with_another_body_is_refused(server: StoreServer, store: InMemoryLightningStore) -> None:
    headers = {"idempotency-key": "k"}
    with httpx.Client(base_url=server.url) as http:
        first = http.post("/v1/enqueue_rollouts", json={"requests": [{"input": 1}]}, headers=headers)
        again = http.post("/v1/enqueue_rollouts", json={"requests": [{"input": 1}]}, headers=headers)
        other = http.post("/v1/enqueue_rollouts", json={"requests": [{"input": 2}]}, headers=headers)
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert other.status_code == 422 and "another request body" in other.json()["error"]["message"]
    assert [r.input for r in asyncio.run(store.query_rollouts())] == [1]


def test_an_idempotency_key_is_scoped_by_client(store: InMemoryLightningStore) -> None:
    asyncio.run(store.enqueue_rollouts([RolloutRequest(input=i, config=LONG) for i in range(2)]))
    with StoreServer(store, api_key="admin-key-one") as keyed, httpx.Client(base_url=keyed.url) as http:
        body = {"worker_id": "w"}
        one = http.post("/v1/claim_rollout", json=body, headers={"idempotency-key": "k", "x-api-key": "admin-key-one"})
        assert one.status_code == 200
        token = one.headers.get("x-agl-attempt-token")
        assert token, "the claim answers with the attempt's token"
        # another credential (here a token, refused on claim) never sees the first client's answer
        two = http.post(
            "/v1/claim_rollout", json=body, headers={"idempotency-key": "k", "authorization": f"Bearer {token}"}
        )
        assert two.status_code == 403


# ---------------------------------------------------------------------- defect 5
def _first_line(command: list[str], env: dict[str, str] | None = None) -> str:
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    )
    try:
        assert process.stdout is not None
        return process.stdout.readline()
    finally:
        process.terminate()
        process.wait(10)


def test_agl_store_serve_masks_the_database_password() -> None:
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:5432/test"
    line = _first_line([sys.executable, "-m", "agent_lightning_http", "--store", url, "--port", "0"])
    assert "serving postgresql://postgres:***@127.0.0.1:5432/test" in line, line
    assert SECRET not in line


def test_agl_proxy_masks_the_database_password_in_its_json_line() -> None:
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:5432/test"
    command = [
        sys.executable,
        "-m",
        "agent_lightning.cli",
        "proxy",
        "--store",
        url,
        "--upstream",
        "http://127.0.0.1:9/v1",
    ]
    line = _first_line(command)
    assert line.startswith("{") and "postgres:***@" in line, line
    assert SECRET not in line


# ---------------------------------------------------------------------- defect 9
@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_a_server_that_never_answers_holds_a_call_no_longer_than_the_retry_window(silent_server: str) -> None:
    client = HttpLightningStore(silent_server, retry_timeout=1.5)  # default timeout 60 s per try
    began = time.monotonic()
    with pytest.raises(StoreUnavailable, match="not reachable"):
        asyncio.run(client.query_rollouts())
    assert time.monotonic() - began < 4.0


def test_a_runner_whose_store_is_unreachable_from_the_start_raises() -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    runner = Runner(lambda task: 1.0, HttpLightningStore(f"http://127.0.0.1:{port}", retry_timeout=0.5))
    with pytest.raises(StoreUnavailable):
        runner.run(max_rollouts=1, idle_timeout=1.0)


@pytest.mark.slow
def test_agl_runner_against_an_unreachable_store_exits_non_zero(tmp_path: Path) -> None:
    agent = tmp_path / "agent.py"
    agent.write_text("def agent(task):\n    return 1.0\n")
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    done = subprocess.run(
        [sys.executable, "-m", "agent_lightning.cli", "runner", str(agent), "--store", f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode != 0, done.stdout + done.stderr
    assert f"127.0.0.1:{port}" in done.stderr and "not reachable" in done.stderr
