"""Fixtures: a tiny byte-level BPE tokenizer and tiny random Llama models built in-process, and running servers."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from agent_lightning_rl.policy import PolicyServer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

MODEL_NAME = "tiny-llama"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOOL_CALL_TEXT = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
CORPUS = [
    "What is 2+3? The answer is 5. What is 7 times 6? It is 42.",
    "You are a helpful assistant. Please answer the question about the weather in Paris.",
    "system user assistant tool hello world the quick brown fox jumps over the lazy dog",
    TOOL_CALL_TEXT,
    '{"name": "add", "arguments": {"a": 1, "b": 4}} {"type": "function"} <tools> </tools> <tool_response>',
    "Lightning trains agents with reinforcement learning from spans and rewards, token by token.",
] * 20


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 style, like SmolLM2's) with ChatML special tokens and no chat template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )


def tiny_llama(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **config: Any) -> LlamaForCausalLM:
    """A 2-layer, 32-wide Llama for ``tokenizer``, random weights drawn from ``seed``; ``config``: other settings."""
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**settings, **config}))


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer, 32-wide Llama with random weights (wide init so logits are well separated)."""
    return tiny_llama(
        tokenizer, seed, max_position_embeddings=1024, initializer_range=0.2, tie_word_embeddings=False
    ).eval()


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture
def make_model(tokenizer: PreTrainedTokenizerFast) -> Callable[[int], LlamaForCausalLM]:
    return lambda seed=0: build_model(tokenizer, seed)


@pytest.fixture
def model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    return build_model(tokenizer, 0)


@pytest.fixture
def reference_model(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """An untouched copy of ``model`` (the server owns and may swap the original)."""
    return copy.deepcopy(model)


@pytest.fixture
def server(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast) -> Iterator[PolicyServer]:
    with PolicyServer(model, tokenizer, model_name=MODEL_NAME, max_batch_size=8) as running:
        yield running


@pytest.fixture(scope="session")
def smollm2_tokenizer():  # type: ignore[no-untyped-def]
    """The real SmolLM2 tokenizer from the bundled GGUF; skipped (with the install command) when not installed."""
    from agent_lightning_rl.models import ModelLoadError, load_tokenizer

    try:
        return load_tokenizer()
    except ModelLoadError as exc:
        pytest.skip(str(exc))


def teacher_forced_logprobs(model: torch.nn.Module, prompt_ids: list[int], ids: list[int]) -> list[float]:
    """log p(ids[i] | prompt + ids[:i]) from one plain forward pass (temperature 1, no truncation)."""
    full = torch.tensor([prompt_ids + ids])
    with torch.no_grad():
        logits = model(input_ids=full).logits[0].float()
    logprobs = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
    return logprobs[torch.arange(len(ids)), torch.tensor(ids)].tolist()


def hf_greedy(model: torch.nn.Module, prompt_ids: list[int], max_new_tokens: int, eos_token_id: int) -> list[int]:
    """Greedy continuation by transformers' own ``generate`` (an independent reference implementation)."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos_token_id,
            pad_token_id=eos_token_id,
        )
    return out[0, len(prompt_ids) :].tolist()


@pytest.fixture
def forced_logprobs() -> Callable[..., list[float]]:
    return teacher_forced_logprobs


@pytest.fixture
def greedy_reference() -> Callable[..., list[int]]:
    return hf_greedy
