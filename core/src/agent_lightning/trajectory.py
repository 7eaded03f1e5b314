"""Trajectory building: turn a rollout's span tree into an episode of training samples.

Which spans matter
    LLM-call spans (kind ``llm``, one per call) that carry the token ids the
    engine sampled (``agl.llm.prompt_token_ids`` / ``agl.llm.completion_token_ids``,
    written by the proxy, which records each call it answers with what the
    adapter knew about it joined on); a client-side LLM span
    without ids is represented by the proxy's record of the same call when the
    record is its child or both carry the same ``gen_ai.response.id`` (spans
    ingested over OTLP).

Where rewards go
    A reward span judges its target span X (``agl.reward.span_id``). It credits
    the LLM calls inside X (descendants, or the call itself) and the calls the
    span tree places nowhere else (the proxy's records of calls made by a client
    no adapter covers: root spans, or children of the attempt's root) made while
    X was open (call start >= X start, call end <= X end). A reward with no
    target, or targeting the root/agent span, credits every call of the attempt.

How multi-step rewards propagate
    Calls are ordered in time. A reward is "received" after the last call it
    credits that started before the reward was emitted; each call's return is
    the sum of the rewards it is credited with that arrive at or after it,
    discounted by ``discount ** (turns in between)`` (reward-to-go). With the
    default ``discount=1`` the final reward propagates unchanged to every call.

Selective optimization
    ``agents`` / ``resources`` keep only the calls made by those agents (the
    nearest ``gen_ai.agent.name`` up the span tree) or using those resources
    (``agl.resources.names`` up the tree).

Aggregation
    ``"transition"`` yields one sample per LLM call. ``"trajectory"`` merges
    consecutive calls into one sequence when each prompt starts exactly with
    the previous prompt + completion; the tokens in between (tool output,
    environment text) get loss mask 0. ``max_turns`` bounds the calls merged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agent_lightning import semconv
from agent_lightning.errors import NoTrainingData
from agent_lightning.types import Episode, Rollout, Sample, Span

logger = logging.getLogger(__name__)

Aggregation = Literal["transition", "trajectory"]

BYPASSED_PROXY_FIX = (
    "the call did not go through the proxy, so it has no token ids; point base_url at ctx.llm().endpoint "
    "(or the URL the runner hands the agent)."
)
UPSTREAM_NO_IDS_FIX = (
    "the upstream returned no token ids, so the proxy could not record them; for vLLM pass return_token_ids "
    "(vLLM >= 0.10.2; the local policy server always returns them)."
)
NO_LLM_SPANS_FIX = (
    "the rollout has no LLM-call spans at all. The agent's model calls did not go through the proxy, or the "
    "framework adapter is not installed (pip install agent-lightning-langchain / -autogen / -openai)."
)
NO_REWARD_FIX = "the rollout emitted no reward; call agl.emit_reward(value) before the TrainingContext closes."
EMPTY_COMPLETION_FIX = (
    "the model returned no tokens; check the max_tokens and stop sequences of the agent's LLM calls, and the "
    "upstream's logs."
)
PROMPT_TOO_LONG_FIX = (
    "raise max_prompt_tokens (and the model's context budget), or keep the agent's prompts shorter "
    "(fewer turns, shorter tool outputs)."
)


@dataclass(frozen=True)
class _Call:
    span: Span
    prompt: list[int]
    completion: list[int]
    logprobs: list[float] | None
    agent: str | None
    resources: list[str]


def group_key(rollout: Rollout) -> str:
    """Rollouts of the same task input share a group (GRPO's comparison group)."""
    explicit = rollout.metadata.get("group_id")
    if isinstance(explicit, str) and explicit:
        return explicit
    payload = json.dumps([rollout.task_type, rollout.input], sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    return None


def _float_list(value: Any) -> list[float] | None:
    if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    return None


def _lineage(span: Span, by_id: dict[str, Span]) -> Iterator[Span]:
    """``span``, its parent, its parent's parent, … (stopping at a cycle)."""
    current: Span | None = span
    seen: set[str] = set()
    while current is not None and current.span_id not in seen:
        seen.add(current.span_id)
        yield current
        current = by_id.get(current.parent_id) if current.parent_id else None


def _ancestor_value(span: Span, by_id: dict[str, Span], key: str) -> Any:
    values = (s.attributes.get(key) for s in _lineage(span, by_id))
    return next((v for v in values if v not in (None, "", [])), None)


def _is_descendant(span: Span, ancestor_id: str, by_id: dict[str, Span]) -> bool:
    return any(s.span_id == ancestor_id for s in _lineage(span, by_id))


def _during(call: Span, target: Span, unplaced: set[str]) -> bool:
    """Whether ``call``, placed nowhere in the span tree, was made while ``target`` was open."""
    if call.span_id not in unplaced or target.end_time is None or call.end_time is None:
        return False
    return target.start_time <= call.start_time and call.end_time <= target.end_time


def _has_record(span: Span, parents: set[str | None], responses: set[Any]) -> bool:
    """Whether a client-side LLM span without token ids has the proxy's record of the same call."""
    if span.span_id in parents:
        return True
    response_id = span.attributes.get(semconv.GEN_AI_RESPONSE_ID)
    return isinstance(response_id, str) and response_id in responses


def _latest_attempt(spans: Sequence[Span]) -> list[Span]:
    if not spans:
        return []
    latest = spans[-1].attempt_id  # stores order spans by attempt, then sequence
    return [s for s in spans if s.attempt_id == latest]


def build_episode(
    rollout: Rollout,
    spans: Sequence[Span],
    *,
    aggregation: Aggregation = "transition",
    discount: float = 1.0,
    agents: Iterable[str] | None = None,
    resources: Iterable[str] | None = None,
    max_prompt_tokens: int | None = None,
    max_turns: int | None = None,
) -> Episode:
    """Build the episode of one rollout attempt from its spans (the latest attempt if several).

    Problems with the data (LLM calls without token ids, empty completions, prompts over
    ``max_prompt_tokens``, no reward, …) are listed in ``episode.warnings``, each with its
    fix, and logged as one warning per episode.
    """
    if not 0.0 < discount <= 1.0:
        raise ValueError(f"discount must be in (0, 1], got {discount}")
    if max_turns is not None and max_turns < 1:
        raise ValueError(f"max_turns must be at least 1, got {max_turns}")
    spans = _latest_attempt(list(spans))
    attempt_id = spans[0].attempt_id if spans else ""
    by_id = {s.span_id: s for s in spans}
    warnings: list[str] = []

    llm_spans = [s for s in spans if s.kind == "llm"]
    with_ids = {s.span_id for s in llm_spans if _int_list(s.attributes.get(semconv.COMPLETION_TOKEN_IDS)) is not None}
    parents_of_records = {by_id[s].parent_id for s in with_ids if by_id[s].parent_id}
    recorded_responses = {by_id[s].attributes.get(semconv.GEN_AI_RESPONSE_ID) for s in with_ids} - {None}
    calls: list[_Call] = []
    bypassed = no_ids = failed = empty = too_long = 0
    for span in sorted(llm_spans, key=lambda s: (s.start_time, s.sequence_id)):
        if _int_list(span.attributes.get(semconv.COMPLETION_TOKEN_IDS)) is None:
            if _has_record(span, parents_of_records, recorded_responses):
                continue
            if span.status.code == "error":
                failed += 1
            elif span.attributes.get(semconv.RECORDED_BY) == "proxy":
                no_ids += 1
            else:
                bypassed += 1
            continue
        prompt = _int_list(span.attributes.get(semconv.PROMPT_TOKEN_IDS)) or []
        completion = _int_list(span.attributes.get(semconv.COMPLETION_TOKEN_IDS)) or []
        if not completion:
            empty += 1
            continue
        if max_prompt_tokens is not None and len(prompt) > max_prompt_tokens:
            too_long += 1
            continue
        logprobs = _float_list(span.attributes.get(semconv.COMPLETION_LOGPROBS))
        if logprobs is not None and len(logprobs) != len(completion):
            logprobs = None
        agent = _ancestor_value(span, by_id, semconv.AGENT_NAME)
        names = _ancestor_value(span, by_id, semconv.RESOURCE_NAMES)
        calls.append(
            _Call(
                span,
                prompt,
                completion,
                logprobs,
                agent if isinstance(agent, str) else None,
                [n for n in names if isinstance(n, str)] if isinstance(names, list) else [],
            )
        )
    if not llm_spans:
        warnings.append(NO_LLM_SPANS_FIX)
    for count, problem in (
        (bypassed, f"without token ids were skipped: {BYPASSED_PROXY_FIX}"),
        (no_ids, f"without token ids were skipped: {UPSTREAM_NO_IDS_FIX}"),
        (failed, "failed and were skipped (their spans have the error)."),
        (empty, f"with an empty completion were skipped: {EMPTY_COMPLETION_FIX}"),
        (too_long, f"with prompts over max_prompt_tokens={max_prompt_tokens} were skipped: {PROMPT_TOO_LONG_FIX}"),
    ):
        if count:
            warnings.append(f"{count} LLM call(s) {problem}")

    # Rewards: credit, in time order, the calls inside each reward's target or unplaced and made while it was open.
    reward_spans = sorted(
        (s for s in spans if s.kind == "reward" and s.reward is not None), key=lambda s: s.sequence_id
    )
    returns = [0.0] * len(calls)
    step_rewards: dict[str, float] = {}
    total = 0.0
    root_ids = {s.span_id for s in spans if s.parent_id is None or s.parent_id not in by_id}
    call_ids = {c.span.span_id for c in calls}
    unplaced = {c.span.span_id for c in calls if c.span.span_id in root_ids or c.span.parent_id in root_ids}
    for reward_span in reward_spans:
        value = reward_span.reward
        assert value is not None
        total += value
        target = reward_span.attributes.get(semconv.REWARD_TARGET_SPAN_ID)
        target = target if isinstance(target, str) and target in by_id and target not in root_ids else None
        if target in call_ids:
            step_rewards[target] = step_rewards.get(target, 0.0) + value
        credited = [
            i
            for i, call in enumerate(calls)
            if (
                target is None
                or _is_descendant(call.span, target, by_id)
                or _during(call.span, by_id[target], unplaced)
            )
            and call.span.start_time <= reward_span.start_time
        ]
        if not credited:
            continue
        arrival = credited[-1]
        for i in credited:
            returns[i] += value * discount ** (arrival - i)
    reward = total if reward_spans else None
    if reward is None:
        warnings.append(NO_REWARD_FIX)

    selected_agents = None if agents is None else set(agents)
    selected_resources = None if resources is None else set(resources)
    kept = [
        (i, c)
        for i, c in enumerate(calls)
        if (selected_agents is None or c.agent in selected_agents)
        and (selected_resources is None or selected_resources.intersection(c.resources))
    ]
    if calls and not kept:
        warnings.append(
            f"none of the {len(calls)} LLM call(s) belong to agents {sorted(selected_agents or [])} "
            f"or resources {sorted(selected_resources or [])}; found agents "
            f"{sorted({c.agent or '<unnamed>' for c in calls})}"
        )

    samples: list[Sample] = []
    if reward is not None:
        groups = _merge(kept, max_turns) if aggregation == "trajectory" else [[k] for k in kept]
        samples = [_sample(rollout, attempt_id, group, returns, group_key(rollout)) for group in groups]
    if warnings:  # one record per episode, every problem with its fix
        logger.warning(
            "rollout %s (attempt %s): %d of %d LLM call(s) usable for training; %s",
            rollout.rollout_id,
            attempt_id or "-",
            len(calls),
            len(llm_spans),
            " | ".join(warnings),
        )
    return Episode(
        rollout_id=rollout.rollout_id,
        attempt_id=attempt_id,
        task_type=rollout.task_type,
        input=rollout.input,
        reward=reward,
        samples=samples,
        step_rewards=step_rewards,
        warnings=warnings,
    )


def _merge(calls: list[tuple[int, _Call]], max_turns: int | None) -> list[list[tuple[int, _Call]]]:
    groups: list[list[tuple[int, _Call]]] = []
    sequence: list[int] = []  # the current group's tokens so far: first prompt + everything after it
    for item in calls:
        call = item[1]
        if (
            groups
            and (max_turns is None or len(groups[-1]) < max_turns)
            and call.agent == groups[-1][-1][1].agent
            and call.prompt[: len(sequence)] == sequence
        ):
            groups[-1].append(item)
        else:
            groups.append([item])
        sequence = call.prompt + call.completion
    return groups


def _sample(
    rollout: Rollout, attempt_id: str, group: list[tuple[int, _Call]], returns: list[float], group_id: str
) -> Sample:
    first_index, first = group[0]
    completion: list[int] = list(first.completion)
    mask = [1] * len(first.completion)
    logprobs: list[float] | None = list(first.logprobs) if first.logprobs is not None else None
    for _, call in group[1:]:
        so_far = len(first.prompt) + len(completion)
        filler = call.prompt[so_far:]
        completion += filler + call.completion
        mask += [0] * len(filler) + [1] * len(call.completion)
        if logprobs is not None and call.logprobs is not None:
            logprobs += [0.0] * len(filler) + call.logprobs
        else:
            logprobs = None
    resources_id = first.span.attributes.get(semconv.RESOURCES_ID)
    return Sample(
        rollout_id=rollout.rollout_id,
        attempt_id=attempt_id,
        span_ids=[c.span.span_id for _, c in group],
        prompt_token_ids=first.prompt,
        completion_token_ids=completion,
        completion_logprobs=logprobs,
        loss_mask=mask,
        reward=returns[first_index],
        task_type=rollout.task_type,
        group_id=group_id,
        turn_index=first_index,
        agent_name=first.agent,
        resource_names=first.resources,
        resources_id=resources_id if isinstance(resources_id, str) else rollout.resources_id,
    )


def ensure_training_data(episodes: Sequence[Episode]) -> list[Sample]:
    """All samples of ``episodes``; raises :class:`NoTrainingData` with the fix when there are none.

    Also logs a warning when part of the data was unusable.
    """
    samples = [s for e in episodes for s in e.samples]
    problems: dict[str, int] = {}
    for episode in episodes:
        for warning in episode.warnings:
            problems[warning] = problems.get(warning, 0) + 1
    if not samples:
        detail = "; ".join(f"{n} rollout(s): {w}" for w, n in problems.items()) or "no rollouts were given"
        raise NoTrainingData(f"{len(episodes)} rollout(s) produced no training samples. {detail}")
    for warning, count in problems.items():
        logger.warning("%d of %d rollout(s): %s", count, len(episodes), warning)
    return samples
