"""Hook specifications: every way a plugin can extend Agent Lightning.

A plugin is a module or object with functions named like the hooks below,
decorated with :data:`hookimpl`. Packages publish plugins through the
``agent_lightning`` entry-point group::

    [project.entry-points.agent_lightning]
    my_backend = "my_package.plugin"

Agent Lightning's own features (the ``memory://`` store, …) are registered
through the same hooks, so built-ins and third-party plugins take one path.

Hooks that take ``register`` let a plugin hand over any number of things
without the core knowing their types in advance. Hooks marked *first result*
stop at the first implementation that returns something other than ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse

    from agent_lightning.instrumentation.adapter import Adapter
    from agent_lightning.registry import AlgorithmEntry
    from agent_lightning.store.base import LightningStore
    from agent_lightning.types import Attempt, Reward, Rollout, Span

PROJECT = "agent_lightning"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------- stores
@hookspec
def agl_store_schemes() -> list[str]:  # type: ignore[empty-body]
    """The URL schemes this plugin's store backends accept (``["postgresql", "postgres"]``).

    Used to list backends and to tell a user which package to install.
    """


@hookspec(firstresult=True)
def agl_open_store(url: str, options: Mapping[str, Any]) -> LightningStore | None:
    """Open a store for ``url`` if this plugin handles its scheme, else return ``None``.

    :param url: the store URL as the user gave it (``sqlite:///runs.db``).
    :param options: backend-specific keyword options (pool sizes, timeouts, …).
    :return: an open :class:`~agent_lightning.store.base.LightningStore`; the first
        non-``None`` result wins.
    """


# --------------------------------------------------------------------------- adapters
@hookspec
def agl_register_adapters(register: Callable[[Adapter], None]) -> None:
    """Register framework adapters by calling ``register(adapter)`` for each.

    An adapter instruments a framework (LangChain, AutoGen, the OpenAI SDK)
    when a :class:`~agent_lightning.TrainingContext` opens, so an unchanged
    agent emits spans. See :class:`~agent_lightning.instrumentation.adapter.Adapter`.
    """


# --------------------------------------------------------------------------- algorithms
@hookspec
def agl_register_algorithms(register: Callable[[AlgorithmEntry], None]) -> None:
    """Register training algorithms by calling ``register(AlgorithmEntry(...))`` for each.

    Entries name their classes as ``"module:attribute"`` strings so that
    registering imports nothing heavy; ``agent_lightning.algorithms`` imports
    them on first use.
    """


# --------------------------------------------------------------------------- CLI
@hookspec
def agl_register_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add sub-commands to the ``agl`` CLI (``agl store serve``, ``agl train``, …).

    Each parser must set ``func=callable(args) -> int`` with ``set_defaults``.
    """


# --------------------------------------------------------------------------- lifecycle observers
@hookspec
def agl_rollout_started(rollout: Rollout, attempt: Attempt) -> None:
    """Called in the agent's process when an attempt of a rollout starts running there."""


@hookspec
def agl_rollout_finished(rollout: Rollout, attempt: Attempt, status: str, error: str | None) -> None:
    """Called in the agent's process when its attempt ends (``status`` is ``succeeded`` or ``failed``)."""


@hookspec
def agl_span_started(span: Span) -> None:
    """Called when a span opens (``span.end_time`` is ``None``). Must be fast: it runs inline."""


@hookspec
def agl_span_ended(span: Span) -> None:
    """Called when a span closes, before it is queued for the store. Must be fast."""


@hookspec
def agl_reward_emitted(reward: Reward, span: Span) -> None:
    """Called when ``agl.emit_reward`` records a reward; ``span`` is the reward span."""
