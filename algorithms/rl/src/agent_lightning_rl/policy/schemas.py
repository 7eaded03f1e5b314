"""Request bodies of the OpenAI-compatible endpoints (unknown fields are accepted and ignored)."""

from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    temperature: float | None = None
    """None → 1.0 (OpenAI's default); 0 → greedy."""
    top_p: float | None = None
    top_k: int | None = None
    """vLLM extension; 0 or -1 disables it."""
    max_tokens: int | None = None
    stop: Union[str, list[str], None] = None
    stop_token_ids: list[int] | None = None
    """vLLM extension: generation also stops after any of these ids."""
    ignore_eos: bool = False
    """vLLM extension: keep generating past EOS (until max_tokens or a stop)."""
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=64)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    return_token_ids: bool | None = None
    """Accepted for vLLM compatibility; token ids are always returned."""


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: Union[str, dict[str, Any], None] = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class CompletionRequest(_Sampling):
    """``POST /v1/completions``; ``prompt`` may be text, token ids, or a list of either."""

    prompt: Union[str, list[str], list[int], list[list[int]]]
    logprobs: int | None = None
    echo: bool = False


class WeightsUpdate(BaseModel):
    """``POST /agl/weights``: load new weights from a path on this machine and serve them as ``version``."""

    model_config = ConfigDict(extra="forbid")

    path: str
    version: str = Field(min_length=1)
