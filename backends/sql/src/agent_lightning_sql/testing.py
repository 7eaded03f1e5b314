"""Fault scenarios the SQL backends' test suites share (they need pytest only through the caller).

``python -m agent_lightning_sql.testing STORE_URL WORKER_ID`` claims one rollout,
prints it as a JSON line and then hangs, heart-beating never, until it is killed:
a runner dying in the middle of a rollout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import sqlalchemy as sa
from agent_lightning.store import open_store
from agent_lightning.store.base import LightningStore
from agent_lightning.types import Rollout, RolloutConfig, RolloutRequest, Span, new_span_id, new_trace_id

from agent_lightning_sql.store import SqlLightningStore


def _claim_and_hang(url: str, worker_id: str) -> None:
    store = open_store(url)
    item = asyncio.run(store.claim_rollout(worker_id))
    line = None if item is None else {"rollout_id": item.rollout_id, "attempt_id": item.attempt_id}
    print(json.dumps(line), flush=True)
    time.sleep(3600)


def start_victim(url: str, worker_id: str, timeout: float = 60.0) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start a worker process that claims one rollout and hangs; returns it and what it claimed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "agent_lightning_sql.testing", url, worker_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = process.stdout.readline()
    if not line:
        process.kill()
        stderr = process.stderr.read() if process.stderr else ""
        raise AssertionError(f"the worker process exited without claiming (within {timeout}s): {stderr[-2000:]}")
    assert time.monotonic() <= deadline
    claimed = json.loads(line)
    if claimed is None:
        process.kill()
        raise AssertionError("the worker process found nothing to claim")
    return process, claimed


def sigkill_scenario(url: str, *, lease: float = 1.0, max_attempts: int = 2) -> Rollout:
    """Runner processes claim a rollout of the store at ``url`` and are SIGKILLed, ``max_attempts`` times over.

    Checks that nobody else gets the rollout while a lease runs, that each expired
    lease lets the next process retry, and that the rollout finally fails with the reason.
    """

    async def main() -> Rollout:
        store = open_store(url)
        try:
            return await _sigkill_scenario(store, url, lease, max_attempts)
        finally:
            await store.close()

    return asyncio.run(main())


async def _sigkill_scenario(store: LightningStore, url: str, lease: float, max_attempts: int) -> Rollout:
    rollout = await store.enqueue_rollout(
        "doomed", config=RolloutConfig(lease_seconds=lease, max_attempts=max_attempts)
    )
    attempt_ids: list[str] = []
    for number in range(1, max_attempts + 1):
        process, claimed = await asyncio.to_thread(start_victim, url, f"victim-{number}")
        claimed_at = time.monotonic()
        assert claimed["rollout_id"] == rollout.rollout_id, claimed
        attempt_ids.append(claimed["attempt_id"])
        os.kill(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.wait)
        assert process.returncode == -signal.SIGKILL
        if time.monotonic() - claimed_at < lease / 2:  # the lease still runs: the rollout is nobody else's
            assert await store.claim_rollout("bystander") is None
        await asyncio.sleep(max(0.0, lease - (time.monotonic() - claimed_at)) + 0.1)
    (final,) = await store.wait_for_rollouts([rollout.rollout_id], timeout=30)
    attempts = await store.get_attempts(rollout.rollout_id)
    assert [a.attempt_id for a in attempts] == attempt_ids
    assert [a.status for a in attempts] == ["lost"] * max_attempts
    assert [a.worker_id for a in attempts] == [f"victim-{n}" for n in range(1, max_attempts + 1)]
    assert final.status == "failed" and final.attempt_count == max_attempts
    assert final.error and "lease" in final.error and f"{max_attempts}/{max_attempts}" in final.error, final.error
    return final


def nested(depth: int) -> Any:
    """A JSON value of ``depth`` nested lists."""
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def deep_input_over_http(store: SqlLightningStore) -> None:
    """A 600-deep input sent to a store server over ``store`` is a 422 and stored nowhere; reads and claims work."""
    import httpx
    from agent_lightning_http import StoreServer

    with StoreServer(store) as server, httpx.Client(base_url=server.url) as http:
        body = json.dumps({"requests": [{"input": "fine"}, {"input": nested(600)}]})
        response = http.post("/v1/enqueue_rollouts", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422 and "nested too deep" in response.json()["error"]["message"], response.text
        count = store._transact(
            lambda conn: conn.execute(sa.text("SELECT count(*) FROM agl_rollouts")).scalar(), write=False
        )
        assert count == 0, "a refused request stored a rollout"
        kept = http.post("/v1/enqueue_rollouts", json={"requests": [{"input": "fine"}]})
        assert kept.status_code == 200, kept.text
        listed = http.post("/v1/query_rollouts", json={})
        assert listed.status_code == 200 and [r["input"] for r in listed.json()] == ["fine"], listed.text
        claimed = http.post("/v1/claim_rollout", json={"worker_id": "w"})
        assert claimed.status_code == 200 and claimed.json()["rollout"]["input"] == "fine", claimed.text


async def old_rows_scenario(store: SqlLightningStore, json_cast: str = "{}") -> list[str]:
    """Rows an older release stored against today's limits (600-deep input, metadata and span attributes,
    written here with SQL) are read repaired, over HTTP too; returns the warnings' rollout ids.

    ``json_cast`` wraps a JSON text parameter in the dialect's cast (``CAST({} AS json)`` on PostgreSQL).
    """
    started = await store.start_rollout(RolloutRequest(input="fine", metadata={"keep": 1}), "w")
    queued = await store.enqueue_rollout("queued")
    span = Span(
        rollout_id=started.rollout_id,
        attempt_id=started.attempt_id,
        sequence_id=1,
        trace_id=new_trace_id(),
        span_id=new_span_id(),
        name="op",
        attributes={"ok": 1},
    )
    await store.add_spans([span])
    deep = json.dumps(nested(600))
    value = json_cast.format(":v")

    def corrupt(conn: Any) -> None:
        for rollout_id in (started.rollout_id, queued.rollout_id):
            conn.execute(
                sa.text(f"UPDATE agl_rollouts SET input_json = {value} WHERE rollout_id = :r"),
                {"v": deep, "r": rollout_id},
            )
        conn.execute(
            sa.text(f"UPDATE agl_rollouts SET metadata_json = {value} WHERE rollout_id = :r"),
            {"v": json.dumps({"keep": 1, "bad": nested(600)}), "r": started.rollout_id},
        )
        conn.execute(
            sa.text(f"UPDATE agl_spans SET attributes_json = {value}"), {"v": json.dumps({"ok": 1, "bad": nested(600)})}
        )

    store._transact(corrupt, write=True)
    rollout = await store.get_rollout(started.rollout_id)
    assert rollout.input is None and rollout.metadata == {"keep": 1}
    assert [r.input for r in await store.query_rollouts()] == [None, None]
    (read,) = await store.query_spans(started.rollout_id)
    assert read.attributes == {"ok": 1} and read.span_id == span.span_id
    claimed = await store.claim_rollout("w2")
    assert claimed is not None and claimed.rollout_id == queued.rollout_id and claimed.rollout.input is None
    import httpx
    from agent_lightning_http import StoreServer

    def over_http() -> None:
        with StoreServer(store) as server, httpx.Client(base_url=server.url) as http:
            listed = http.post("/v1/query_rollouts", json={})
            assert listed.status_code == 200 and len(listed.json()) == 2, listed.text
            spans = http.post("/v1/query_spans", json={"rollout_id": started.rollout_id})
            assert spans.status_code == 200 and spans.json()[0]["attributes"] == {"ok": 1}, spans.text

    await asyncio.to_thread(over_http)
    return [started.rollout_id, queued.rollout_id]


if __name__ == "__main__":
    _claim_and_hang(sys.argv[1], sys.argv[2])
