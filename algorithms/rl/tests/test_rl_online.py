"""Online training through the real path (runners → proxy → policy server → spans): selective optimization leaves
the excluded agent's model alone (or refuses to start), a ScriptAgent trains end to end, and training resumes
from a checkpoint."""

from __future__ import annotations

import copy
import sys
import textwrap
from pathlib import Path
from typing import Any

import agent_lightning as agl
import httpx
import pytest
import torch
from agent_lightning import InMemoryLightningStore, Trainer, semconv
from agent_lightning.agent import ScriptAgent
from agent_lightning.store.sync import SyncStore
from agent_lightning.types import LLM
from agent_lightning_proxy import LLMProxy
from agent_lightning_proxy.protocol import PARENT_SPAN_HEADER
from agent_lightning_rl.config import GRPOConfig
from agent_lightning_rl.grpo import GroupRelativePolicyOptimization
from agent_lightning_rl.models import load_policy
from agent_lightning_rl.policy import PolicyServer
from toy import PROMPTS, FirstTokenAgent, save_tiny_policy, target_ids
from transformers import PreTrainedTokenizerFast


def _complete(llm: LLM, prompt: str, parent: str) -> list[int]:
    body = {"model": llm.model, "prompt": prompt, "max_tokens": 2, "temperature": 1.0, "return_token_ids": True}
    response = httpx.post(f"{llm.endpoint}/completions", json=body, headers={PARENT_SPAN_HEADER: parent}, timeout=60)
    response.raise_for_status()
    return response.json()["choices"][0]["token_ids"]  # type: ignore[no-any-return]


class RouterAndWorker:
    """Two agents in one rollout: the router calls the trained policy, the worker calls ``worker_resource``."""

    name = "pair"

    def __init__(self, targets: frozenset[int], worker_resource: str) -> None:
        self.targets, self.worker_resource = targets, worker_resource

    def __call__(self, task: dict[str, Any], ctx: agl.TrainingContext) -> float:
        with agl.span("router", kind="agent", **{semconv.AGENT_NAME: "router"}) as router:
            ids = _complete(ctx.llm("main_llm"), task["prompt"], router.id)
        with agl.span("worker", kind="agent", **{semconv.AGENT_NAME: "worker"}) as worker:
            _complete(ctx.llm(self.worker_resource), task["prompt"] + " and", worker.id)
        return 1.0 if ids and ids[0] in self.targets else 0.0


def _pair_trainer(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path, store: InMemoryLightningStore, worker_resource: str
) -> Trainer:
    config = GRPOConfig(
        model=str(tmp_path / "model"),
        optimize=["router"],
        learning_rate=2e-2,
        group_size=2,
        tasks_per_iteration=2,
        max_new_tokens=2,
    )
    return Trainer(
        algorithm=GroupRelativePolicyOptimization(config=config),
        store=store,
        agent=RouterAndWorker(target_ids(tokenizer), worker_resource),
        train_dataset=[{"prompt": p} for p in PROMPTS],
        n_runners=2,
        run_dir=tmp_path / "run",
    )


def test_an_excluded_agent_keeps_its_own_model_across_updates(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    save_tiny_policy(tokenizer, tmp_path / "model")
    frozen_model, _ = load_policy(str(tmp_path / "model"))
    initial = copy.deepcopy(frozen_model.state_dict())
    store = InMemoryLightningStore()
    sync = SyncStore(store)
    with (
        PolicyServer(frozen_model, tokenizer, model_name="frozen", version="frozen-v0") as frozen,
        LLMProxy(store, upstream=frozen.url) as worker_proxy,
    ):
        worker_llm = LLM(endpoint=worker_proxy.url, model="frozen", api_key="x")
        sync.add_resources({"worker_llm": worker_llm})
        result = _pair_trainer(tokenizer, tmp_path, store, "worker_llm").train(num_iterations=2)
        worker_proxy.flush()
    assert result.iterations == 2
    assert [m["train/samples"] for m in result.metrics] == [4.0, 4.0]  # the router's calls only

    router_versions, worker_versions = set(), set()
    for rollout in sync.query_rollouts(mode="train", limit=100):
        assert sync.get_resources(rollout.resources_id).resources["worker_llm"] == worker_llm  # never republished
        for span in sync.query_spans(rollout.rollout_id, kinds=["llm"]):
            parent = next(s for s in sync.query_spans(rollout.rollout_id) if s.span_id == span.parent_id)
            answered_by = span.attributes[semconv.RESOURCES_ID]
            (router_versions if parent.name == "router" else worker_versions).add(answered_by)
    assert worker_versions == {"frozen-v0"}  # every worker call was answered by the frozen model
    assert len(router_versions) == 2  # the router's calls by the two published versions of the trained one
    assert all(torch.equal(initial[k], v) for k, v in frozen_model.state_dict().items())


def test_an_excluded_agent_sharing_the_trained_policy_is_refused_before_any_update(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    save_tiny_policy(tokenizer, tmp_path / "model")
    store = InMemoryLightningStore()
    trainer = _pair_trainer(tokenizer, tmp_path, store, worker_resource="main_llm")
    with pytest.raises(ValueError, match=r"leaves out agent\(s\) \['worker'\].*'main_llm'.*Nothing was trained"):
        trainer.train(num_iterations=2, checkpoint_dir=tmp_path / "checkpoints")
    latest = SyncStore(store).get_latest_resources()
    assert latest is not None and latest.metadata["agl.policy_version"] == 0  # no new weights were published
    assert not (tmp_path / "checkpoints").exists()


SCRIPT = """
import json, os
import agent_lightning as agl
import httpx

task = json.loads(os.environ["AGL_TASK_INPUT"])
with agl.TrainingContext() as ctx:
    llm = ctx.llm()
    body = {"model": llm.model, "prompt": task["prompt"], "max_tokens": 2, "return_token_ids": True}
    ids = httpx.post(f"{os.environ['OPENAI_BASE_URL']}/completions", json=body, timeout=60).json()["choices"][0]
    agl.emit_reward(1.0 if ids["token_ids"][0] % 5 == 0 else 0.0)
"""


def test_script_agent_trains_end_to_end(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    """A script path as the agent (run once per rollout as a ScriptAgent, joining the runner's attempt through its
    environment) on the Trainer's default store, which a subprocess can reach (sqlite:///RUN_DIR/store.db)."""
    script = tmp_path / "agent_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    config = GRPOConfig(
        model=save_tiny_policy(tokenizer, tmp_path / "model"), group_size=2, tasks_per_iteration=2, max_new_tokens=2
    )
    trainer = Trainer(
        algorithm=GroupRelativePolicyOptimization(config=config),
        agent=str(script),
        train_dataset=[{"prompt": p} for p in PROMPTS],
        n_runners=2,
        run_dir=tmp_path / "run",
    )
    assert isinstance(trainer.agent, ScriptAgent) and trainer.agent.command == [sys.executable, str(script)]
    result = trainer.train(num_iterations=2, checkpoint_dir=tmp_path / "checkpoints")
    assert result.iterations == 2
    assert [m["train/samples"] for m in result.metrics] == [4.0, 4.0]
    assert [m["train/failed_rollouts"] for m in result.metrics] == [0.0, 0.0]
    store = SyncStore(agl.open_store(f"sqlite:///{tmp_path / 'run' / 'store.db'}"))
    rollouts = store.query_rollouts(mode="train", limit=100)
    assert len(rollouts) == 8 and {r.status for r in rollouts} == {"succeeded"}
    spans = store.query_spans(rollouts[0].rollout_id)
    assert {"llm", "reward"} <= {s.kind for s in spans}
    assert result.checkpoint == tmp_path / "checkpoints" / "checkpoint-000002"


def test_online_training_resumes_from_its_checkpoint(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    store = InMemoryLightningStore()
    config = GRPOConfig(
        model=save_tiny_policy(tokenizer, tmp_path / "model"),
        learning_rate=2e-2,
        group_size=2,
        tasks_per_iteration=2,
        max_new_tokens=2,
        async_rollouts=False,  # each batch on the newest version; test_rl_async.py resumes an asynchronous run
    )
    checkpoints = tmp_path / "checkpoints"

    def trainer(run: str) -> Trainer:
        return Trainer(
            algorithm=GroupRelativePolicyOptimization(config=config),
            store=store,
            agent=FirstTokenAgent(target_ids(tokenizer)),
            train_dataset=[{"prompt": p} for p in PROMPTS],
            n_runners=2,
            run_dir=tmp_path / run,
        )

    first = trainer("run1").train(num_iterations=2, checkpoint_dir=checkpoints)
    assert first.checkpoint == checkpoints / "checkpoint-000002"
    resumed = trainer("run2").train(num_iterations=3, checkpoint_dir=checkpoints)
    assert [m["step"] for m in resumed.metrics] == [3.0]  # one more iteration, not three
    assert resumed.checkpoint == checkpoints / "checkpoint-000003"
    sync = SyncStore(store)
    versions = [
        sync.get_resources(r.resources_id).metadata["agl.policy_version"] for r in sync.query_rollouts(limit=100)
    ]
    assert sorted(versions) == [0] * 4 + [1] * 4 + [2] * 4  # the resumed rollouts ran on version 2, the checkpoint's
    state = torch.load(checkpoints / "checkpoint-000003" / "trainer_state.pt", weights_only=False)
    assert state["iteration"] == 3 and state["steps"] == 3  # the optimizer's state and step count carried over
