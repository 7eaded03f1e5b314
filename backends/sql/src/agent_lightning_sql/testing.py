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

from agent_lightning.store import open_store
from agent_lightning.store.base import LightningStore
from agent_lightning.types import Rollout, RolloutConfig


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


async def sigkill_scenario(store: LightningStore, url: str, *, lease: float = 1.0, max_attempts: int = 2) -> Rollout:
    """Runner processes claim a rollout and are SIGKILLed, ``max_attempts`` times over.

    Checks that nobody else gets the rollout while a lease runs, that each expired
    lease lets the next process retry, and that the rollout finally fails with the reason.
    """
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


if __name__ == "__main__":
    _claim_and_hang(sys.argv[1], sys.argv[2])
