"""A toy task for learning tests: reward 1 when the policy's first completion token is in a target set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from agent_lightning import TrainingContext
from conftest import tiny_llama
from transformers import PreTrainedTokenizerFast

PROMPTS = ["the quick brown fox", "hello world", "What is 2+3?", "the lazy dog"]


def save_tiny_policy(tokenizer: PreTrainedTokenizerFast, folder: Path, seed: int = 0) -> str:
    """A 2-layer, 64-wide Llama with a small init (a near-uniform policy), saved as a checkpoint folder."""
    policy = tiny_llama(
        tokenizer,
        seed,
        hidden_size=64,
        intermediate_size=128,
        max_position_embeddings=256,
        initializer_range=0.02,
        tie_word_embeddings=False,
    )
    policy.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def target_ids(tokenizer: PreTrainedTokenizerFast, fraction: int = 5) -> frozenset[int]:
    """Every ``fraction``-th non-special token: about 1/fraction of a near-uniform policy's samples hit it."""
    special = set(tokenizer.all_special_ids)
    return frozenset(i for i in range(len(tokenizer)) if i % fraction == 0 and i not in special)


class FirstTokenAgent:
    """Asks the policy (through the proxy) to complete a prompt; reward 1 if the first sampled token is a target."""

    name = "toy"

    def __init__(self, targets: frozenset[int], max_tokens: int = 2) -> None:
        self.targets = targets
        self.max_tokens = max_tokens

    def __call__(self, task: dict[str, Any], ctx: TrainingContext) -> float:
        llm = ctx.llm()
        body = {
            "model": llm.model,
            "prompt": task["prompt"],
            "max_tokens": self.max_tokens,
            "temperature": llm.sampling_parameters.get("temperature", 1.0),
            "return_token_ids": True,
        }
        response = httpx.post(f"{llm.endpoint}/completions", json=body, timeout=60)
        response.raise_for_status()
        ids = response.json()["choices"][0]["token_ids"]
        return 1.0 if ids and ids[0] in self.targets else 0.0
