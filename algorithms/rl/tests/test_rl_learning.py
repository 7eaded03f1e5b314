"""The learning test: the real path (agent → proxy → policy server → spans → episodes → GRPO update → new weights).

A tiny near-uniform policy must learn to start its completion with a target token (about 1 in 5 tokens at first).
Seeded; the margin is wide (≈0.2 → ≥0.7). With ``learning_rate=0`` or the advantage sign flipped it stays at or
falls below the start, so a broken gradient fails the same assertion.
"""

from __future__ import annotations

import json
from pathlib import Path

from agent_lightning import InMemoryLightningStore, PromptTemplate, Trainer, TrainingContext, semconv
from agent_lightning.store.sync import SyncStore
from agent_lightning_rl.config import GRPOConfig
from agent_lightning_rl.grpo import GroupRelativePolicyOptimization
from toy import PROMPTS, FirstTokenAgent, save_tiny_policy, target_ids
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast


def test_grpo_reward_rises_through_the_proxy_and_the_served_model(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    model_dir = save_tiny_policy(tokenizer, tmp_path / "model")
    store = InMemoryLightningStore()
    judge = PromptTemplate(template="Judge: {answer}")
    sync = SyncStore(store)
    sync.add_resources({"judge": judge})  # a resource of another agent: never changed by training
    # synchronous: every rollout's calls are served by the version it was enqueued with (test_rl_async.py covers
    # the asynchronous default, where a rollout's later calls may be served by the next version)
    config = GRPOConfig(
        model=model_dir,
        learning_rate=2e-2,
        group_size=8,
        tasks_per_iteration=4,
        max_new_tokens=2,
        seed=0,
        async_rollouts=False,
    )
    trainer = Trainer(
        algorithm=GroupRelativePolicyOptimization(config=config),
        store=store,
        agent=FirstTokenAgent(target_ids(tokenizer)),
        train_dataset=[{"prompt": p} for p in PROMPTS],
        val_dataset=[{"prompt": p} for p in PROMPTS],
        n_runners=4,
        run_dir=tmp_path / "run",
    )
    result = trainer.train(num_iterations=22, eval_interval=11, checkpoint_dir=tmp_path / "checkpoints")

    rewards = [m["train/reward_mean"] for m in result.metrics]
    before, after = sum(rewards[:3]) / 3, sum(rewards[-5:]) / 5
    print(f"reward before {before:.3f} after {after:.3f}: {[round(r, 2) for r in rewards]}")
    assert before < 0.4
    assert after > 0.7 and after - before > 0.4

    # metrics: JSONL written with the expected keys; val metrics at each eval
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 22
    for key in ("train/kl", "train/entropy", "train/clip_frac", "perf/tokens_per_s", "time/rollout_s", "time/update_s"):
        assert key in lines[-1] or key == "train/kl"  # kl only with kl_coef > 0
    assert "val/reward_mean" in lines[10] and "val/success_rate" in lines[-1]

    # weights flow: every rollout ran on a published version, and the served version is recorded on its spans
    versions = {}
    for rollout in sync.query_rollouts(mode="train", limit=1000):
        snapshot = sync.get_resources(rollout.resources_id)
        versions[rollout.resources_id] = snapshot.metadata["agl.policy_version"]
        llm_spans = sync.query_spans(rollout.rollout_id, kinds=["llm"])
        assert {s.attributes.get(semconv.RESOURCES_ID) for s in llm_spans} == {rollout.resources_id}
    assert sorted(set(versions.values())) == list(range(22))
    latest = sync.get_latest_resources()
    assert latest is not None and latest.resources["judge"] == judge

    # the checkpoint is a Hugging Face folder
    assert result.checkpoint is not None and result.checkpoint.name == "checkpoint-000022"
    AutoModelForCausalLM.from_pretrained(result.checkpoint)


def test_ctrl_c_saves_a_checkpoint_and_keeps_finished_rollouts(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    import os
    import signal
    import threading

    inner = FirstTokenAgent(target_ids(tokenizer))
    calls = 0
    lock = threading.Lock()

    def agent(task: dict[str, str], ctx: TrainingContext) -> float:
        nonlocal calls
        with lock:
            calls += 1
            interrupt = calls == 6  # during iteration 2 (4 rollouts per iteration)
        reward = inner(task, ctx)
        if interrupt:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does
        return reward

    store = InMemoryLightningStore()
    config = GRPOConfig(model=save_tiny_policy(tokenizer, tmp_path / "model"), group_size=2, tasks_per_iteration=2)
    trainer = Trainer(
        algorithm=GroupRelativePolicyOptimization(config=config),
        store=store,
        agent=agent,
        train_dataset=[{"prompt": p} for p in PROMPTS],
        n_runners=2,
        run_dir=tmp_path / "run",
    )
    # Ctrl-C raises KeyboardInterrupt here even when the tests run from a background job (SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = trainer.train(num_iterations=5, checkpoint_dir=tmp_path / "checkpoints")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.interrupted and result.iterations == 1
    assert result.checkpoint == tmp_path / "checkpoints" / "checkpoint-000001"
    AutoModelForCausalLM.from_pretrained(result.checkpoint)
    finished = SyncStore(store).query_rollouts(status=["succeeded"], limit=100)
    assert len(finished) >= 6  # iteration 1's four, and the ones running when Ctrl-C came finished and stayed


def test_ppo_with_value_head_and_gae_learns_the_same_task(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    from agent_lightning_rl.config import PPOConfig
    from agent_lightning_rl.ppo import ProximalPolicyOptimization

    config = PPOConfig(
        model=save_tiny_policy(tokenizer, tmp_path / "model"),
        learning_rate=2e-2,
        tasks_per_iteration=32,  # one rollout per task: PPO needs no groups
        max_new_tokens=2,
        kl_coef=0.0,
    )
    trainer = Trainer(
        algorithm=ProximalPolicyOptimization(config=config),
        store=InMemoryLightningStore(),
        agent=FirstTokenAgent(target_ids(tokenizer)),
        train_dataset=[{"prompt": p} for p in PROMPTS],
        n_runners=4,
        run_dir=tmp_path / "run",
    )
    result = trainer.train(num_iterations=22)
    rewards = [m["train/reward_mean"] for m in result.metrics]
    before, after = sum(rewards[:3]) / 3, sum(rewards[-5:]) / 5
    print(f"PPO reward before {before:.3f} after {after:.3f}")
    assert before < 0.4 and after > 0.7
    assert "train/value_loss" in result.metrics[-1]
