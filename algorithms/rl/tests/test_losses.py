"""Loss functions and advantage estimators against small hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from agent_lightning.types import Sample
from agent_lightning_rl import losses
from agent_lightning_rl.advantages import sample_advantages

LOG = math.log


def test_clipped_surrogate_clips_positive_advantage() -> None:
    logprobs = torch.tensor([[LOG(0.5), LOG(0.6)]])
    old = torch.tensor([[LOG(0.5), LOG(0.4)]])  # ratios 1.0 and 1.5
    loss, clip_frac = losses.policy_loss(logprobs, old, torch.tensor([1.0]), torch.ones(1, 2), clip_range=0.2)
    # token 1: -1 * 1.0 = -1; token 2: max(-1.5, -1.2) = -1.2; mean -1.1
    assert loss.item() == pytest.approx(-1.1)
    assert clip_frac.item() == pytest.approx(0.5)


def test_clipped_surrogate_negative_advantage_keeps_the_pessimistic_term() -> None:
    logprobs = torch.tensor([[LOG(0.5), LOG(0.6)]])
    old = torch.tensor([[LOG(0.5), LOG(0.4)]])
    loss, clip_frac = losses.policy_loss(logprobs, old, torch.tensor([-1.0]), torch.ones(1, 2), clip_range=0.2)
    # token 2: max(1.5, 1.2) = 1.5 (no clipping helps a bad action); mean (1 + 1.5) / 2
    assert loss.item() == pytest.approx(1.25)
    assert clip_frac.item() == 0.0


def test_clipped_surrogate_asymmetric_clip_and_mask() -> None:
    logprobs = torch.tensor([[LOG(0.5), LOG(0.6)]])
    old = torch.tensor([[LOG(0.5), LOG(0.4)]])
    loss, _ = losses.policy_loss(logprobs, old, torch.tensor([1.0]), torch.ones(1, 2), 0.2, clip_range_high=0.3)
    assert loss.item() == pytest.approx((-1.0 - 1.3) / 2)
    masked, _ = losses.policy_loss(logprobs, old, torch.tensor([1.0]), torch.tensor([[1.0, 0.0]]), 0.2)
    assert masked.item() == pytest.approx(-1.0)  # the masked token carries no loss


def test_surrogate_gradient_is_zero_on_masked_tokens_and_normalizer() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    loss, _ = losses.policy_loss(logprobs, logprobs.detach(), torch.tensor([[2.0, 5.0, -1.0]]), mask, normalizer=4.0)
    loss.backward()
    assert logprobs.grad is not None
    # d/dlp of -A * exp(lp - old) at ratio 1 is -A, divided by the normalizer
    assert logprobs.grad[0].tolist() == pytest.approx([-0.5, 0.0, 0.25])


def test_kl_estimators() -> None:
    lp, ref = torch.tensor([LOG(0.5)]), torch.tensor([LOG(0.25)])
    assert losses.kl_penalty(lp, ref, "k1").item() == pytest.approx(LOG(2))
    assert losses.kl_penalty(lp, ref, "k3").item() == pytest.approx(0.5 - LOG(0.5) - 1)
    assert losses.kl_penalty(lp, lp, "k3").item() == 0.0
    with pytest.raises(ValueError, match="k2"):
        losses.kl_penalty(lp, ref, "k2")  # type: ignore[arg-type]


def test_entropy_and_selective_logprobs() -> None:
    logits = torch.tensor([[0.0, 0.0], [0.0, LOG(3)]])
    assert losses.entropy_from_logits(logits).tolist() == pytest.approx(
        [LOG(2), -(0.25 * LOG(0.25) + 0.75 * LOG(0.75))]
    )
    picked = losses.selective_logprobs(logits, torch.tensor([0, 1]))
    assert picked.tolist() == pytest.approx([LOG(0.5), LOG(0.75)])


def test_value_loss_clipped() -> None:
    value = losses.value_loss(
        torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[2.0]]), torch.ones(1, 1), 0.2
    )
    assert value.item() == pytest.approx(0.5 * (2.0 - 0.7) ** 2)
    unclipped = losses.value_loss(
        torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[2.0]]), torch.ones(1, 1), None
    )
    assert unclipped.item() == pytest.approx(0.5)


def test_gae_hand_computed() -> None:
    rewards, values = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.8]])
    adv, ret = losses.gae(rewards, values, torch.ones(1, 2), gamma=1.0, lam=1.0)
    assert adv[0].tolist() == pytest.approx([0.5, 0.2])
    assert ret[0].tolist() == pytest.approx([1.0, 1.0])
    adv, _ = losses.gae(rewards, values, torch.ones(1, 2), gamma=0.9, lam=0.5)
    # delta_1 = 1 - 0.8 = 0.2; delta_0 = 0.9 * 0.8 - 0.5 = 0.22; A_0 = 0.22 + 0.45 * 0.2
    assert adv[0].tolist() == pytest.approx([0.31, 0.2])


def test_gae_skips_masked_tokens() -> None:
    # a tool-output token between two policy tokens: not an action, its value is ignored
    rewards, values = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 99.0, 0.8]])
    adv, _ = losses.gae(rewards, values, torch.tensor([[1.0, 0.0, 1.0]]), gamma=1.0, lam=1.0)
    assert adv[0].tolist() == pytest.approx([0.5, 0.0, 0.2])


def _scored(scores: list[float], groups: list[str]) -> list[Sample]:
    """One single-turn rollout per score, in the given groups."""
    return [
        Sample(
            rollout_id=f"r{i}", attempt_id="a", span_ids=[], prompt_token_ids=[1], completion_token_ids=[2],
            loss_mask=[1], reward=score, group_id=group,
        )
        for i, (score, group) in enumerate(zip(scores, groups, strict=True))
    ]  # fmt: skip


def test_group_advantages_grpo_rloo_reinforce() -> None:
    samples = _scored([1.0, 0.0, 1.0, 1.0], ["a", "a", "b", "b"])
    s = math.sqrt(0.5)  # unbiased std of [1, 0]
    grpo = sample_advantages(samples, "grpo")
    assert grpo == pytest.approx([0.5 / (s + losses.EPS), -0.5 / (s + losses.EPS), 0.0, 0.0])
    assert sample_advantages(samples, "grpo", scale=False) == [0.5, -0.5, 0.0, 0.0]
    assert sample_advantages(_scored([3.0], ["x"]), "grpo") == [0.0]  # nothing to compare with
    assert sample_advantages(_scored([1.0, 0.0, 0.0], ["g"] * 3), "rloo") == pytest.approx([1.0, -0.5, -0.5])
    rpp = torch.tensor(sample_advantages(samples, "reinforce++"))
    assert rpp.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert rpp.std().item() == pytest.approx(1.0, abs=1e-4)


def test_whiten_and_masked_mean() -> None:
    values = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert losses.masked_mean(values, mask).item() == 2.0
    white = losses.whiten(values, mask)
    assert white[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)
