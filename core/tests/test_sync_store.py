"""SyncStore: the whole LightningStore contract as typed blocking methods."""

from __future__ import annotations

import inspect
import subprocess
import sys

import agent_lightning as agl
import pytest
from agent_lightning.errors import NotFound
from agent_lightning.store.base import LightningStore
from agent_lightning.store.sync import SyncStore

CONTRACT = sorted(
    name
    for name, member in inspect.getmembers(LightningStore)
    if not name.startswith("_") and inspect.iscoroutinefunction(member)
)


def test_the_contract_has_the_methods_this_test_expects() -> None:
    expected = {"enqueue_rollouts", "query_rollouts", "query_spans", "pull_completed", "close"}
    assert expected | {"claim_rollouts", "complete_attempts"} <= set(CONTRACT)


@pytest.mark.parametrize("name", CONTRACT)
def test_every_store_method_is_a_blocking_call_with_the_contracts_parameters(name: str) -> None:
    sync_method = getattr(SyncStore, name)
    assert not inspect.iscoroutinefunction(sync_method)
    assert [p.name for p in inspect.signature(sync_method).parameters.values()] == [
        p.name for p in inspect.signature(getattr(LightningStore, name)).parameters.values()
    ]


_CONTRACT_WITH_ONE_MORE_METHOD = '''
import importlib, inspect
from agent_lightning.store import base, sync
from agent_lightning.store.memory import InMemoryLightningStore

async def rollouts_of_type(self, *, task_type: str) -> int:
    """How many rollouts of a task type there are."""
    return len(await self.query_rollouts(task_types=[task_type]))

base.LightningStore.rollouts_of_type = rollouts_of_type
sync = importlib.reload(sync)  # SyncStore's definition, evaluated against the longer contract
with sync.SyncStore(InMemoryLightningStore()) as store:
    store.enqueue_rollout(1, task_type="math")
    store.enqueue_rollout(2, task_type="math")
    method = sync.SyncStore.rollouts_of_type
    print(store.rollouts_of_type(task_type="math"), inspect.signature(method), method.__doc__)
'''


def test_a_method_added_to_the_contract_appears_on_sync_store_without_code() -> None:
    result = subprocess.run([sys.executable, "-c", _CONTRACT_WITH_ONE_MORE_METHOD], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2 (self, *, task_type: str) -> int How many rollouts of a task type there are."


def test_a_backends_override_is_what_the_blocking_call_runs() -> None:
    class Counting(agl.InMemoryLightningStore):
        calls = 0

        async def get_latest_resources(self) -> agl.ResourcesSnapshot | None:
            Counting.calls += 1
            return await super().get_latest_resources()

    with SyncStore(Counting()) as sync:
        assert sync.get_latest_resources() is None
    assert Counting.calls == 1


def test_sync_calls_run_the_store_contract() -> None:
    with SyncStore(agl.InMemoryLightningStore()) as sync:
        first = sync.enqueue_rollout({"q": 1}, task_type="math")
        (second,) = sync.enqueue_rollouts([agl.RolloutRequest(input={"q": 2}, task_type="math")])
        claimed = sync.claim_rollout("w1", task_types=["math"])
        assert claimed is not None and claimed.rollout_id == first.rollout_id
        sync.heartbeat(claimed.rollout_id, claimed.attempt_id)
        done = sync.complete_attempt(claimed.rollout_id, claimed.attempt_id, "succeeded")
        assert done.status == "succeeded"
        assert [r.rollout_id for r in sync.query_rollouts(task_types=["math"], limit=1, offset=1)] == [
            second.rollout_id
        ]
        assert sync.wait_for_rollouts([first.rollout_id], timeout=1)[0].status == "succeeded"
        assert sync.get_latest_resources() is None
        with pytest.raises(NotFound, match="ro-missing"):
            sync.get_rollout("ro-missing")
