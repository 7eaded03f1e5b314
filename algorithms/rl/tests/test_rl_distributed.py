"""``num_gpus`` mapped onto processes: validation against the machine and the launcher, equal shards without
dropping samples, and ranks the trainer starts itself (2 CPU processes with gloo, ``cpu_fallback=True``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from agent_lightning import InMemoryLightningStore, Trainer
from agent_lightning.store.sync import SyncStore
from agent_lightning_rl.config import GRPOConfig
from agent_lightning_rl.distributed import DeviceError, DistInfo, WorldPlan, plan_world, shard_indices
from agent_lightning_rl.grpo import GroupRelativePolicyOptimization
from torch.optim.optimizer import register_optimizer_step_pre_hook
from toy import PROMPTS, FirstTokenAgent, save_tiny_policy, target_ids
from traces import add_rollout
from transformers import PreTrainedTokenizerFast

TORCHRUN_2 = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}


def test_plan_world_maps_num_gpus_onto_processes() -> None:
    assert plan_world(0, environ={}, cuda_devices=0) == WorldPlan()
    assert plan_world(1, environ={}, cuda_devices=1) == WorldPlan(1, "nccl", "cuda", launch=False)
    assert plan_world(8, environ={}, cuda_devices=8) == WorldPlan(8, "nccl", "cuda", launch=True)
    assert plan_world(2, environ={}, cuda_devices=0, cpu_fallback=True) == WorldPlan(2, "gloo", "cpu", launch=True)
    # under torchrun: join its world, never launch
    assert plan_world(0, environ=TORCHRUN_2, cuda_devices=0) == WorldPlan(2, "gloo", "cpu")
    assert plan_world(2, environ=TORCHRUN_2, cuda_devices=2) == WorldPlan(2, "nccl", "cuda")
    two_nodes = {**TORCHRUN_2, "WORLD_SIZE": "4"}
    assert plan_world(4, environ=two_nodes, cuda_devices=2) == WorldPlan(4, "nccl", "cuda")  # total, not per node


def test_plan_world_refuses_what_the_machine_or_launcher_cannot_give() -> None:
    with pytest.raises(DeviceError, match=r"num_gpus=8, but this machine has no CUDA device.*num_gpus=0"):
        plan_world(8, environ={}, cuda_devices=0)
    with pytest.raises(DeviceError, match=r"has 2 CUDA devices \(cuda:0.*cuda:1.*\)\. Pass num_gpus=2"):
        plan_world(8, environ={}, cuda_devices=2)
    with pytest.raises(DeviceError, match=r"num_gpus=4, but the launcher started 2 process\(es\).*nproc_per_node 4"):
        plan_world(4, environ=TORCHRUN_2, cuda_devices=4)
    with pytest.raises(DeviceError, match=r"need a CUDA device each, but it has 1 CUDA device"):
        plan_world(2, environ=TORCHRUN_2, cuda_devices=1)
    assert plan_world(2, environ=TORCHRUN_2, cuda_devices=0, cpu_fallback=True) == WorldPlan(2, "gloo", "cpu")


def test_trainer_fails_on_more_gpus_than_the_machine_has_before_loading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    too_many = torch.cuda.device_count() + 1
    config = GRPOConfig(model=str(tmp_path / "no-such-model"))  # would fail to load: the check comes first
    trainer = Trainer(
        algorithm=GroupRelativePolicyOptimization(config=config),
        store=InMemoryLightningStore(),
        num_gpus=too_many,
        run_dir=tmp_path,
    )
    with pytest.raises(DeviceError, match=f"num_gpus={too_many}, but this machine has"):
        trainer.train(num_iterations=1)
    for key, value in TORCHRUN_2.items():  # as if torchrun had started 2 processes
        monkeypatch.setenv(key, value)
    trainer.num_gpus = 3
    with pytest.raises(DeviceError, match="num_gpus=3, but the launcher started 2"):
        trainer.train(num_iterations=1)


def test_shards_are_equal_padded_and_drop_nothing() -> None:
    for n in (1, 3, 7, 8, 9):
        for world in (1, 2, 3, 4):
            shards = [shard_indices(n, DistInfo(rank=r, world_size=world)) for r in range(world)]
            assert len({len(indices) for indices, _ in shards}) == 1  # same passes and collectives on every rank
            real = [i for indices, padding in shards for i in indices[: len(indices) - padding]]
            assert sorted(real) == list(range(n))  # every sample once, none dropped
            assert sum(padding for _, padding in shards) == len(shards[0][0]) * world - n
    assert shard_indices(5, DistInfo(rank=1, world_size=2)) == ([3, 4, 4], 1)
    with pytest.raises(ValueError, match="no samples"):
        shard_indices(0, DistInfo(rank=0, world_size=2))


def _captured_gradients() -> tuple[list[list[torch.Tensor]], object]:
    """Every optimizer step's gradients in this process (a global optimizer step pre-hook)."""
    steps: list[list[torch.Tensor]] = []

    def capture(optimizer: torch.optim.Optimizer, *_: object) -> None:
        steps.append([p.grad.clone() for g in optimizer.param_groups for p in g["params"] if p.grad is not None])

    return steps, register_optimizer_step_pre_hook(capture)


def test_self_launched_ranks_average_to_the_single_process_gradient(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    """num_gpus=2 with cpu_fallback: this process is rank 0 and starts rank 1. Nine samples over two ranks (one
    padding copy; one sample per micro-batch, so rank 1's last pass is padding alone): rank 0's optimizer must
    step with exactly the gradient one process computes on all nine, which it cannot without rank 1's half."""
    model_dir = save_tiny_policy(tokenizer, tmp_path / "model")
    sync = SyncStore(InMemoryLightningStore())
    gen = torch.Generator().manual_seed(0)
    for task in range(3):
        prompt = torch.randint(3, len(tokenizer), (5,), generator=gen).tolist()
        for _ in range(3):
            completion = torch.randint(3, len(tokenizer), (3,), generator=gen).tolist()
            add_rollout(sync, {"task": task}, [(prompt, completion)], float(completion[0] % 2))
    config = GRPOConfig(
        model=model_dir, learning_rate=1e-2, batch_size=9, micro_batch_size=1, max_grad_norm=None, cpu_fallback=True
    )
    steps, hook = _captured_gradients()
    try:
        two = Trainer(
            algorithm=GroupRelativePolicyOptimization(config=config),
            store=sync.store,
            num_gpus=2,
            run_dir=tmp_path / "two",
        ).train(num_iterations=1, checkpoint_dir=tmp_path / "checkpoints")
        one = Trainer(
            algorithm=GroupRelativePolicyOptimization(config=config), store=sync.store, run_dir=tmp_path / "one"
        ).train(num_iterations=1)
    finally:
        hook.remove()  # type: ignore[attr-defined]
    assert two.iterations == one.iterations == 1
    metrics = two.metrics[0]
    assert metrics["dist/world_size"] == 2 and metrics["dist/padding_samples"] == 1 and metrics["train/samples"] == 9
    assert metrics["perf/update_tokens"] == one.metrics[0]["perf/update_tokens"] + 8  # rank 1's padding copy
    assert metrics["train/policy_loss"] == pytest.approx(one.metrics[0]["train/policy_loss"], abs=1e-6)
    assert len(steps) == 2
    for distributed, single in zip(steps[0], steps[1], strict=True):
        assert torch.allclose(distributed, single, atol=1e-7, rtol=1e-5)
    assert two.checkpoint == tmp_path / "checkpoints" / "checkpoint-000001"
    spec = json.loads((tmp_path / "two" / "world.json").read_text())
    assert spec["world"] == {"world_size": 2, "backend": "gloo", "device_type": "cpu"}


@pytest.mark.parametrize("async_rollouts", [False, True], ids=["sync", "async"])
def test_self_launched_ranks_train_online_with_rollouts_on_rank_0_only(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path, async_rollouts: bool
) -> None:
    store = InMemoryLightningStore()
    config = GRPOConfig(
        model=save_tiny_policy(tokenizer, tmp_path / "model"),
        learning_rate=1e-2,
        group_size=2,
        tasks_per_iteration=3,
        max_new_tokens=2,
        cpu_fallback=True,
        async_rollouts=async_rollouts,
    )
    result = Trainer(
        algorithm=GroupRelativePolicyOptimization(config=config),
        store=store,
        agent=FirstTokenAgent(target_ids(tokenizer)),
        train_dataset=[{"prompt": p} for p in PROMPTS],
        n_runners=2,
        num_gpus=2,
        run_dir=tmp_path / "run",
    ).train(num_iterations=2, checkpoint_dir=tmp_path / "checkpoints")
    assert result.iterations == 2 and not result.interrupted
    assert [m["dist/world_size"] for m in result.metrics] == [2.0, 2.0]
    assert [m["train/samples"] for m in result.metrics] == [6.0, 6.0]
    rollouts = SyncStore(store).query_rollouts(limit=100)
    assert len(rollouts) == 12 and {r.status for r in rollouts} == {"succeeded"}  # one runner pool, no duplicates
    versions = {SyncStore(store).get_resources(r.resources_id).metadata["agl.policy_version"] for r in rollouts}
    # asynchronous: batch 1 may be admitted on version 0 (max_staleness=1); its importance metrics cover every rank
    assert versions == {0, 1} if not async_rollouts else versions <= {0, 1}
    assert all(m["train/staleness_max"] <= 1 and "train/is_ratio_mean" in m for m in result.metrics)
    assert result.checkpoint == tmp_path / "checkpoints" / "checkpoint-000002"


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
def test_rank_0_failing_stops_the_ranks_it_started(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path, online: bool
) -> None:
    """Rank 0 finds no training data (offline: optimize matches nothing; online: every rollout fails): it tells
    rank 1, which is waiting for a batch, to stop, and raises its own error instead of hanging."""
    from agent_lightning.errors import NoTrainingData
    from agent_lightning.types import RolloutConfig

    sync = SyncStore(InMemoryLightningStore())
    add_rollout(sync, {"task": 0}, [([5, 6, 7], [10, 11])], 1.0)
    config = GRPOConfig(
        model=save_tiny_policy(tokenizer, tmp_path / "model"),
        cpu_fallback=True,
        optimize=None if online else ["nobody"],
        group_size=2,
        tasks_per_iteration=1,
    )

    def broken_agent(task: object) -> float:
        raise RuntimeError("the agent is broken")

    trainer = Trainer(
        algorithm=GroupRelativePolicyOptimization(config=config),
        store=sync.store,
        agent=broken_agent if online else None,
        train_dataset=[{"prompt": "hi"}] if online else None,
        rollout_config=RolloutConfig(max_attempts=1),
        num_gpus=2,
        run_dir=tmp_path / "run",
    )
    with pytest.raises(NoTrainingData):
        trainer.train(num_iterations=2)
