"""The update step against reference computations (entropy bonus, gradient clipping), the KL metrics, offline
staleness through the real store path, and the TensorBoard output."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from agent_lightning import InMemoryLightningStore, Trainer
from agent_lightning.errors import NoTrainingData
from agent_lightning.store.sync import SyncStore
from agent_lightning.types import Sample
from agent_lightning_rl.config import GRPOConfig
from agent_lightning_rl.grpo import GroupRelativePolicyOptimization
from agent_lightning_rl.learner import PolicyLearner
from toy import save_tiny_policy
from traces import add_rollout
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

SAMPLES = [
    ([5, 6, 7], [10, 11, 12]),
    ([12, 13], [16, 17]),
]
ADVANTAGES = [1.0, -0.5]


def _samples() -> list[Sample]:
    return [
        Sample(
            rollout_id=f"r{i}",
            attempt_id="a",
            span_ids=[],
            prompt_token_ids=prompt,
            completion_token_ids=completion,
            loss_mask=[1] * len(completion),
            reward=ADVANTAGES[i],
        )
        for i, (prompt, completion) in enumerate(SAMPLES)
    ]


def _advantages() -> list[torch.Tensor]:
    return [torch.full((len(c),), a) for (_, c), a in zip(SAMPLES, ADVANTAGES, strict=True)]


def _reference_gradient(model: LlamaForCausalLM, entropy_coef: float) -> dict[str, torch.Tensor]:
    """The loss written out by hand on plain full-vocabulary forward passes, one sequence at a time.

    At ratio 1 the clipped surrogate is ``-A * exp(logp - logp.detach())``; the bonus subtracts ``entropy_coef``
    times the entropy; both are averaged over all completion tokens of the batch.
    """
    model.zero_grad()
    tokens = sum(len(c) for _, c in SAMPLES)
    total = torch.zeros(())
    for (prompt, completion), advantage in zip(SAMPLES, ADVANTAGES, strict=True):
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1].float()
        log_probs = torch.log_softmax(logits, dim=-1)
        picked = log_probs[torch.arange(len(completion)), torch.tensor(completion)]
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        total = total + (-advantage * torch.exp(picked - picked.detach())).sum() - entropy_coef * entropy.sum()
    (total / tokens).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _learner_gradient(model: LlamaForCausalLM, config: GRPOConfig) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The gradient the learner's optimizer steps with (captured by an optimizer step pre-hook), and its metrics."""
    learner = PolicyLearner(model, config, pad_id=0)
    seen: dict[str, torch.Tensor] = {}
    names = {id(p): name for name, p in model.named_parameters()}

    def capture(optimizer: torch.optim.Optimizer, *_: object) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None and id(p) in names:
                    seen[names[id(p)]] = p.grad.clone()

    learner.optimizer.register_step_pre_hook(capture)
    metrics = learner.update(_samples(), _advantages())
    return seen, metrics


def test_entropy_bonus_gradient_matches_the_hand_written_loss(
    make_model: Callable[[int], LlamaForCausalLM],
) -> None:
    coef = 1.0
    got, metrics = _learner_gradient(make_model(0), GRPOConfig(entropy_coef=coef, max_grad_norm=None))
    want = _reference_gradient(make_model(0), coef)
    without = _reference_gradient(make_model(0), 0.0)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-6, rtol=1e-4), name
    # the bonus is not lost in the noise: it moves the LM head's gradient by a large fraction
    head = "lm_head.weight"
    assert (want[head] - without[head]).norm() > 0.1 * without[head].norm()
    assert metrics["train/entropy"] > 0


def test_entropy_bonus_alone_raises_the_entropy(make_model: Callable[[int], LlamaForCausalLM]) -> None:
    samples = _samples()
    zero = [torch.zeros(len(s.completion_token_ids)) for s in samples]
    for coef, rises in ((0.5, True), (0.0, False)):
        model = make_model(0)
        before = [p.detach().clone() for p in model.parameters()]
        learner = PolicyLearner(model, GRPOConfig(learning_rate=1e-2, entropy_coef=coef), pad_id=0)
        first = learner.update(samples, zero)["train/entropy"]
        second = learner.update(samples, zero)["train/entropy"]
        if rises:
            assert second > first
        else:  # no advantage and no bonus: no gradient, so AdamW leaves every weight where it was
            assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_max_grad_norm_bounds_the_gradient_the_optimizer_steps_with(
    make_model: Callable[[int], LlamaForCausalLM],
) -> None:
    def total_norm(grads: dict[str, torch.Tensor]) -> float:
        return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()])))

    bound = 0.05
    clipped, metrics = _learner_gradient(make_model(0), GRPOConfig(max_grad_norm=bound))
    assert metrics["train/grad_norm"] > 10 * bound  # the norm before clipping: the bound had work to do
    assert total_norm(clipped) == pytest.approx(bound, rel=1e-4)
    free, free_metrics = _learner_gradient(make_model(0), GRPOConfig(max_grad_norm=None))
    assert total_norm(free) == pytest.approx(free_metrics["train/grad_norm"], rel=1e-4)
    assert total_norm(free) == pytest.approx(metrics["train/grad_norm"], rel=1e-4)
    for name in free:  # clipping rescales, never changes the direction
        assert torch.allclose(clipped[name], free[name] * bound / metrics["train/grad_norm"], atol=1e-7, rtol=1e-3)


def test_kl_metrics(make_model: Callable[[int], LlamaForCausalLM]) -> None:
    """``train/kl`` needs the reference's log-probs, computed only with ``kl_coef > 0``; ``train/policy_kl`` is free."""
    import copy

    model = make_model(0)
    plain = PolicyLearner(copy.deepcopy(model), GRPOConfig(kl_coef=0.0), pad_id=0).update(_samples(), _advantages())
    assert "train/kl" not in plain and plain["train/policy_kl"] == pytest.approx(0.0, abs=1e-7)
    config = GRPOConfig(kl_coef=0.1, learning_rate=1e-2, ppo_epochs=2)
    learner = PolicyLearner(copy.deepcopy(model), config, pad_id=0, reference=copy.deepcopy(model))
    old = learner.score(_samples())
    metrics = learner.update(_samples(), _advantages(), old=old)
    assert metrics["train/kl"] > 0 and metrics["train/policy_kl"] > 0  # the second epoch ran on moved weights


# ---------------------------------------------------------------------------- staleness, offline
def test_offline_resume_drops_rollouts_of_stale_policy_versions(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    """A store holding rollouts of policy versions 0, 1 and 2; training resumes from a checkpoint at iteration 2
    with ``max_staleness=1``: version 0 is left out, versions 1 and 2 are trained on."""
    model_dir = save_tiny_policy(tokenizer, tmp_path / "model")
    checkpoints = tmp_path / "checkpoints"
    warmup = SyncStore(InMemoryLightningStore())
    for i in range(2):
        add_rollout(warmup, {"task": 0}, [([5, 6, 7], [10 + i, 11])], float(i))
    config = GRPOConfig(model=model_dir, learning_rate=1e-3, batch_size=100, max_staleness=1)
    first = Trainer(
        algorithm=GroupRelativePolicyOptimization(config=config), store=warmup.store, run_dir=tmp_path / "a"
    )
    assert first.train(num_iterations=2, checkpoint_dir=checkpoints).iterations == 2

    sync = SyncStore(InMemoryLightningStore())
    by_version = {}
    for version in (0, 1, 2):
        snapshot = sync.add_resources({}, {"agl.policy_version": version})
        by_version[version] = [
            add_rollout(
                sync, {"task": version}, [([5, 6, 7], [20 + j, 21])], float(j), resources_id=snapshot.resources_id
            )
            for j in range(2)
        ]
    add_rollout(sync, {"task": "other model"}, [([5, 6], [30, 31])], 1.0)  # no policy version: always kept
    algorithm = GroupRelativePolicyOptimization(config=config)
    seen: list[str] = []
    original = PolicyLearner.update

    def recording(self: PolicyLearner, samples: list[Sample], *args: object, **kwargs: object) -> dict[str, float]:
        seen.extend(s.rollout_id for s in samples)
        return original(self, samples, *args, **kwargs)  # type: ignore[arg-type]

    PolicyLearner.update = recording  # type: ignore[method-assign]
    try:
        result = Trainer(algorithm=algorithm, store=sync.store, run_dir=tmp_path / "b").train(
            num_iterations=3, checkpoint_dir=checkpoints
        )
    finally:
        PolicyLearner.update = original  # type: ignore[method-assign]
    assert [m["step"] for m in result.metrics] == [3.0]  # resumed at iteration 2
    assert result.metrics[0]["data/stale_samples_dropped"] == 2
    assert result.metrics[0]["train/samples"] == 5
    stale = {r.rollout_id for r in by_version[0]}
    assert seen and stale.isdisjoint(seen)
    assert {r.rollout_id for r in by_version[1] + by_version[2]} <= set(seen)

    strict = GroupRelativePolicyOptimization(config=config.model_copy(update={"max_staleness": 0}))
    only_old = SyncStore(InMemoryLightningStore())
    snapshot = only_old.add_resources({}, {"agl.policy_version": 0})
    add_rollout(only_old, {"task": 0}, [([5, 6, 7], [20, 21])], 1.0, resources_id=snapshot.resources_id)
    with pytest.raises(NoTrainingData, match=r"more than max_staleness=0 updates older .*\(version 3\)"):
        Trainer(algorithm=strict, store=only_old.store, run_dir=tmp_path / "c").train(
            num_iterations=4,
            checkpoint_dir=checkpoints,  # resumes from checkpoint-000003
        )


# ---------------------------------------------------------------------------- TensorBoard
def test_metrics_reach_tensorboard(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    pytest.importorskip(
        "tensorboard", reason="TensorBoard is not installed: pip install 'agent-lightning-rl[tensorboard]'"
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sync = SyncStore(InMemoryLightningStore())
    for i in range(4):
        add_rollout(sync, {"task": 0}, [([5, 6, 7], [10 + i, 11])], float(i % 2))
    config = GRPOConfig(model=save_tiny_policy(tokenizer, tmp_path / "model"), batch_size=4)
    run_dir = tmp_path / "run"
    Trainer(algorithm=GroupRelativePolicyOptimization(config=config), store=sync.store, run_dir=run_dir).train(
        num_iterations=2
    )
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/policy_loss", "train/entropy", "train/grad_norm", "perf/tokens_per_s"} <= tags
    assert [e.step for e in events.Scalars("train/policy_loss")] == [1, 2]
