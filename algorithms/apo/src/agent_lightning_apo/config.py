"""Settings of the prompt optimizers (pydantic; ``agl train --set KEY=VALUE`` sets any field)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class APOConfig(BaseModel):
    """What every prompt optimizer shares: the resources it edits, the agent's model, the rollout budget."""

    model_config = ConfigDict(extra="forbid")

    prompt_resource: str = "system_prompt"
    """Name of the ``PromptTemplate`` resource holding the system prompt the agent reads."""
    examples_resource: str = "worked_examples"
    """Name of the ``ToolConfig`` resource whose ``config["examples"]`` the agent shows as worked examples
    (each ``{"messages": [OpenAI chat messages]}``: question, tool calls, results, final answer)."""
    seed_prompt: str | None = None
    """The starting system prompt; default: the latest resources' ``prompt_resource``."""
    seed_examples: list[dict[str, Any]] | None = None
    """The starting worked examples (``[]``: none); default: the latest resources' ``examples_resource``."""
    model: str | None = None
    """The agent's model (``agl train --model``); with ``llm_endpoint``, published as the LLM resource ``llm_resource``.
    Without them the LLM resources of the latest snapshot are kept as they are."""
    llm_endpoint: str | None = None
    llm_resource: str = "main_llm"
    llm_api_key_env: str | None = None
    """Environment variable holding the agent model's API key (never stored in the config)."""
    sampling_parameters: dict[str, Any] = Field(default_factory=lambda: {"temperature": 0.0})
    rollout_budget: int = Field(default=300, ge=1)
    """Most rollouts the search may run, every phase included; it stops before a phase that would exceed it."""
    minibatch_size: int = Field(default=8, ge=1)
    """Validation tasks (demonstration search) or training tasks (reflection) a candidate is first scored on."""
    success_threshold: float = 1.0
    """A rollout with a reward at or above this is a success (a worked-example source, a solved task)."""
    rollout_timeout: float | None = Field(default=600.0, gt=0)
    seed: int = 0
    check_resource_use: bool = True
    """Fail when no rollout's LLM calls show the optimized resource (the agent never reads it)."""

    @model_validator(mode="after")
    def _distinct(self) -> APOConfig:
        names = {self.prompt_resource, self.examples_resource, self.llm_resource}
        if len(names) != 3:
            raise ValueError("prompt_resource, examples_resource and llm_resource must be different names")
        return self


class DemoSearchConfig(APOConfig):
    """Demonstration search (DSPy's bootstrapped few-shot with random search)."""

    max_demos: int = Field(default=3, ge=1)
    """Bootstrapped worked examples per candidate, at most (DSPy's ``max_bootstrapped_demos``)."""
    max_labeled_demos: int = Field(default=0, ge=0)
    """Labeled worked examples: training tasks rendered from their labels by the agent's ``worked_example(task)``
    (DSPy's ``max_labeled_demos``). The teacher that bootstraps, and the labeled-only candidate, show this many;
    other candidates are filled up with labeled examples to this many examples in all. 0: none (the agent needs no
    ``worked_example``)."""
    num_candidates: int | None = Field(default=None, ge=1)
    """Example subsets scored beyond the starting candidate (default: the Trainer's ``num_iterations``)."""
    bootstrap_tasks: int | None = Field(default=None, ge=1)
    """Training tasks run to collect successful traces (default: all, within the budget)."""
    keep_seed_examples: bool = False
    """Candidates add their examples to the starting ones instead of replacing them."""
    require_tool_call: bool = False
    """Only traces that called a tool become worked examples."""


class ReflectConfig(APOConfig):
    """Reflective prompt evolution (GEPA) with an optimizer model behind an OpenAI-compatible endpoint."""

    optimizer_base_url: str = "http://127.0.0.1:8000/v1"
    """Base URL of the optimizer model (an API, a local vLLM, or the built-in engine): ``…/v1``."""
    optimizer_model: str = "gpt-4o-mini"
    optimizer_api_key_env: str | None = "OPENAI_API_KEY"
    """Environment variable holding the optimizer's API key (read at run time; unset sends none)."""
    optimizer_temperature: float = 1.0
    optimizer_max_tokens: int = 1024
    optimizer_timeout: float = Field(default=120.0, gt=0)
    max_traces: int = Field(default=6, ge=1)
    """Traces (failed first, then successful) shown to the optimizer per reflection."""
    max_proposals: int | None = Field(default=None, ge=1)
    """Reflection steps, each a parent on a minibatch, an edit, the child on the same minibatch (default: the
    Trainer's ``num_iterations``)."""
