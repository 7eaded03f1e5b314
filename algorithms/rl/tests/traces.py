"""Synthetic traces: rollouts with LLM-call spans carrying token ids, and reward spans, written to a real store."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from agent_lightning import semconv
from agent_lightning.store.sync import SyncStore
from agent_lightning.types import Rollout, RolloutRequest, Span, SpanKind, new_span_id, new_trace_id

_clock = itertools.count(1)


def llm_span(
    rollout_id: str,
    attempt_id: str,
    trace_id: str,
    parent_id: str | None,
    prompt: Sequence[int],
    completion: Sequence[int],
    *,
    seq: int,
    agent: str | None = None,
    logprobs: Sequence[float] | None = None,
    output: Sequence[dict[str, Any]] | None = None,
) -> Span:
    attributes: dict[str, Any] = {
        semconv.PROMPT_TOKEN_IDS: list(prompt),
        semconv.COMPLETION_TOKEN_IDS: list(completion),
    }
    if output is not None:
        attributes[semconv.GEN_AI_OUTPUT_MESSAGES] = list(output)
    if logprobs is not None:
        attributes[semconv.COMPLETION_LOGPROBS] = list(logprobs)
    if agent is not None:
        attributes[semconv.AGENT_NAME] = agent
    return _span(rollout_id, attempt_id, trace_id, parent_id, seq, "llm", "chat policy", attributes, 0.5)


def reward_span(rollout_id: str, attempt_id: str, trace_id: str, parent_id: str | None, value: float, seq: int) -> Span:
    return _span(rollout_id, attempt_id, trace_id, parent_id, seq, "reward", "reward", {semconv.REWARD_VALUE: value})


def _span(
    rollout_id: str,
    attempt_id: str,
    trace_id: str,
    parent_id: str | None,
    seq: int,
    kind: SpanKind,
    name: str,
    attributes: dict[str, Any],
    duration: float = 0.0,
) -> Span:
    """A span starting at the next tick of the test clock."""
    t = float(next(_clock))
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=seq,
        trace_id=trace_id,
        span_id=new_span_id(),
        parent_id=parent_id,
        name=name,
        kind=kind,
        attributes=attributes,
        start_time=t,
        end_time=t + duration,
    )


def add_rollout(
    sync: SyncStore,
    task: object,
    calls: Sequence[tuple[Sequence[int], Sequence[int]]],
    reward: float,
    *,
    agents: Sequence[str | None] | None = None,
    resources_id: str | None = None,
    outputs: Sequence[Sequence[dict[str, Any]]] | None = None,
) -> Rollout:
    """A finished rollout whose agent made ``calls`` (prompt ids, completion ids; ``outputs[i]``: the output messages
    call ``i`` recorded) and got ``reward``."""
    attempted = sync.start_rollout(RolloutRequest(input=task, resources_id=resources_id))
    rid, aid = attempted.rollout_id, attempted.attempt_id
    trace = new_trace_id()
    root = Span(
        rollout_id=rid, attempt_id=aid, sequence_id=1, trace_id=trace, span_id=new_span_id(), name="agent", kind="agent"
    )
    spans = [root]
    for i, (prompt, completion) in enumerate(calls):
        agent = agents[i] if agents is not None else None
        output = outputs[i] if outputs is not None else None
        spans.append(llm_span(rid, aid, trace, root.span_id, prompt, completion, seq=2 + i, agent=agent, output=output))
    spans.append(reward_span(rid, aid, trace, root.span_id, reward, seq=2 + len(calls)))
    sync.add_spans(spans)
    return sync.complete_attempt(rid, aid, "succeeded")  # type: ignore[no-any-return]
