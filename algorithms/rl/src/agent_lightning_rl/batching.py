"""Samples to padded tensors: prompts left-padded, completions right-padded, so every completion starts at one column.

The model's logits at columns ``[P-1, P+C-1)`` predict the completion tokens at ``[P, P+C)`` (``P`` the widest
prompt, ``C`` the longest completion), so only ``C + 1`` positions of logits are ever computed.

When every prompt of the batch starts with the same ``S`` tokens (an agent's system prompt, tool schemas and worked
examples), those stay in columns ``[0, S)`` and the padding goes after them: ``[shared][padding][rest of prompt]
[completion]``. The learner then runs the shared part once for the whole batch (see
:class:`~agent_lightning_rl.learner.PolicyModule`); positions continue from the shared part, so every row sees
exactly the tokens and positions it had when it was sampled.
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
    shared_prefix: int = 0
    """Leading prompt tokens that every row has in common, in columns ``[0, shared_prefix)``."""

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
            self.shared_prefix,
        )


MIN_SHARED_PREFIX = 32
"""Shorter common prefixes are padded like the rest of the prompt (sharing them would save too little)."""


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least one token of its own (0 for a single prompt)."""
    if len(prompts) < 2:
        return 0
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    length = max(limit, 0)
    for other in prompts[1:]:
        n = 0
        while n < length and first[n] == other[n]:
            n += 1
        length = n
    return length


def collate(
    samples: Sequence[Sample], pad_id: int, device: torch.device | str = "cpu", *, share_prefix: bool = True
) -> TokenBatch:
    """Pad ``samples``' captured token ids into one batch (the ids are used as captured, never re-tokenized).

    With ``share_prefix``, a prefix of at least :data:`MIN_SHARED_PREFIX` tokens common to every prompt is laid out
    once at the left (see the module docstring).
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    for sample in samples:
        if not sample.prompt_token_ids:
            raise ValueError(f"sample of rollout {sample.rollout_id} has an empty prompt: nothing to condition on")
    shared = shared_prefix_length([s.prompt_token_ids for s in samples]) if share_prefix else 0
    shared = shared if shared >= MIN_SHARED_PREFIX else 0
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
        if shared:
            input_ids[i, :shared] = torch.tensor(prompt[:shared], dtype=torch.long)
            attention[i, :shared] = 1
        rest = prompt[shared:]
        input_ids[i, width_p - len(rest) : width_p] = torch.tensor(rest, dtype=torch.long)
        input_ids[i, width_p : width_p + len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[i, width_p - len(rest) : width_p + len(ids)] = 1
        completion[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[i, : len(ids)] = torch.tensor(sample.loss_mask, dtype=torch.float32)
        tokens += len(prompt) + len(ids)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return TokenBatch(input_ids, attention, positions, completion, mask, width_p, tokens, shared).to(device)


def pad_rows(rows: Sequence[torch.Tensor], width: int, value: float = 0.0) -> torch.Tensor:
    """Right-pad 1-D tensors to ``[len(rows), width]``."""
    out = torch.full((len(rows), width), value, dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row[:width]
    return out
