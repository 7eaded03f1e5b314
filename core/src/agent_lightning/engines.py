"""Inference engines: what serves a policy behind the OpenAI API (with token ids) while it trains.

Plugins register an :class:`EngineEntry` through ``agl_register_engines``; :func:`create_engine` makes one by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from agent_lightning.errors import PluginError
from agent_lightning.registry import import_object


@runtime_checkable
class InferenceEngine(Protocol):
    """A running policy: ``url`` is an OpenAI ``base_url`` whose answers carry ``prompt_token_ids``/``token_ids``
    (when asked with ``return_token_ids``) and the ``x-agl-model-version`` header of the weights that generated them.
    """

    @property
    def url(self) -> str: ...

    @property
    def version(self) -> str: ...

    def start(self, timeout: float | None = None) -> InferenceEngine:
        """Load the model and serve it; returns once it accepts requests."""

    def update_weights(self, source: Any, version: str, *, adapter: bool = False) -> None:
        """Serve ``source`` as ``version`` without a restart: a state dict, a checkpoint folder, or (``adapter``) a
        LoRA adapter folder over the base model. Requests already generating finish on the old weights."""

    def stats(self) -> dict[str, Any]:
        """Counters (requests, tokens, weight updates, …)."""

    def stop(self) -> None:
        """Stop serving and free the engine's resources."""


@dataclass(frozen=True)
class EngineEntry:
    """An engine a plugin offers.

    :param name: ``engine=`` / ``--engine`` value (``"transformers"``, ``"vllm"``).
    :param factory: ``"module:callable"``; ``callable(model_folder, **options)`` returns an unstarted
        :class:`InferenceEngine`, raising ``ValueError`` on options it does not take. Trainers pass
        ``served_name``, ``max_batch_size``, ``default_max_tokens`` and ``dtype`` (the learner's weights').
    :param features: what it supports: ``"full"`` (state dicts), ``"lora"`` (adapters), ``"colocate"``.
    """

    name: str
    factory: str
    package: str | None = None
    features: frozenset[str] = frozenset({"full"})
    description: str = ""


KNOWN_PACKAGES = {"transformers": "agent-lightning-rl", "vllm": "agent-lightning-vllm"}


def engine_entries() -> dict[str, EngineEntry]:
    """Every registered engine by name."""
    from agent_lightning import plugins

    return plugins.collect("agl_register_engines", EngineEntry)


def engine_entry(name: str) -> EngineEntry:
    """The entry of engine ``name``; the error names the package to install when none registered it."""
    entries = engine_entries()
    if name in entries:
        return entries[name]
    package = KNOWN_PACKAGES.get(name, f"agent-lightning-{name}")
    raise PluginError(
        f"inference engine {name!r} is not installed (installed: {', '.join(sorted(entries)) or 'none'}); "
        f"install it with `pip install {package}`"
    )


def create_engine(name: str, model: str, **options: Any) -> InferenceEngine:
    """An unstarted engine ``name`` serving ``model`` (a folder or a name the engine understands)."""
    factory: Callable[..., InferenceEngine] = import_object(engine_entry(name).factory)
    return factory(model, **options)
