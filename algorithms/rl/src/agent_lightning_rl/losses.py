"""Loss functions, GAE and whitening: pure tensor functions, no model code.

Group-relative advantages (GRPO, RLOO, REINFORCE++) work on samples: :func:`agent_lightning_rl.advantages.
sample_advantages`.

Shapes: ``[B, T]`` per-token tensors with a ``mask`` of 1 on tokens that carry loss (the policy's own tokens)
and 0 elsewhere (padding, tool output spliced into merged turns). Aggregation is the masked token mean; pass
``normalizer`` to divide by another token count (e.g. the whole mini-batch's, when accumulating gradients).
"""

from __future__ import annotations

from typing import Literal

import torch

EPS = 1e-6


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum()


def masked_mean(
    values: torch.Tensor, mask: torch.Tensor, normalizer: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is 1, divided by ``normalizer`` (default: the mask's count, at least 1)."""
    mask = mask.to(values.dtype)
    denominator = mask.sum().clamp(min=1.0) if normalizer is None else normalizer
    return (values * mask).sum() / denominator


def selective_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[token_ids]`` per position without materializing the full log-softmax."""
    logits = logits.float()
    picked = logits.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of ``softmax(logits)`` (nats)."""
    logits = logits.float()
    log_z = torch.logsumexp(logits, dim=-1)
    probs = torch.softmax(logits, dim=-1)
    return log_z - (probs * logits).sum(-1)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
    clip_range_high: float | None = None,
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate ``-min(r A, clip(r, 1-e, 1+e_high) A)``; returns ``(loss, clip_fraction)``.

    ``advantages`` is ``[B]`` (one per sequence) or ``[B, T]`` (per token).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    ratio = torch.exp(logprobs - old_logprobs)
    high = clip_range if clip_range_high is None else clip_range_high
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + high)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask, normalizer)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_fraction


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: Literal["k1", "k3"] = "k3"
) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled tokens.

    ``k1 = log p - log q`` (unbiased, can be negative); ``k3 = q/p - log(q/p) - 1`` (unbiased, never negative).
    """
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        log_ratio = log_ratio.clamp(-20.0, 20.0)
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1' or 'k3'")


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = 0.2,
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """``0.5 * max((V - R)^2, (V_clipped - R)^2)`` with ``V_clipped`` within ``clip`` of the old value."""
    error = (values - returns) ** 2
    if clip is not None:
        clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        error = torch.maximum(error, (clipped - returns) ** 2)
    return 0.5 * masked_mean(error, mask, normalizer)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over the masked tokens of each row; returns ``(advantages, returns)``.

    Tokens with mask 0 are skipped (they are not actions: the next action's value bootstraps across them) and get
    advantage 0. The value after a row's last action is 0 (the episode ends).
    """
    batch, steps = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(batch, dtype=rewards.dtype, device=rewards.device)
    next_advantage = torch.zeros_like(next_value)
    active = mask.bool()
    for t in reversed(range(steps)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(active[:, t], advantage, torch.zeros_like(advantage))
        next_value = torch.where(active[:, t], values[:, t], next_value)
        next_advantage = torch.where(active[:, t], advantage, next_advantage)
    returns = (advantages + values) * mask
    return advantages, returns


def whiten(values: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True) -> torch.Tensor:
    """Normalize to zero mean (optional) and unit variance over the masked entries."""
    if mask is None:
        mask = torch.ones_like(values)
    mean = masked_mean(values, mask)
    centered = values - mean
    var = masked_mean(centered**2, mask)
    out = centered * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask
