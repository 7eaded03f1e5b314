"""The optimizer model: any OpenAI-compatible chat endpoint (an API model, a local vLLM, the built-in engine)."""

from __future__ import annotations

import os
import re
from typing import Any

import httpx


class OptimizerUnavailable(RuntimeError):
    """The optimizer model's endpoint cannot be reached or refused the request."""


class OptimizerModel:
    """Chat completions from ``base_url`` (``…/v1``); the API key is read from ``api_key_env`` when set."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        temperature: float = 1.0,
        max_tokens: int = 1024,
        timeout: float = 120.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        key = os.environ.get(api_key_env) if api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers)
        self.calls = 0

    def check(self) -> None:
        """Fail now, before any rollout is spent, when nothing answers at ``base_url``."""
        try:
            self._client.get(f"{self.base_url}/models", timeout=10.0)
        except httpx.HTTPError as exc:
            raise OptimizerUnavailable(self._down(exc)) from exc

    def _down(self, exc: BaseException) -> str:
        return (
            f"the optimizer model endpoint {self.base_url} is unreachable ({type(exc).__name__}: {exc}); start the "
            "server (for a local vLLM: `vllm serve MODEL`) or set optimizer_base_url to an OpenAI-compatible `…/v1` URL"
        )

    def complete(self, messages: list[dict[str, Any]]) -> str:
        """The model's reply text."""
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        url = f"{self.base_url}/chat/completions"
        try:
            response = self._client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise OptimizerUnavailable(self._down(exc)) from exc
        self.calls += 1
        if response.status_code >= 400:
            raise OptimizerUnavailable(
                f"the optimizer model at {url} answered HTTP {response.status_code}: {response.text[:500]} "
                "(check optimizer_model and the API key in optimizer_api_key_env)"
            )
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise OptimizerUnavailable(
                f"the optimizer model at {url} sent no chat completion: {response.text[:500]}"
            ) from exc
        return content if isinstance(content, str) else ""

    def close(self) -> None:
        self._client.close()


_FENCE = re.compile(r"```(?:[a-zA-Z]*\n)?(.*?)```", re.DOTALL)
_TAG = re.compile(r"<prompt>(.*?)</prompt>", re.DOTALL | re.IGNORECASE)


def extract_prompt(reply: str) -> str:
    """The proposed prompt: inside ``<prompt>…</prompt>`` or the last ```` ``` ```` block, else the whole reply."""
    for pattern in (_TAG, _FENCE):
        found = pattern.findall(reply)
        if found:
            return str(found[-1]).strip()
    return reply.strip()
