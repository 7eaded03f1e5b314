"""Samples to padded tensors: prompts left-padded, completions right-padded, so every completion starts at one column.

The model's logits at columns ``[P-1, P+C-1)`` predict the completion tokens at ``[P, P+C)`` (``P`` the widest
prompt, ``C`` the longest completion), so only ``C + 1`` positions of logits are ever computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from agent_lightning.types import Sample


@dataclass
class TokenBatch:
    """Padded tensors of some samples (see the module docstring for the layout)."""

    input_ids: torch.Tensor
    """``[B, P + C]``"""
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    completion_ids: torch.Tensor
    """``[B, C]``"""
    loss_mask: torch.Tensor
    """``[B, C]`` float: 1 on the policy's own tokens, 0 on spliced-in tokens and padding."""
    prompt_width: int
    num_tokens: int
    """Real (unpadded) tokens, prompts included."""

    @property
    def completion_width(self) -> int:
        return int(self.completion_ids.shape[1])

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.completion_ids.to(device),
            self.loss_mask.to(device),
            self.prompt_width,
            self.num_tokens,
        )


def collate(samples: Sequence[Sample], pad_id: int, device: torch.device | str = "cpu") -> TokenBatch:
    """Pad ``samples``' captured token ids into one batch (the ids are used as captured, never re-tokenized)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    for sample in samples:
        if not sample.prompt_token_ids:
            raise ValueError(f"sample of rollout {sample.rollout_id} has an empty prompt: nothing to condition on")
    width_p = max(len(s.prompt_token_ids) for s in samples)
    width_c = max(len(s.completion_token_ids) for s in samples)
    rows = len(samples)
    input_ids = torch.full((rows, width_p + width_c), pad_id, dtype=torch.long)
    attention = torch.zeros((rows, width_p + width_c), dtype=torch.long)
    completion = torch.full((rows, width_c), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, width_c), dtype=torch.float32)
    tokens = 0
    for i, sample in enumerate(samples):
        prompt, ids = sample.prompt_token_ids, sample.completion_token_ids
        input_ids[i, width_p - len(prompt) : width_p] = torch.tensor(prompt, dtype=torch.long)
        input_ids[i, width_p : width_p + len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[i, width_p - len(prompt) : width_p + len(ids)] = 1
        completion[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[i, : len(ids)] = torch.tensor(sample.loss_mask, dtype=torch.float32)
        tokens += len(prompt) + len(ids)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return TokenBatch(input_ids, attention, positions, completion, mask, width_p, tokens).to(device)


def pad_rows(rows: Sequence[torch.Tensor], width: int, value: float = 0.0) -> torch.Tensor:
    """Right-pad 1-D tensors to ``[len(rows), width]``."""
    out = torch.full((len(rows), width), value, dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row[:width]
    return out
