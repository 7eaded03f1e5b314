"""Trajectory building on synthetic span trees."""

from __future__ import annotations

import itertools

import pytest
from agent_lightning import semconv
from agent_lightning.errors import NoTrainingData
from agent_lightning.trajectory import (
    BYPASSED_PROXY_FIX,
    EMPTY_COMPLETION_FIX,
    PROMPT_TOO_LONG_FIX,
    UPSTREAM_NO_IDS_FIX,
    build_episode,
    ensure_training_data,
)
from agent_lightning.types import Rollout, Span

TRACE = "ab" * 16
_ids = itertools.count(1)


def sid() -> str:
    return f"{next(_ids):016x}"


class Trace:
    """Builds the spans of one attempt in time order."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.clock = 100.0
        self.root = self.add("agent", "rollout", None)

    def add(self, kind: str, name: str, parent: str | None, **attributes: object) -> str:
        self.clock += 1
        span = Span(
            rollout_id="ro-1",
            attempt_id="at-1",
            sequence_id=len(self.spans) + 1,
            trace_id=TRACE,
            span_id=sid(),
            parent_id=parent,
            name=name,
            kind=kind,  # type: ignore[arg-type]
            attributes=dict(attributes),
            start_time=self.clock,
            end_time=self.clock + 0.5,
        )
        self.spans.append(span)
        return span.span_id

    def llm(self, parent: str | None, prompt: list[int], completion: list[int], **attributes: object) -> str:
        return self.add(
            "llm",
            "chat policy",
            parent or self.root,
            **{
                semconv.PROMPT_TOKEN_IDS: prompt,
                semconv.COMPLETION_TOKEN_IDS: completion,
                semconv.COMPLETION_LOGPROBS: [-0.5] * len(completion),
                **attributes,
            },
        )

    def reward(self, value: float, target: str | None = None) -> str:
        attributes: dict[str, object] = {semconv.REWARD_VALUE: value}
        if target is not None:
            attributes[semconv.REWARD_TARGET_SPAN_ID] = target
        return self.add("reward", "reward", target or self.root, **attributes)


ROLLOUT = Rollout(rollout_id="ro-1", task_type="math", input={"q": "1+1"}, status="succeeded")


def test_final_reward_propagates_to_every_call() -> None:
    t = Trace()
    t.llm(None, [1, 2], [3, 4])
    t.add("tool", "calculator", t.root)
    t.llm(None, [1, 2, 3, 4, 9, 9], [5])
    t.reward(1.0)
    episode = build_episode(ROLLOUT, t.spans)
    assert episode.reward == 1.0
    assert [s.reward for s in episode.samples] == [1.0, 1.0]
    assert episode.samples[0].prompt_token_ids == [1, 2] and episode.samples[0].completion_token_ids == [3, 4]
    assert episode.samples[0].loss_mask == [1, 1]
    assert episode.samples[0].group_id == episode.samples[1].group_id
    assert not episode.warnings


def test_discount_gives_reward_to_go() -> None:
    t = Trace()
    for i in range(3):
        t.llm(None, [i], [i + 10])
    t.reward(1.0)
    episode = build_episode(ROLLOUT, t.spans, discount=0.5)
    assert [s.reward for s in episode.samples] == [0.25, 0.5, 1.0]


def test_step_reward_credits_only_calls_inside_its_target() -> None:
    t = Trace()
    step1 = t.add("agent", "step1", t.root)
    t.llm(step1, [1], [2])
    t.reward(0.3, step1)
    step2 = t.add("agent", "step2", t.root)
    call = t.llm(step2, [3], [4])
    t.reward(0.7, call)
    episode = build_episode(ROLLOUT, t.spans)
    assert [s.reward for s in episode.samples] == [0.3, 0.7]
    assert episode.reward == pytest.approx(1.0)
    assert episode.step_rewards == {call: 0.7}


def test_trajectory_aggregation_merges_prefix_turns_and_masks_tool_tokens() -> None:
    t = Trace()
    t.llm(None, [1, 2], [3, 4])
    t.llm(None, [1, 2, 3, 4, 50, 51], [5, 6])  # 50, 51: tool output spliced in
    t.llm(None, [1, 2, 3, 4, 50, 51, 5, 6, 60], [7])
    t.llm(None, [99], [8])  # not a prefix: a new sequence
    t.reward(1.0)
    episode = build_episode(ROLLOUT, t.spans, aggregation="trajectory")
    merged, separate = episode.samples
    assert merged.prompt_token_ids == [1, 2]
    assert merged.completion_token_ids == [3, 4, 50, 51, 5, 6, 60, 7]
    assert merged.loss_mask == [1, 1, 0, 0, 1, 1, 0, 1]
    assert merged.completion_logprobs == [-0.5, -0.5, 0.0, 0.0, -0.5, -0.5, 0.0, -0.5]
    assert len(merged.span_ids) == 3
    assert separate.prompt_token_ids == [99] and separate.loss_mask == [1]


def test_max_turns_bounds_aggregation() -> None:
    t = Trace()
    t.llm(None, [1], [2])
    t.llm(None, [1, 2], [3])
    t.llm(None, [1, 2, 3], [4])
    t.reward(1.0)
    episode = build_episode(ROLLOUT, t.spans, aggregation="trajectory", max_turns=2)
    assert [len(s.span_ids) for s in episode.samples] == [2, 1]


def test_agent_filter_keeps_only_selected_agents_calls() -> None:
    t = Trace()
    router = t.add("agent", "router", t.root, **{semconv.AGENT_NAME: "router"})
    t.llm(router, [1], [2])
    writer = t.add("agent", "writer", t.root, **{semconv.AGENT_NAME: "writer"})
    t.llm(writer, [3], [4])
    t.llm(writer, [5], [6], **{semconv.RESOURCE_NAMES: ["writer_prompt"]})
    t.reward(1.0)
    only_router = build_episode(ROLLOUT, t.spans, agents=["router"])
    assert [s.agent_name for s in only_router.samples] == ["router"]
    by_resource = build_episode(ROLLOUT, t.spans, resources=["writer_prompt"])
    assert [s.completion_token_ids for s in by_resource.samples] == [[6]]
    none = build_episode(ROLLOUT, t.spans, agents=["nobody"])
    assert not none.samples and "found agents ['router', 'writer']" in none.warnings[0]


def test_missing_token_ids_empty_completions_and_long_prompts_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    t = Trace()
    t.add("llm", "chat gpt", t.root)  # an adapter's own span: the call did not go through the proxy
    t.add("llm", "chat policy", t.root, **{semconv.RECORDED_BY: "proxy"})  # the upstream returned no ids
    t.llm(None, [1], [])
    t.llm(None, list(range(50)), [1])
    t.llm(None, [1], [2])
    t.reward(1.0)
    with caplog.at_level("WARNING", logger="agent_lightning.trajectory"):
        episode = build_episode(ROLLOUT, t.spans, max_prompt_tokens=10)
    assert len(episode.samples) == 1
    text = " ".join(episode.warnings)
    assert "without token ids" in text and "proxy" in text
    assert "empty completion" in text and "max_prompt_tokens=10" in text
    (record,) = [r for r in caplog.records if r.name == "agent_lightning.trajectory"]  # once per episode
    assert record.levelname == "WARNING"
    message = record.getMessage()
    assert message.startswith("rollout ro-1 (attempt at-1): 1 of 5 LLM call(s) usable for training")
    assert "1 LLM call(s) without token ids were skipped: " + BYPASSED_PROXY_FIX in message  # each with its fix
    assert "1 LLM call(s) without token ids were skipped: " + UPSTREAM_NO_IDS_FIX in message
    assert "1 LLM call(s) with an empty completion were skipped: " + EMPTY_COMPLETION_FIX in message
    assert "prompts over max_prompt_tokens=10 were skipped: " + PROMPT_TOO_LONG_FIX in message


def test_a_clean_episode_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    t = Trace()
    t.llm(None, [1], [2])
    t.reward(1.0)
    with caplog.at_level("DEBUG", logger="agent_lightning.trajectory"):
        episode = build_episode(ROLLOUT, t.spans)
    assert episode.samples and not episode.warnings
    assert not [r for r in caplog.records if r.name == "agent_lightning.trajectory"]


def _timed(t: Trace, span_id: str, start: float, end: float) -> None:
    t.spans = [
        s.model_copy(update={"start_time": start, "end_time": end}) if s.span_id == span_id else s for s in t.spans
    ]


def test_a_step_reward_credits_the_unplaced_calls_made_while_the_step_was_open() -> None:
    """Calls made with a client no adapter covers are the proxy's root records: time places them in the step."""
    t = Trace()
    step = t.add("agent", "step", t.root)
    inside = t.llm(None, [1], [2])
    under_root = t.llm(t.root, [3], [4])
    after = t.llm(None, [5], [6])
    _timed(t, step, 101.0, 110.0)
    _timed(t, inside, 102.0, 103.0)
    _timed(t, under_root, 104.0, 105.0)
    _timed(t, after, 111.0, 112.0)
    t.spans = [s.model_copy(update={"parent_id": None}) if s.span_id == inside else s for s in t.spans]
    t.reward(1.0, target=step)
    t.spans[-1] = t.spans[-1].model_copy(update={"start_time": 113.0, "end_time": 113.0})
    episode = build_episode(ROLLOUT, t.spans)
    assert [s.reward for s in episode.samples] == [1.0, 1.0, 0.0]
    assert episode.reward == 1.0


def test_a_step_reward_does_not_credit_a_concurrent_steps_calls() -> None:
    t = Trace()
    step_a = t.add("agent", "a", t.root)
    step_b = t.add("agent", "b", t.root)
    call_a = t.llm(step_a, [1], [2])
    call_b = t.llm(step_b, [3], [4])
    for span_id, (start, end) in {
        step_a: (101, 110),
        step_b: (101, 110),
        call_a: (102, 103),
        call_b: (104, 105),
    }.items():
        _timed(t, span_id, start, end)
    t.reward(1.0, target=step_a)
    episode = build_episode(ROLLOUT, t.spans)
    assert [s.reward for s in episode.samples] == [1.0, 0.0]  # call_b is placed under step b, time aside


def test_client_span_matched_to_its_proxy_record_by_response_id_is_one_sample() -> None:
    t = Trace()
    record = t.llm(None, [1], [2], **{semconv.GEN_AI_RESPONSE_ID: "resp-1"})
    other = t.llm(None, [1, 2, 3], [4], **{semconv.GEN_AI_RESPONSE_ID: "resp-2"})
    t.add("llm", "chat otel", t.root, **{semconv.GEN_AI_RESPONSE_ID: "resp-1"})  # e.g. ingested over OTLP
    t.reward(1.0)
    episode = build_episode(ROLLOUT, t.spans)
    assert [s.span_ids for s in episode.samples] == [[record], [other]] and not episode.warnings

    t.add("llm", "chat unmatched", t.root, **{semconv.GEN_AI_RESPONSE_ID: "resp-3"})
    assert (
        "1 LLM call(s) without token ids were skipped: the call did not go through the proxy"
        in build_episode(ROLLOUT, t.spans).warnings[0]
    )


def test_no_reward_and_no_llm_spans_raise_no_training_data_with_the_fix() -> None:
    t = Trace()
    t.llm(None, [1], [2])
    no_reward = build_episode(ROLLOUT, t.spans)
    assert no_reward.samples == [] and "emit_reward" in no_reward.warnings[0]
    t2 = Trace()
    t2.reward(1.0)
    no_llm = build_episode(ROLLOUT, t2.spans)
    with pytest.raises(NoTrainingData, match="no LLM-call spans") as info:
        ensure_training_data([no_reward, no_llm])
    assert "emit_reward" in str(info.value)


def test_only_latest_attempt_is_used() -> None:
    old = Trace()
    old.llm(None, [1], [2])
    old_spans = [s.model_copy(update={"attempt_id": "at-0"}) for s in old.spans]
    new = Trace()
    new.llm(None, [7], [8])
    new.reward(1.0)
    episode = build_episode(ROLLOUT, old_spans + new.spans)
    assert episode.attempt_id == "at-1"
    assert [s.prompt_token_ids for s in episode.samples] == [[7]]
