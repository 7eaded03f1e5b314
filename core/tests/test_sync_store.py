"""SyncStore: the whole LightningStore contract as typed blocking methods."""

from __future__ import annotations

import inspect

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
    assert {"enqueue_rollouts", "query_rollouts", "query_spans", "pull_completed", "close"} <= set(CONTRACT)


@pytest.mark.parametrize("name", CONTRACT)
def test_every_store_method_has_a_sync_twin_with_the_same_parameters(name: str) -> None:
    sync_method = getattr(SyncStore, name, None)
    assert sync_method is not None, f"SyncStore lacks {name}; add it, mirroring LightningStore.{name}"
    assert not inspect.iscoroutinefunction(sync_method)
    expected = list(inspect.signature(getattr(LightningStore, name)).parameters.values())
    actual = list(inspect.signature(sync_method).parameters.values())
    if name == "close":  # SyncStore.close also stops its loop; same (empty) parameters
        assert [p.name for p in actual] == [p.name for p in expected]
        return
    assert actual == expected, f"SyncStore.{name}{inspect.signature(sync_method)} differs from the store's"


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
