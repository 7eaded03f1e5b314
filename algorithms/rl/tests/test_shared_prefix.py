"""A prompt prefix shared by a batch runs once in the learner; log-probs, values and gradients stay the full rows'."""

from __future__ import annotations

import random

import pytest
import torch
from agent_lightning.types import Sample
from agent_lightning_rl import losses
from agent_lightning_rl.batching import MIN_SHARED_PREFIX, collate, shared_prefix_length
from agent_lightning_rl.learner import PolicyModule
from conftest import teacher_forced_logprobs
from transformers import LlamaForCausalLM

PREFIX = [random.Random(0).randrange(3, 400) for _ in range(48)]  # e.g. a system prompt with worked examples


def _sample(rollout: str, prompt: list[int], completion: list[int], mask: list[int] | None = None) -> Sample:
    return Sample(
        rollout_id=rollout,
        attempt_id="a",
        span_ids=[],
        prompt_token_ids=prompt,
        completion_token_ids=completion,
        loss_mask=mask or [1] * len(completion),
        reward=1.0,
        group_id="g",
        turn_index=0,
    )


SAMPLES = [
    _sample("r1", [*PREFIX, 7, 8, 9], [10, 11, 12]),
    _sample("r2", [*PREFIX, 13], [14, 15, 16, 17, 18], [1, 1, 0, 0, 1]),
    _sample("r3", [*PREFIX, 19, 20, 21, 22, 23, 24], [25]),
]


def test_shared_prefix_length_leaves_every_prompt_a_token_of_its_own() -> None:
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # not 3: the shorter prompt keeps its last token
    assert shared_prefix_length([[1, 2, 3]]) == 0
    assert shared_prefix_length([[5, 6], [7, 8]]) == 0


def test_the_shared_prefix_is_laid_out_once_at_the_left_with_positions_continuing_after_it() -> None:
    batch = collate(SAMPLES, pad_id=0)
    assert batch.shared_prefix == len(PREFIX) >= MIN_SHARED_PREFIX
    for row, sample in enumerate(SAMPLES):
        real = batch.attention_mask[row].bool()
        assert batch.input_ids[row, : len(PREFIX)].tolist() == PREFIX
        assert batch.input_ids[row][real].tolist() == sample.prompt_token_ids + sample.completion_token_ids
        assert batch.position_ids[row][real].tolist() == list(range(int(real.sum())))
    assert collate(SAMPLES, pad_id=0, share_prefix=False).shared_prefix == 0


@pytest.mark.parametrize("fused", [True, False])
def test_logprobs_of_a_shared_prefix_batch_match_each_row_alone(model: LlamaForCausalLM, fused: bool) -> None:
    batch = collate(SAMPLES, pad_id=0)
    with torch.no_grad():
        got, _, _ = PolicyModule(model, fused=fused)(batch)
    for row, sample in enumerate(SAMPLES):
        want = teacher_forced_logprobs(model, sample.prompt_token_ids, sample.completion_token_ids)
        assert got[row, : len(want)].tolist() == pytest.approx(want, abs=1e-4)


def test_gradients_and_values_with_a_shared_prefix_equal_those_without(model: LlamaForCausalLM) -> None:
    results = []
    for share in (True, False):
        model.zero_grad()
        module = PolicyModule(model, value_head=True)
        torch.manual_seed(1)  # the same value head both times
        torch.nn.init.normal_(module.value_head.weight, std=0.5)  # type: ignore[union-attr]
        batch = collate(SAMPLES, pad_id=0, share_prefix=share)
        assert batch.shared_prefix == (len(PREFIX) if share else 0)
        logprobs, _, values = module(batch, batch.loss_mask, want_values=True)
        advantages = torch.tensor([[1.0] * 5, [-0.5] * 5, [2.0] * 5])
        loss, _ = losses.policy_loss(logprobs, logprobs.detach() - 0.1, advantages, batch.loss_mask)
        assert values is not None
        loss = loss + (values * batch.loss_mask).pow(2).sum()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((grads, (logprobs * batch.loss_mask).detach(), (values * batch.loss_mask).detach()))
    (g_shared, lp_shared, v_shared), (g_full, lp_full, v_full) = results
    assert torch.allclose(lp_shared, lp_full, atol=1e-5)
    assert torch.allclose(v_shared, v_full, atol=1e-5)
    assert any(g.abs().sum() > 0 for g in g_full)
    for shared, full in zip(g_shared, g_full, strict=True):  # equal up to float32 rounding of sums in another order
        assert float((shared - full).abs().max()) <= 1e-5 * float(full.abs().max()) + 1e-6
