"""Hook specifications: every way a plugin can extend Agent Lightning.

A plugin is a module or object with functions named like the hooks below,
decorated with :data:`hookimpl`. Packages publish plugins through the
``agent_lightning`` entry-point group::

    [project.entry-points.agent_lightning]
    my_backend = "my_package.plugin"

Agent Lightning's own features (the ``memory://`` store, …) are registered
through the same hooks, so built-ins and third-party plugins take one path;
every hook below is implemented by one of the project's own packages.

Hooks that take ``register`` let a plugin hand over any number of things
without the core knowing their types in advance (as ``llm``'s
``register_models``); every implementation of a hook is called.
Implementations may accept fewer parameters than the spec (pluggy passes only
those they name).

Every ``agl_*`` function of a plugin must match a spec below: a misspelled
one (``agl_register_adaptor``) makes loading fail with a
:class:`~agent_lightning.errors.PluginError` naming the plugin and the function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import argparse

    from agent_lightning.engines import EngineEntry
    from agent_lightning.instrumentation.adapter import Adapter
    from agent_lightning.registry import AlgorithmEntry
    from agent_lightning.store import RegisterStore

PROJECT = "agent_lightning"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------- stores
@hookspec
def agl_register_stores(register: RegisterStore) -> None:
    """Register store backends by calling ``register(schemes=[...], opener=callable)`` for each.

    :func:`~agent_lightning.store.open_store` dispatches a URL to the backend registered for its
    scheme (the part before ``://``, compared case-insensitively). Two plugins registering the
    same scheme is a :class:`~agent_lightning.errors.PluginError` naming both.

    :param register: ``register(schemes, opener)``; ``schemes`` are names without ``://``
        (``["postgresql", "postgres"]``), ``opener`` a
        :class:`~agent_lightning.store.StoreOpener`: ``opener(url, options, create=...)`` returns an
        open store, raising ``ValueError`` naming any option it does not take. With
        ``create=False`` it must not create a store that does not exist yet (a read-only command
        opening a mistyped path): it raises :class:`~agent_lightning.errors.NotFound` or
        ``FileNotFoundError`` instead. Registering must not import the backend's driver.
    :return: nothing; the return value is ignored.

    Called once when a store URL is first opened or the schemes are listed (``agl plugins``),
    and again after :func:`agent_lightning.plugins.register`/``unregister``.
    """


# --------------------------------------------------------------------------- adapters
@hookspec
def agl_register_adapters(register: Callable[[Adapter], None]) -> None:
    """Register framework adapters by calling ``register(adapter)`` for each.

    An adapter instruments a framework (LangChain, AutoGen, the OpenAI SDK)
    when a :class:`~agent_lightning.TrainingContext` opens, so an unchanged
    agent emits spans. See :class:`~agent_lightning.instrumentation.adapter.Adapter`.

    :param register: call it once per :class:`~agent_lightning.instrumentation.adapter.Adapter`
        instance; registering imports nothing heavy, the adapter imports its framework in ``_instrument()``.
        A non-``Adapter`` object is a :class:`~agent_lightning.errors.PluginError`.
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


# --------------------------------------------------------------------------- inference engines
@hookspec
def agl_register_engines(register: Callable[[EngineEntry], None]) -> None:
    """Register inference engines by calling ``register(EngineEntry(...))`` for each.

    An engine serves the policy being trained behind the OpenAI API with token ids and takes new weights without a
    restart (see :class:`~agent_lightning.engines.InferenceEngine`). Registering imports nothing heavy.

    :param register: call it once per :class:`~agent_lightning.engines.EngineEntry`.
    :return: nothing; the return value is ignored.

    Called each time :func:`agent_lightning.engines.engine_entries` runs (``engine=``, ``agl plugins``).
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
