"""The adapter contract as a pytest class: subclass :class:`AdapterConformanceSuite` and provide the agent.

Every test drives the real framework over real HTTP: the agent's model client → the project's proxy →
the scripted upstream (:func:`~agent_lightning_testkit.adapters.calculator_script`). It checks the span tree
(the agent's spans under the step that ran it, one ``llm`` span per model call: the proxy's record carrying
the adapter's attributes), the token ids the upstream sampled, streaming, concurrent rollouts, and switching
the adapter off and on again.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Iterator
from typing import Any, ClassVar

import agent_lightning as agl
import pytest
from agent_lightning import semconv
from agent_lightning.instrumentation import adapter as adapters
from agent_lightning.types import Span

from agent_lightning_testkit.adapters import ProxyEnv, SpanTree, fresh_adapters, scripted_proxy

QUESTION = "What is 25 * 17?"
"""The calculator script asks for ``calculator(expression="25 * 17")``, then answers "The answer is 425."."""
STREAM_PROMPT = "Say hi"
"""Answered with the text "I can only do arithmetic." (no tool call)."""


def _resolved(value: Any) -> Any:
    return asyncio.run(value) if inspect.isawaitable(value) else value


def _user_texts(span: Span) -> list[str]:
    messages = span.attributes.get(semconv.GEN_AI_INPUT_MESSAGES) or []
    return [m["content"] for m in messages if isinstance(m, dict) and m.get("role") == "user"]


class AdapterConformanceSuite:
    """What every framework adapter must do; each adapter's tests subclass it.

    Provide :attr:`adapter_name`, :meth:`run_agent` (a calculator agent answering one question with one
    tool call: two model calls) and :meth:`stream_reply` (one streamed model call).
    """

    adapter_name: ClassVar[str]
    """The adapter's registered name (``"openai"``, ``"langchain"``, ``"autogen"``)."""
    records_tools: ClassVar[bool] = True
    """Whether the adapter records tool runs as ``tool`` spans."""
    calls_per_question: ClassVar[int] = 2
    """Model calls :meth:`run_agent` makes for one question (the tool call, then the answer)."""

    def run_agent(self, ctx: agl.TrainingContext, question: str) -> str | Awaitable[str]:
        """Run the agent on ``question`` with a model client pointed at ``ctx.llm()``; return its answer."""
        raise NotImplementedError

    def stream_reply(self, ctx: agl.TrainingContext, prompt: str) -> str | Awaitable[str]:
        """Make one streamed model call with the user message ``prompt``; return the streamed text."""
        raise NotImplementedError

    async def arun_agent(self, ctx: agl.TrainingContext, question: str) -> str:
        """:meth:`run_agent` for an event loop (by default: in a worker thread, or awaited when async)."""
        result = await asyncio.to_thread(self.run_agent, ctx, question)
        return await result if inspect.isawaitable(result) else result

    # ------------------------------------------------------------------ fixtures
    @pytest.fixture(autouse=True)
    def _fresh_adapters(self) -> Iterator[None]:
        with fresh_adapters():
            yield

    @pytest.fixture
    def env(self) -> Iterator[ProxyEnv]:
        with scripted_proxy() as env:
            yield env

    # ------------------------------------------------------------------ helpers
    def answer(self, question: str) -> str:
        a, b = question.removeprefix("What is ").removesuffix("?").split(" * ")
        return f"The answer is {int(a) * int(b)}."

    def assert_calls_recorded_once(
        self, env: ProxyEnv, tree: SpanTree, calls: int, *, by_agent: bool = True
    ) -> list[Span]:
        """``calls`` llm spans, each the proxy's record of one call, with the adapter's attributes joined on
        (with ``by_agent``, the name of the agent that made the call too)."""
        llms = tree.assert_one_span_per_call(calls, adapter=self.adapter_name)
        for span in llms:
            assert span.attributes.get(semconv.RESOURCE_NAMES), f"no resources joined: {span.attributes}"
            if by_agent:
                assert span.attributes.get(semconv.AGENT_NAME), f"no agent name joined: {span.attributes}"
        return llms

    # ------------------------------------------------------------------ the contract
    def test_found_through_entry_point_and_available(self) -> None:
        found = adapters.adapters()
        assert self.adapter_name in found, f"no adapter {self.adapter_name!r} registered: {sorted(found)}"
        assert found[self.adapter_name].is_available()

    def test_span_tree_and_token_ids(self, env: ProxyEnv) -> None:
        with agl.TrainingContext(task_id="conformance", store=env.store) as ctx:
            with agl.span("step") as step:
                answer = _resolved(self.run_agent(ctx, QUESTION))
            agl.emit_reward(1.0, span_id=step.id)
        assert answer == self.answer(QUESTION)
        assert self.adapter_name not in adapters.active_adapters(), "switched off with the context"

        tree = env.tree(ctx.rollout_id)
        assert tree.root.kind == "agent" and tree.root.name == "conformance"
        step_span = tree.child(tree.root, name="step")
        assert env.upstream_calls == self.calls_per_question
        llms = self.assert_calls_recorded_once(env, tree, env.upstream_calls)
        for span in tree.spans:  # every span of the agent's run is under the step that ran it
            if span.span_id not in (tree.root.span_id, step_span.span_id) and span.kind != "reward":
                ancestor = span
                while ancestor.parent_id not in (step_span.span_id, None):
                    ancestor = tree.by_id[ancestor.parent_id]  # type: ignore[index]
                assert ancestor.parent_id == step_span.span_id, f"{span.name} is not under the step\n{tree.render()}"
            assert span.rollout_id == ctx.rollout_id and span.attempt_id == ctx.attempt_id
            assert span.end_time is not None
        # the one span of each call holds exactly what the upstream sampled for it
        for span, sampled in zip(llms, env.upstream.calls, strict=True):
            assert span.attributes[semconv.PROMPT_TOKEN_IDS] == sampled.prompt_token_ids[0]
            assert span.attributes[semconv.COMPLETION_TOKEN_IDS] == sampled.choices[0].token_ids
            assert _user_texts(span) == [QUESTION]
        assert llms[-1].attributes[semconv.GEN_AI_OUTPUT_MESSAGES][0]["content"] == answer
        tools = tree.of_kind("tool")
        if self.records_tools:
            (tool,) = tools
            assert tool.attributes[semconv.GEN_AI_TOOL_NAME] == "calculator"
            assert tool.attributes[semconv.GEN_AI_TOOL_CALL_ARGUMENTS] == {"expression": "25 * 17"}
            assert tool.attributes[semconv.GEN_AI_TOOL_CALL_RESULT] == "425"
        # the proxy consumes the join headers: the upstream never sees them
        assert not [h for call in env.upstream.calls for h in call.headers if h.startswith("x-agl-")]
        # the step's reward credits every call
        rollout = asyncio.run(env.store.get_rollout(ctx.rollout_id))
        episode = agl.build_episode(rollout, tree.spans)
        assert [s.reward for s in episode.samples] == [1.0] * len(llms), episode.warnings

    def test_streaming_is_one_span_per_call(self, env: ProxyEnv) -> None:
        with agl.TrainingContext(task_id="stream", store=env.store) as ctx:
            text = _resolved(self.stream_reply(ctx, STREAM_PROMPT))
        assert text == "I can only do arithmetic."
        tree = env.tree(ctx.rollout_id)
        (span,) = self.assert_calls_recorded_once(env, tree, 1, by_agent=False)  # per streamed call, not per chunk
        (sampled,) = env.upstream.calls
        assert sampled.body.get("stream") is True, "the call was not streamed"
        assert span.status.code == "ok" and span.end_time is not None
        assert span.attributes[semconv.COMPLETION_TOKEN_IDS] == sampled.choices[0].token_ids
        assert span.attributes[semconv.GEN_AI_OUTPUT_MESSAGES][0]["content"] == text

    def assert_rollouts_separate(self, env: ProxyEnv, rollouts: dict[str, str]) -> None:
        for rollout_id, question in rollouts.items():
            tree = env.tree(rollout_id)
            assert all(s.rollout_id == rollout_id for s in tree.spans)
            llms = self.assert_calls_recorded_once(env, tree, self.calls_per_question)
            for span in llms:
                assert _user_texts(span) == [question], f"{rollout_id}: {span.attributes}\n{tree.render()}"
            assert llms[-1].attributes[semconv.GEN_AI_OUTPUT_MESSAGES][0]["content"] == self.answer(question)
            if self.records_tools:
                (tool,) = tree.of_kind("tool")
                expression = question.removeprefix("What is ").removesuffix("?")
                assert tool.attributes[semconv.GEN_AI_TOOL_CALL_ARGUMENTS] == {"expression": expression}

    def test_concurrent_rollouts_in_threads_stay_separate(self, env: ProxyEnv) -> None:
        questions = [f"What is {a} * {a + 1}?" for a in range(2, 6)]
        rollouts: dict[str, str] = {}
        errors: list[BaseException] = []

        def run(question: str) -> None:
            try:
                with agl.TrainingContext(task_id="threads", store=env.store) as ctx:
                    assert _resolved(self.run_agent(ctx, question)) == self.answer(question)
                rollouts[ctx.rollout_id] = question
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(q,)) for q in questions]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        assert sorted(rollouts.values()) == sorted(questions)
        self.assert_rollouts_separate(env, rollouts)

    def test_concurrent_rollouts_in_one_event_loop_stay_separate(self, env: ProxyEnv) -> None:
        questions = [f"What is {a} * {a + 4}?" for a in range(2, 6)]

        async def one(question: str) -> tuple[agl.TrainingContext, str]:
            async with agl.TrainingContext(task_id="tasks", store=env.store) as ctx:
                assert await self.arun_agent(ctx, question) == self.answer(question)
            return ctx, question

        async def main() -> list[tuple[agl.TrainingContext, str]]:
            return await asyncio.gather(*(one(q) for q in questions))

        results = asyncio.run(main())
        self.assert_rollouts_separate(env, {ctx.rollout_id: question for ctx, question in results})
        roots = [env.tree(ctx.rollout_id).root for ctx, _ in results]
        assert max(r.start_time for r in roots) < min(r.end_time or 0.0 for r in roots), "they did not overlap"

    def test_uninstrument_then_instrument(self, env: ProxyEnv) -> None:
        agl.uninstrument(self.adapter_name)
        with agl.TrainingContext(task_id="off", store=env.store) as off:
            assert self.adapter_name not in adapters.active_adapters()
            assert _resolved(self.run_agent(off, QUESTION)) == self.answer(QUESTION)
        spans = env.spans(off.rollout_id)
        assert not [s.name for s in spans if s.attributes.get(semconv.ADAPTER) == self.adapter_name]
        llms = [s for s in spans if s.kind == "llm"]
        assert len(llms) == self.calls_per_question  # still one record per call (the proxy's, or another adapter's)

        agl.instrument(self.adapter_name)
        with agl.TrainingContext(task_id="on", store=env.store) as on:
            assert _resolved(self.run_agent(on, QUESTION)) == self.answer(QUESTION)
        assert self.adapter_name in adapters.active_adapters(), "explicitly on: stays on after the context"
        self.assert_calls_recorded_once(env, env.tree(on.rollout_id), self.calls_per_question)


__all__ = ["QUESTION", "STREAM_PROMPT", "AdapterConformanceSuite"]
