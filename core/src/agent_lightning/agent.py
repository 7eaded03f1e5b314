"""Agents the runner can execute: plain functions, ``LitAgent`` subclasses, or scripts.

* A function ``agent(task)`` or ``agent(task, ctx)`` (sync or async). If it
  returns a number or a dict of numbers and emitted no reward itself, that is
  emitted as the rollout's reward.
* A :class:`LitAgent` subclass implementing ``rollout`` (or ``arollout``).
* A :class:`ScriptAgent`: any program, run once per rollout with the rollout's
  store URL, ids, task input and OpenAI base URL in its environment
  (``OPENAI_BASE_URL`` makes an unchanged OpenAI-SDK script use the proxy).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from agent_lightning.instrumentation.context import TrainingContext

AgentResult = Union[float, int, dict[str, float], None]


class LitAgent:
    """Base class for agents with set-up state. Override :meth:`rollout` or :meth:`arollout`."""

    name: str | None = None
    """Tags the agent's spans (``gen_ai.agent.name``) for selective optimization."""

    def rollout(self, task: Any, ctx: TrainingContext) -> AgentResult:
        """Solve one task; return its reward (or emit rewards with ``agl.emit_reward``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement rollout() or arollout()")

    async def arollout(self, task: Any, ctx: TrainingContext) -> AgentResult:
        """Async version; the default runs :meth:`rollout` in a thread."""
        return await asyncio.to_thread(self.rollout, task, ctx)


class ScriptAgent(LitAgent):
    """Run ``command`` (a list of args, or a script path run with this Python) once per rollout.

    The script may open ``agl.TrainingContext()``: it joins the runner's attempt
    through ``AGL_ROLLOUT_ID``/``AGL_ATTEMPT_ID`` (and ``AGL_ATTEMPT_TOKEN``, the attempt's token,
    when the store handed one out). A non-zero exit fails the attempt.
    """

    def __init__(self, command: str | Sequence[str], *, timeout: float | None = None, name: str | None = None) -> None:
        self.command = [sys.executable, command] if isinstance(command, str) else list(command)
        self.timeout = timeout
        self.name = name

    def rollout(self, task: Any, ctx: TrainingContext) -> AgentResult:
        env = dict(os.environ)
        env.update(
            {
                "AGL_ROLLOUT_ID": ctx.rollout_id,
                "AGL_ATTEMPT_ID": ctx.attempt_id,
                "AGL_PARENT_SPAN_ID": ctx.root_span_id or "",
                "AGL_TASK_INPUT": json.dumps(task),
                "AGL_STORE_URL": ctx.store.url,
            }
        )
        token = ctx.attempt_token()
        if token:
            env["AGL_ATTEMPT_TOKEN"] = token
        else:
            env.pop("AGL_ATTEMPT_TOKEN", None)
        try:
            env["OPENAI_BASE_URL"] = ctx.llm().endpoint
        except LookupError:
            pass
        completed = subprocess.run(self.command, env=env, timeout=self.timeout, capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(
                f"agent script {self.command} exited with {completed.returncode}: {completed.stderr[-2000:]}"
            )
        return None


AgentLike = Union[LitAgent, Callable[..., AgentResult | Awaitable[AgentResult]]]


def agent_name(agent: AgentLike) -> str | None:
    name = getattr(agent, "name", None)
    return name if isinstance(name, str) else None


async def run_agent(agent: AgentLike, task: Any, ctx: TrainingContext) -> AgentResult:
    """Call any supported agent form on ``task``."""
    if isinstance(agent, LitAgent):
        return await agent.arollout(task, ctx)
    if not callable(agent):
        raise TypeError(f"an agent must be a function or a LitAgent, got {type(agent).__name__}")
    positional = [
        p
        for p in inspect.signature(agent).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    args = (task, ctx) if len(positional) >= 2 else (task,)
    if inspect.iscoroutinefunction(agent):
        result: AgentResult = await agent(*args)
        return result
    outcome: Any = await asyncio.to_thread(agent, *args)  # in a copy of this context, so spans keep their parent
    if inspect.isawaitable(outcome):
        outcome = await outcome
    return outcome  # type: ignore[no-any-return]


def as_agent(agent: AgentLike | type[LitAgent] | str) -> AgentLike:
    """Any way of naming an agent, as an agent: a ``LitAgent`` class is instantiated (with no arguments), a
    ``"module:attribute"`` or ``.py`` reference is loaded (:func:`load_agent`); functions and instances pass through."""
    if isinstance(agent, str):
        return load_agent(agent)
    if isinstance(agent, type):
        if not issubclass(agent, LitAgent):
            raise TypeError(
                f"{agent.__name__} is a class, not an agent: pass an instance of it, a function, or a LitAgent subclass"
            )
        try:
            return agent()
        except TypeError as exc:
            raise TypeError(
                f"could not create {agent.__name__}() to use as the agent ({exc}); pass an instance instead"
            ) from exc
    if not isinstance(agent, LitAgent) and not callable(agent):
        raise TypeError(f"an agent must be a function or a LitAgent, got {type(agent).__name__}")
    return agent


def load_agent(reference: str) -> AgentLike:
    """Load ``"module:attribute"`` (a function, LitAgent instance or class) or a ``.py`` script path."""
    if reference.endswith(".py") and ":" not in reference:
        return ScriptAgent(reference)
    from agent_lightning.registry import import_object

    obj = import_object(reference)
    if isinstance(obj, str):
        raise TypeError(f"{reference} is a str, not an agent function or LitAgent")
    return as_agent(obj)
