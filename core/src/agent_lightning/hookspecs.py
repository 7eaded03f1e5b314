"""Hook specifications: every way a plugin can extend Agent Lightning.

A plugin is a module or object with functions named like the hooks below,
decorated with :data:`hookimpl`. Packages publish plugins through the
``agent_lightning`` entry-point group::

    [project.entry-points.agent_lightning]
    my_backend = "my_package.plugin"

Agent Lightning's own features (the ``memory://`` store, …) are registered
through the same hooks, so built-ins and third-party plugins take one path.

Hooks that take ``register`` let a plugin hand over any number of things
without the core knowing their types in advance. Hooks marked ``firstresult``
stop at the first implementation that returns something other than ``None``;
for the others every implementation is called. Implementations may accept
fewer parameters than the spec (pluggy passes only those they name).
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
    """Return the URL schemes this plugin's store backends accept.

    Used by ``agl plugins`` to list backends, and by
    :func:`~agent_lightning.store.open_store` to list the installed schemes when
    no backend handles a URL.

    :return: scheme names without ``://`` (``["postgresql", "postgres"]``). The results
        of all implementations are merged (deduplicated, sorted).

    Called whenever the list of backends is needed (cheap; must not import the backend's driver).
    """


@hookspec(firstresult=True)
def agl_open_store(url: str, options: Mapping[str, Any]) -> LightningStore | None:
    """Open a store for ``url`` if this plugin handles its scheme, else return ``None``.

    :param url: the store URL as the user gave it (``sqlite:///runs.db``).
    :param options: backend-specific keyword options (pool sizes, timeouts, …); raise
        ``ValueError`` naming any option the backend does not take.
    :return: an open :class:`~agent_lightning.store.base.LightningStore`, or ``None`` to
        let another plugin try.

    Stops at the first non-``None`` result (``firstresult``). Called by
    :func:`~agent_lightning.store.open_store`, e.g. when a ``TrainingContext`` or the CLI
    gets a store URL.
    """


# --------------------------------------------------------------------------- adapters
@hookspec
def agl_register_adapters(register: Callable[[Adapter], None]) -> None:
    """Register framework adapters by calling ``register(adapter)`` for each.

    An adapter instruments a framework (LangChain, AutoGen, the OpenAI SDK)
    when a :class:`~agent_lightning.TrainingContext` opens, so an unchanged
    agent emits spans. See :class:`~agent_lightning.instrumentation.adapter.Adapter`.

    :param register: call it once per adapter object; registering imports nothing heavy,
        the adapter imports its framework in ``instrument()``.
    :return: nothing; the return value is ignored.

    Called once when the adapter registry is first needed (the first context opens, or
    ``agl plugins``), and again after :func:`agent_lightning.plugins.register`/``unregister``.
    """


# --------------------------------------------------------------------------- algorithms
@hookspec
def agl_register_algorithms(register: Callable[[AlgorithmEntry], None]) -> None:
    """Register training algorithms by calling ``register(AlgorithmEntry(...))`` for each.

    Entries name their classes as ``"module:attribute"`` strings so that
    registering imports nothing heavy; ``agent_lightning.algorithms`` imports
    them on first use.

    :param register: call it once per :class:`~agent_lightning.registry.AlgorithmEntry`.
    :return: nothing; the return value is ignored.

    Called once when the algorithm registry is first needed (``agl train``,
    ``get_algorithm``, ``agl plugins``), and again after plugins change.
    """


# --------------------------------------------------------------------------- CLI
@hookspec
def agl_register_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add sub-commands to the ``agl`` CLI (``agl store serve``, ``agl train``, …).

    :param subparsers: the ``agl`` parser's sub-parsers; call ``subparsers.add_parser(...)``.
        Each new parser must ``set_defaults(func=callable)``, where ``callable(args)``
        returns the exit status (``int``).
    :return: nothing; the return value is ignored.

    Called by :func:`agent_lightning.cli.build_parser`, each time the CLI starts.
    """


# --------------------------------------------------------------------------- lifecycle observers
# Observers run inline in the agent's process and must be fast; an exception raised by one
# propagates to the code that triggered it.


@hookspec
def agl_rollout_started(rollout: Rollout, attempt: Attempt) -> None:
    """An attempt of a rollout started running in this process.

    :param rollout: the rollout as the store returned it (status ``running``).
    :param attempt: the attempt this process now runs (status ``running``).
    :return: nothing; the return value is ignored.

    Called once per root :class:`~agent_lightning.TrainingContext`, as soon as the store
    has created (or the runner has claimed) the attempt and its resources are loaded:
    normally before the context's body runs; if the store answered only after
    ``open_timeout``, later, from the tracer's background thread.
    """


@hookspec
def agl_rollout_finished(rollout: Rollout, attempt: Attempt, status: str, error: str | None) -> None:
    """The attempt run in this process ended; ``rollout`` and ``attempt`` are their final state in the store.

    :param rollout: the rollout after the attempt ended: ``succeeded``, ``requeuing`` (a
        failed attempt with retries left), ``failed``, or ``cancelled``.
    :param attempt: the ended attempt, with ``status``, ``ended_at`` and ``error`` set.
    :param status: the attempt's final status: ``succeeded`` or ``failed`` as the context
        completed it, or ``lost``/``timeout``/``failed`` when the store had ended it first
        (lease expired, timed out, rollout cancelled).
    :param error: why the attempt failed (``"ValueError: …"``), else ``None``.
    :return: nothing; the return value is ignored.

    Called once per root context that completes its own attempt (not for a script that
    joined a runner's attempt), after its spans were flushed and the store confirmed the
    completion, from the tracer's background thread. Normally that is before the ``with``
    block exits; if the store was unreachable, whenever the completion finally lands.
    """


@hookspec
def agl_span_started(span: Span) -> None:
    """A span opened in a :class:`~agent_lightning.TrainingContext`.

    :param span: the span as recorded so far (``span.end_time`` is ``None``).
    :return: nothing; the return value is ignored.

    Called inline in the thread that opened the span, for every span (``agl.span``,
    adapters' spans, reward spans, the context's own root span). Only when at least one
    plugin implements this hook is the record built, so it costs nothing otherwise.
    """


@hookspec
def agl_span_ended(span: Span) -> None:
    """A span closed, before it is queued for the store.

    :param span: the finished span (``end_time`` and ``status`` set).
    :return: nothing; the return value is ignored.

    Called inline in the thread that ended the span, for every span of every context.
    Must be fast: it runs on the agent's critical path.
    """


@hookspec
def agl_reward_emitted(reward: Reward, span: Span) -> None:
    """A reward was recorded with :func:`agl.emit_reward <agent_lightning.emit_reward>`.

    :param reward: the validated reward (``reward.total`` is its scalar value;
        ``reward.span_id`` the span it judges, ``None`` for the whole attempt).
    :param span: the ``reward`` span that records it.
    :return: nothing; the return value is ignored.

    Called inline, right after ``agl_span_ended`` for the reward span.
    """
