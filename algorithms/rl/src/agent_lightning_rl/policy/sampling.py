"""Sampling parameters and next-token selection (temperature, top-k, top-p, seeded per choice)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

LogprobsMode = Literal["raw", "processed"]
"""Which distribution reported logprobs come from.

``"raw"`` (default, like vLLM's default): ``log_softmax`` of the model's logits, before temperature, top-k and
top-p, so they equal what a trainer computes with a plain forward pass over prompt + completion.
``"processed"``: the distribution actually sampled from, ``log_softmax(logits / temperature)`` with the tokens
removed by top-k/top-p at ``-inf``. Greedy decoding (temperature 0) reports raw logprobs in both modes.
"""

GREEDY_BELOW = 1e-5
"""Temperatures below this mean greedy decoding (argmax)."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples. ``max_tokens`` is already clamped to the model's context by the engine."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    stop: tuple[str, ...] = ()
    """Generation ends when the text contains one of these; the text is cut before it, the ids keep every token."""
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    """Choice ``i`` of the request samples with a generator seeded ``(seed + i) mod 2**64``."""
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0 <= self.temperature <= 100:
            raise ValueError(f"temperature must be in [0, 100], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 <= self.top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be in [0, 20], got {self.top_logprobs}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        """Whether this request decodes greedily."""
        return self.temperature < GREEDY_BELOW


@dataclass
class Pick:
    """One selected token with its logprob and the top alternatives, all from the reported distribution."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


def processed_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature-scaled logits (1-D) with tokens outside top-k / top-p set to ``-inf``."""
    scaled = logits / params.temperature
    if params.top_k and params.top_k < scaled.numel():
        kth = torch.topk(scaled, params.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the tokens before it already reach top_p (the first one always stays)
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled


def pick_token(
    logits: torch.Tensor,
    raw_logprobs: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
    mode: LogprobsMode,
) -> Pick:
    """Select the next token from one row of ``logits`` (float32, 1-D) as ``params`` say."""
    if params.greedy:
        token = int(torch.argmax(logits))
        reported = raw_logprobs
    else:
        processed = processed_logits(logits, params)
        probs = torch.softmax(processed, dim=-1)
        token = int(torch.multinomial(probs, 1, generator=generator))
        reported = raw_logprobs if mode == "raw" else torch.log_softmax(processed, dim=-1)
    top: list[tuple[int, float]] = []
    if params.top_logprobs:
        values, indices = torch.topk(reported, params.top_logprobs)
        top = [(int(i), float(v)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]
    return Pick(token, float(reported[token]), top)
