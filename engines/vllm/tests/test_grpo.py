"""Two GRPO iterations with ``engine="vllm"``: runners → recording proxy → vLLM → spans → update → weight sync."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import agent_lightning as agl
import httpx
from agent_lightning import InMemoryLightningStore, Trainer, semconv
from agent_lightning.store.sync import SyncStore
from agent_lightning_rl.config import GRPOConfig
from agent_lightning_rl.grpo import GroupRelativePolicyOptimization

PROMPTS = ["the quick brown fox", "hello world", "What is 2+3?", "the lazy dog"]


class FirstTokenAgent:
    """Completes a prompt through the proxy; reward 1 when the first sampled token id is even."""

    name = "toy"

    def __call__(self, task: dict[str, Any], ctx: agl.TrainingContext) -> float:
        llm = ctx.llm()
        body = {"model": llm.model, "prompt": task["prompt"], "max_tokens": 3, "temperature": 1.0}
        response = httpx.post(f"{llm.endpoint}/completions", json=body, timeout=300)
        response.raise_for_status()
        ids = response.json()["choices"][0].get("token_ids")  # stripped unless asked; the proxy recorded them
        text = response.json()["choices"][0]["text"]
        return 1.0 if (ids[0] % 2 == 0 if ids else len(text) % 2 == 0) else 0.0


def test_two_grpo_iterations_through_the_proxy_and_vllm(model_folder: str, tmp_path: Path) -> None:
    store = InMemoryLightningStore()
    config = GRPOConfig(
        model=model_folder,
        engine="vllm",
        engine_options={"dtype": "float32", "max_model_len": 512},
        learning_rate=1e-4,
        group_size=2,
        tasks_per_iteration=2,
        max_new_tokens=3,
    )
    trainer = Trainer(
        algorithm=GroupRelativePolicyOptimization(config=config),
        store=store,
        agent=FirstTokenAgent(),
        train_dataset=[{"prompt": p} for p in PROMPTS],
        n_runners=2,
        run_dir=tmp_path / "run",
    )
    result = trainer.train(num_iterations=2, checkpoint_dir=tmp_path / "checkpoints")
    assert result.iterations == 2 and not result.interrupted
    assert [m["train/failed_rollouts"] for m in result.metrics] == [0.0, 0.0]
    assert [m["train/samples"] for m in result.metrics] == [4.0, 4.0]
    assert all(m["time/weight_sync_s"] < 30 for m in result.metrics)
    sync = SyncStore(store)
    rollouts = sync.query_rollouts(mode="train", limit=100)
    assert len(rollouts) == 8
    versions = {}
    for rollout in rollouts:
        llm = [s for s in sync.query_spans(rollout.rollout_id) if s.kind == "llm"]
        assert len(llm) == 1 and llm[0].attributes[semconv.COMPLETION_TOKEN_IDS]
        # vLLM's answer names the weights that generated it: the snapshot this rollout ran with
        assert llm[0].attributes[semconv.RESOURCES_ID] == rollout.resources_id
        versions[rollout.resources_id] = sync.get_resources(rollout.resources_id).metadata["agl.policy_version"]
    assert sorted(versions.values()) == [0, 1]
    assert result.checkpoint == tmp_path / "checkpoints" / "checkpoint-000002"
