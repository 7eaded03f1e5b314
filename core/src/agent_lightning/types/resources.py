"""Resources: what an agent is optimized through, as immutable versioned snapshots."""

from __future__ import annotations

import string
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class PromptTemplate(BaseModel):
    """A prompt template; ``format`` fills ``{placeholders}`` (Python ``str.format`` syntax)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resource_type: Literal["prompt_template"] = "prompt_template"
    template: str

    @field_validator("template")
    @classmethod
    def _parseable(cls, value: str) -> str:
        try:
            list(string.Formatter().parse(value))
        except ValueError as exc:
            raise ValueError(f"prompt template is not valid str.format syntax: {exc}") from exc
        return value

    def format(self, **values: Any) -> str:
        """Fill the template."""
        return self.template.format(**values)


class LLM(BaseModel):
    """An OpenAI-compatible model endpoint (a policy being trained, or a fixed model)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resource_type: Literal["llm"] = "llm"
    endpoint: str
    """Base URL to use as the OpenAI client's ``base_url`` (usually the proxy)."""
    model: str
    api_key: str | None = None
    sampling_parameters: dict[str, Any] = Field(default_factory=dict)

    def base_url(
        self, rollout_id: str | None = None, attempt_id: str | None = None, *, token: str | None = None
    ) -> str:
        """The endpoint, routed to one rollout/attempt when the endpoint is the proxy.

        ``token`` (the attempt's token) goes in the path (``/token/TOKEN/rollout/…``), like a pre-signed URL.
        """
        if rollout_id is None:
            return self.endpoint
        root = self.endpoint.rstrip("/")
        if root.endswith("/v1"):
            root = root[: -len("/v1")]
        path = f"/rollout/{rollout_id}" + (f"/attempt/{attempt_id}" if attempt_id else "")
        if token:
            path = f"/token/{token}{path}"
        return f"{root}{path}/v1"


class ToolConfig(BaseModel):
    """Free-form configuration of a tool."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resource_type: Literal["tool"] = "tool"
    config: dict[str, Any] = Field(default_factory=dict)


Resource = Annotated[PromptTemplate | LLM | ToolConfig, Field(discriminator="resource_type")]


class ResourcesSnapshot(BaseModel):
    """An immutable, versioned set of named resources.

    ``version`` counts up from 1 in each store; ``resources_id`` names the snapshot.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    resources_id: str
    version: int = Field(ge=1)
    resources: dict[str, Resource]
    created_at: float = Field(default_factory=time.time)
    metadata: dict[str, Any] = Field(default_factory=dict)

    def get(self, name: str) -> Resource:
        """The named resource, or a ``KeyError`` naming the ones that exist."""
        try:
            return self.resources[name]
        except KeyError:
            raise KeyError(f"no resource named {name!r}; this snapshot has {sorted(self.resources)}") from None
