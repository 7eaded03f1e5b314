"""Asynchronous collection through the real path (runners → proxy → policy server → spans): the staleness bound
under a scripted slow learner, the truncated importance ratio against a hand-computed case, a rollout straddling a
weight update, and resuming after Ctrl-C during an overlapped step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from agent_lightning import InMemoryLightningStore, Trainer, TrainingContext, semconv
from agent_lightning.store.sync import SyncStore
from agent_lightning.types import Sample
from agent_lightning_rl.config import GRPOConfig
from agent_lightning_rl.grpo import GroupRelativePolicyOptimization
from agent_lightning_rl.importance import truncated_importance_weights
from agent_lightning_rl.learner import PolicyLearner, Scored
from agent_lightning_rl.staleness import STALENESS_KEY, AdmissionGate
from toy import PROMPTS, FirstTokenAgent, save_tiny_policy, target_ids
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast


class SlowLearner(GroupRelativePolicyOptimization):
    """GRPO whose every update first sleeps ``delay`` seconds; Ctrl-C (KeyboardInterrupt) in update ``interrupt_at``."""

    def __init__(self, config: GRPOConfig, delay: float, interrupt_at: int | None = None) -> None:
        super().__init__(config=config)
        self.delay, self.interrupt_at = delay, interrupt_at

    def prepare(
        self, learner: PolicyLearner, samples: Sequence[Sample], sequence_advantages: list[float] | None
    ) -> tuple[list[torch.Tensor], Scored | None, list[torch.Tensor] | None]:
        time.sleep(self.delay)
        if self.iteration == self.interrupt_at:
            raise KeyboardInterrupt
        return super().prepare(learner, samples, sequence_advantages)


class UntilNewVersion:
    """Calls the policy once, then again every 0.2 s until a call is answered by another weights version (at most
    ``patience`` seconds); reward 1 when the first call's first token is a target."""

    name = "straddle"

    def __init__(self, targets: frozenset[int], patience: float = 4.0) -> None:
        self.targets, self.patience = targets, patience

    def __call__(self, task: dict[str, Any], ctx: TrainingContext) -> float:
        llm = ctx.llm()
        body = {"model": llm.model, "prompt": task["prompt"], "max_tokens": 2, "return_token_ids": True}
        first = httpx.post(f"{llm.endpoint}/completions", json=body, timeout=60)
        first.raise_for_status()
        version = first.headers["x-agl-model-version"]
        deadline = time.monotonic() + self.patience
        while time.monotonic() < deadline:
            time.sleep(0.2)
            again = httpx.post(f"{llm.endpoint}/completions", json=body, timeout=60)
            again.raise_for_status()
            if again.headers["x-agl-model-version"] != version:
                break
        ids = first.json()["choices"][0]["token_ids"]
        return 1.0 if ids and ids[0] in self.targets else 0.0


def _config(tmp_path: Path, tokenizer: PreTrainedTokenizerFast, **overrides: Any) -> GRPOConfig:
    model = tmp_path / "model"
    if not model.exists():
        save_tiny_policy(tokenizer, model)
    settings: dict[str, Any] = {
        "model": str(model),
        "learning_rate": 2e-2,
        "group_size": 2,
        "tasks_per_iteration": 2,
        "max_new_tokens": 2,
        "async_rollouts": True,
    }
    return GRPOConfig(**{**settings, **overrides})


def _trainer(
    algorithm: GroupRelativePolicyOptimization, store: InMemoryLightningStore, agent: Any, run: Path
) -> Trainer:
    return Trainer(
        algorithm=algorithm,
        store=store,
        agent=agent,
        train_dataset=[{"prompt": p} for p in PROMPTS],
        n_runners=2,
        run_dir=run,
    )


def _call_versions(sync: SyncStore, rollout_id: str) -> list[int]:
    """The policy version that answered each LLM call of the rollout, in call order (read from the spans)."""
    spans = sorted((s for s in sync.query_spans(rollout_id) if s.kind == "llm"), key=lambda s: s.start_time)
    versions = []
    for span in spans:
        resources_id = span.attributes[semconv.RESOURCES_ID]
        assert isinstance(resources_id, str)
        versions.append(int(sync.get_resources(resources_id).metadata["agl.policy_version"]))
    return versions


def _train_rollouts(sync: SyncStore) -> set[str]:
    return {r.rollout_id for r in sync.query_rollouts(limit=1000) if r.mode == "train"}


@pytest.mark.parametrize("max_staleness", [0, 1])
def test_no_sample_older_than_the_bound_is_trained_and_none_is_dropped(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path, max_staleness: int
) -> None:
    store = InMemoryLightningStore()
    algorithm = SlowLearner(_config(tmp_path, tokenizer, max_staleness=max_staleness), delay=1.0)
    result = _trainer(algorithm, store, FirstTokenAgent(target_ids(tokenizer)), tmp_path / "run").train(
        num_iterations=4
    )
    assert result.iterations == 4 and not result.interrupted
    sync = SyncStore(store)
    ages = []
    for iteration, rollout_ids in algorithm.trained_batches:  # batch k trains the weights of version k
        for rollout_id in rollout_ids:
            ages += [iteration - v for v in _call_versions(sync, rollout_id)]
    assert max(ages) <= max_staleness
    if max_staleness == 1:
        assert max(ages) == 1  # collection did overlap the slow learner's updates
    trained = [r for _, ids in algorithm.trained_batches for r in ids]
    assert len(trained) == len(set(trained)) == 16 and set(trained) == _train_rollouts(sync)  # none dropped
    for metrics in result.metrics:
        assert metrics["train/stale_samples_dropped"] == 0.0
        assert metrics["train/staleness_max"] <= max_staleness
        assert metrics["placement/engine_threads"] >= 1 and metrics["placement/learner_threads"] >= 1


def test_admission_waits_for_the_version_the_bound_needs() -> None:
    gate = AdmissionGate(version=3, max_staleness=1)
    assert gate.may_start(4) and not gate.may_start(5)
    assert not gate.admit(5, timeout=0.05)
    gate.advance(4)
    assert gate.admit(5, timeout=0.05)
    gate.close()
    assert not gate.admit(5, timeout=0.05)


def test_the_truncated_importance_ratio_equals_a_hand_computed_case() -> None:
    now = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    sampler = torch.tensor([[-1.5, -1.0, -0.5, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    weights, stats = truncated_importance_weights(now, sampler, mask, cap=1.5)
    # exp(0.5) = 1.6487 > 1.5 is truncated; exp(-1) = 0.3679; exp(0) = 1; the masked-out token keeps weight 1
    assert weights.tolist()[0] == pytest.approx([1.5, math.exp(-1.0), 1.0, 1.0])
    metrics = stats.metrics()
    assert metrics["train/is_ratio_mean"] == pytest.approx((math.exp(0.5) + math.exp(-1.0) + 1.0) / 3)
    assert metrics["train/is_ratio_max"] == pytest.approx(math.exp(0.5))
    assert metrics["train/is_truncated_frac"] == pytest.approx(1 / 3)
    assert metrics["train/is_tokens"] == 3.0


def test_the_learner_weights_stale_tokens_by_the_ratio_to_the_sampler(
    model: LlamaForCausalLM, forced_logprobs: Callable[..., list[float]]
) -> None:
    prompt, completion = [5, 6, 7, 8], [11, 12, 13]
    now = forced_logprobs(model, prompt, completion)
    shift = [0.1, 1.0, -0.3]  # log pi_now - log pi_sampler per token
    sampler = [lp - d for lp, d in zip(now, shift, strict=True)]

    def sample(rollout: str, staleness: int, logprobs: list[float]) -> Sample:
        return Sample(
            rollout_id=rollout, attempt_id="a", span_ids=["s"], prompt_token_ids=prompt,
            completion_token_ids=completion, completion_logprobs=logprobs, loss_mask=[1, 1, 1], reward=1.0,
            metadata={STALENESS_KEY: staleness},
        )  # fmt: skip

    learner = PolicyLearner(model, GRPOConfig(learning_rate=0.0, importance_cap=2.0), pad_id=0)
    samples = [sample("stale", 1, sampler), sample("fresh", 0, [-9.0, -9.0, -9.0])]
    metrics = learner.update(samples, [torch.ones(3), torch.ones(3)])
    ratios = [math.exp(d) for d in shift]  # exp(1.0) = 2.72 is over the cap of 2; the fresh sample is not counted
    assert metrics["train/is_tokens"] == 3.0
    assert metrics["train/is_ratio_mean"] == pytest.approx(sum(ratios) / 3, rel=1e-4)
    assert metrics["train/is_ratio_max"] == pytest.approx(math.exp(1.0), rel=1e-4)
    assert metrics["train/is_truncated_frac"] == pytest.approx(1 / 3)


def test_a_rollout_straddling_an_update_records_both_versions_and_trains(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    store = InMemoryLightningStore()
    algorithm = SlowLearner(_config(tmp_path, tokenizer), delay=1.5)
    result = _trainer(algorithm, store, UntilNewVersion(target_ids(tokenizer)), tmp_path / "run").train(
        num_iterations=2
    )
    assert result.iterations == 2
    sync = SyncStore(store)
    _, rollout_ids = algorithm.trained_batches[1]  # collected while update 1 ran on the slow learner
    straddling = [r for r in rollout_ids if len(set(_call_versions(sync, r))) > 1]
    assert straddling, [(r, _call_versions(sync, r)) for r in rollout_ids]
    for rollout_id in straddling:
        versions = _call_versions(sync, rollout_id)
        assert versions[0] == 0 and versions[-1] == 1 and versions == sorted(versions)
    second = result.metrics[1]
    assert second["train/samples"] == sum(len(_call_versions(sync, r)) for r in rollout_ids)  # every call trained
    assert second["train/stale_samples"] > 0 and second["train/is_tokens"] > 0


def test_ctrl_c_during_an_overlapped_step_resumes_with_no_rollout_lost_or_trained_twice(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    store = InMemoryLightningStore()
    checkpoints = tmp_path / "checkpoints"
    agent = FirstTokenAgent(target_ids(tokenizer))
    first = SlowLearner(_config(tmp_path, tokenizer), delay=1.0, interrupt_at=2)
    interrupted = _trainer(first, store, agent, tmp_path / "run1").train(num_iterations=5, checkpoint_dir=checkpoints)
    assert interrupted.interrupted and interrupted.iterations == 2
    assert interrupted.checkpoint == checkpoints / "checkpoint-000002"
    state = torch.load(checkpoints / "checkpoint-000002" / "trainer_state.pt", weights_only=False)
    pending = state["async_pending"]
    assert sorted(pending) == [2, 3]  # the batch being trained and the one being collected

    second = SlowLearner(_config(tmp_path, tokenizer), delay=0.0)
    resumed = _trainer(second, store, agent, tmp_path / "run2").train(num_iterations=5, checkpoint_dir=checkpoints)
    assert resumed.iterations == 5 and [m["step"] for m in resumed.metrics] == [3.0, 4.0, 5.0]
    assert [i for i, _ in second.trained_batches] == [2, 3, 4]
    assert second.trained_batches[0][1] == pending[2] and second.trained_batches[1][1] == pending[3]
    trained = [r for _, ids in first.trained_batches + second.trained_batches for r in ids]
    assert len(trained) == len(set(trained)) == 5 * 4  # nothing trained twice
    assert set(trained) == _train_rollouts(SyncStore(store))  # and no rollout left untrained
