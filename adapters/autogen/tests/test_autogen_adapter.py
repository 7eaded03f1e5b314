"""The AutoGen adapter with real AgentChat agents and teams over real HTTP: client → proxy → scripted LLM."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import agent_lightning as agl
import pytest
from agent_lightning import semconv
from agent_lightning.instrumentation import adapter as adapters
from agent_lightning.instrumentation.scoping import RESOURCES_VERSION
from agent_lightning.types import LLM, PromptTemplate
from agent_lightning_testkit.adapters import MODEL, ProxyEnv, SpanTree, calculator_script, scripted_proxy
from agent_lightning_testkit.scripted_llm import ScriptCall
from autogen_agentchat.agents import AssistantAgent, BaseChatAgent
from autogen_agentchat.base import Response
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.messages import BaseChatMessage, TextMessage
from autogen_agentchat.teams import RoundRobinGroupChat, SelectorGroupChat
from autogen_core.models import ModelInfo
from autogen_ext.models.openai import OpenAIChatCompletionClient

MODEL_INFO = ModelInfo(
    vision=False, function_calling=True, json_output=False, family="unknown", structured_output=False
)


@pytest.fixture
def env() -> Iterator[ProxyEnv]:
    with scripted_proxy() as env:
        yield env


async def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as 25 * 17."""
    if "/ 0" in expression:
        raise ZeroDivisionError(f"cannot evaluate {expression}: division by zero")
    return str(eval(expression))


def model_client(ctx: agl.TrainingContext) -> OpenAIChatCompletionClient:
    llm = ctx.llm()
    return OpenAIChatCompletionClient(
        model=llm.model, base_url=llm.endpoint, api_key="unused", model_info=MODEL_INFO, max_retries=0
    )


def solver(ctx: agl.TrainingContext, **kwargs: Any) -> AssistantAgent:
    return AssistantAgent(
        "solver", model_client=model_client(ctx), tools=[calculator], reflect_on_tool_use=True, **kwargs
    )


def checker(ctx: agl.TrainingContext) -> AssistantAgent:
    return AssistantAgent("checker", model_client=model_client(ctx), system_message="Check the answer.")


def assert_model_call(tree: SpanTree, span: Any, agent: str) -> None:
    assert span.name == f"chat {MODEL}"
    assert span.kind == "llm"
    assert span.attributes[semconv.ADAPTER] == "autogen"
    assert span.attributes[semconv.GEN_AI_REQUEST_MODEL] == MODEL
    assert span.attributes[semconv.AGENT_NAME] == agent
    assert span.attributes[semconv.RESOURCE_NAMES] == ["policy"]
    assert span.status.code == "ok"
    assert span.attributes["agl.autogen.model_client"] == "OpenAIChatCompletionClient"  # joined from AutoGen's span
    tree.proxy_record(span)  # the one span of the call: the proxy's record, with the token ids


def test_assistant_agent_with_tool(env: ProxyEnv) -> None:
    async def main() -> tuple[agl.TrainingContext, Any]:
        async with agl.TrainingContext(task_id="math", store=env.store) as ctx:
            result = await solver(ctx).run(task="What is 25 * 17?")
        return ctx, result

    ctx, result = asyncio.run(main())
    assert result.messages[-1].content == "The answer is 425."
    tree = env.tree(ctx.rollout_id)
    turn = tree.child(tree.root, kind="agent")
    assert turn.name == "invoke_agent solver"
    assert turn.attributes[semconv.AGENT_NAME] == "solver"
    assert turn.attributes[semconv.GEN_AI_INPUT_MESSAGES][0]["content"] == "What is 25 * 17?"
    assert turn.attributes[semconv.GEN_AI_OUTPUT_MESSAGES][0]["content"] == "The answer is 425."
    first, run, second = tree.children(turn)
    tree.assert_one_span_per_call(env.upstream_calls, adapter="autogen")
    assert_model_call(tree, first, "solver")
    assert first.attributes[semconv.GEN_AI_TOOL_DEFINITIONS][0]["function"]["name"] == "calculator"
    call = first.attributes[semconv.GEN_AI_OUTPUT_MESSAGES][0]["tool_calls"][0]
    assert call["function"]["name"] == "calculator"
    assert first.attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ["tool_calls"]  # as the upstream said
    assert run.kind == "tool" and run.name == "execute_tool calculator"
    assert run.attributes[semconv.GEN_AI_TOOL_CALL_ARGUMENTS] == {"expression": "25 * 17"}
    assert run.attributes[semconv.GEN_AI_TOOL_CALL_RESULT] == "425"
    assert run.attributes[semconv.GEN_AI_TOOL_CALL_ID] == call["id"]
    assert run.attributes[semconv.AGENT_NAME] == "solver"
    assert_model_call(tree, second, "solver")
    assert second.attributes[semconv.GEN_AI_INPUT_MESSAGES][-1]["role"] == "tool"
    assert second.attributes[semconv.GEN_AI_OUTPUT_MESSAGES][0]["content"] == "The answer is 425."


def test_round_robin_team_tags_each_agents_calls(env: ProxyEnv) -> None:
    async def main() -> agl.TrainingContext:
        async with agl.TrainingContext(task_id="team", store=env.store) as ctx:
            team = RoundRobinGroupChat([solver(ctx), checker(ctx)], termination_condition=MaxMessageTermination(3))
            result = await team.run(task="What is 25 * 17?")
            agl.emit_reward(1.0 if "425" in str(result.messages[1].content) else 0.0)
        return ctx

    ctx = asyncio.run(main())
    tree = env.tree(ctx.rollout_id)
    team = tree.child(tree.root, kind="agent")
    assert team.name == "invoke_agent RoundRobinGroupChat"
    assert team.attributes["agl.autogen.team.participants"] == ["solver", "checker"]
    turns = tree.children(team, kind="agent")
    assert [t.name for t in turns if not t.name.startswith("select_speaker")] == [
        "invoke_agent solver",
        "invoke_agent checker",
    ]
    solver_turn, checker_turn = (t for t in turns if t.name.startswith("invoke_agent"))
    assert [s.kind for s in tree.children(solver_turn)] == ["llm", "tool", "llm"]
    assert [s.kind for s in tree.children(checker_turn)] == ["llm"]
    for span in tree.children(solver_turn, kind="llm"):
        assert_model_call(tree, span, "solver")
    assert_model_call(tree, tree.child(checker_turn, kind="llm"), "checker")

    # selective optimization: filtering by agent name yields only that agent's model calls
    by_agent: dict[str, list[str]] = {}
    for span in tree.client_llm_spans("autogen"):
        by_agent.setdefault(span.attributes[semconv.AGENT_NAME], []).append(span.parent_id)
    assert {a: len(p) for a, p in by_agent.items()} == {"solver": 2, "checker": 1}
    assert set(by_agent["checker"]) == {checker_turn.span_id}
    rollout = asyncio.run(env.store.get_rollout(ctx.rollout_id))
    episode = agl.build_episode(rollout, tree.spans, agents=["checker"])
    assert [s.agent_name for s in episode.samples] == ["checker"]


def selector_script(call: ScriptCall) -> Any:
    text = " ".join(str(m.get("content")) for m in call.messages)
    if "select the next role" in text:
        return "checker" if "The answer is" in text else "solver"
    return calculator_script(call)


def test_selector_group_chat_selector_calls_are_the_managers() -> None:
    with scripted_proxy(selector_script) as env:

        async def main() -> agl.TrainingContext:
            async with agl.TrainingContext(task_id="selector", store=env.store) as ctx:
                team = SelectorGroupChat(
                    [solver(ctx), checker(ctx)],
                    model_client=model_client(ctx),
                    termination_condition=MaxMessageTermination(3),
                    allow_repeated_speaker=True,
                )
                await team.run(task="What is 25 * 17?")
            return ctx

        ctx = asyncio.run(main())
        tree = env.tree(ctx.rollout_id)
        team = tree.child(tree.root, kind="agent")
        selections = [s for s in tree.children(team) if s.name.startswith("select_speaker")]
        assert [s.attributes["agl.autogen.selected_speakers"] for s in selections] == [["solver"], ["checker"]]
        for selection in selections:
            assert_model_call(tree, tree.child(selection, kind="llm"), "SelectorGroupChatManager")
        names = [s.attributes[semconv.AGENT_NAME] for s in tree.client_llm_spans("autogen")]
        assert names.count("SelectorGroupChatManager") == 2
        assert names.count("solver") == 2 and names.count("checker") == 1


def test_tool_exception_is_recorded_and_the_rollout_succeeds(env: ProxyEnv) -> None:
    async def main() -> agl.TrainingContext:
        async with agl.TrainingContext(task_id="divide", store=env.store) as ctx:
            await solver(ctx).run(task="What is 1 / 0?")
        return ctx

    ctx = asyncio.run(main())
    tree = env.tree(ctx.rollout_id)
    run = tree.child(tree.child(tree.root, kind="agent"), kind="tool")
    assert run.status.code == "error"
    assert run.attributes[semconv.ERROR_TYPE] == "ZeroDivisionError"
    assert "division by zero" in run.attributes["exception.message"]
    assert run.attributes[semconv.GEN_AI_TOOL_CALL_ARGUMENTS] == {"expression": "1 / 0"}
    assert all(s.end_time is not None for s in tree.spans)
    assert asyncio.run(env.store.get_attempts(ctx.rollout_id))[-1].status == "succeeded"


SOLVER_PROMPT = PromptTemplate(template="You are a {style} solver. Use the calculator for arithmetic.")


def test_system_message_template_scopes_the_agents_model_calls() -> None:
    """A prompt-template resource used as an agent's system message tags that agent's model calls (and only
    its calls) with the resource's name, the snapshot's id and its version."""
    with scripted_proxy(resources={"solver_prompt": SOLVER_PROMPT}) as env:
        # a newer snapshot: the rollout runs with version 2, whose template text differs
        newer = PromptTemplate(template="You are a {style} solver. Always use the calculator.")
        snapshot = asyncio.run(
            env.store.add_resources({"policy": env_policy(env), "solver_prompt": newer, "old_prompt": SOLVER_PROMPT})
        )
        assert snapshot.version == 2

        async def main() -> agl.TrainingContext:
            async with agl.TrainingContext(task_id="scoped", store=env.store) as ctx:
                team = RoundRobinGroupChat(
                    [solver(ctx, system_message=newer.format(style="careful")), checker(ctx)],
                    termination_condition=MaxMessageTermination(3),
                )
                await team.run(task="What is 25 * 17?")
                agl.emit_reward(1.0)
            return ctx

        ctx = asyncio.run(main())
        assert ctx.resources is not None and ctx.resources.resources_id == snapshot.resources_id
        tree = env.tree(ctx.rollout_id)
        by_agent: dict[str, list[Any]] = {}
        for span in tree.client_llm_spans("autogen"):
            by_agent.setdefault(span.attributes[semconv.AGENT_NAME], []).append(span)
        assert [len(by_agent["solver"]), len(by_agent["checker"])] == [2, 1]
        for span in by_agent["solver"]:
            system = span.attributes[semconv.GEN_AI_INPUT_MESSAGES][0]
            assert system == {"role": "system", "content": newer.format(style="careful")}
            assert span.attributes[semconv.RESOURCE_NAMES] == ["policy", "solver_prompt"]
            assert span.attributes[semconv.RESOURCES_ID] == env.upstream.model_version  # the weights that answered
            assert span.attributes[RESOURCES_VERSION] == 2
        (checker_call,) = by_agent["checker"]
        assert checker_call.attributes[semconv.RESOURCE_NAMES] == ["policy"]  # its system message is no template
        assert checker_call.attributes[RESOURCES_VERSION] == 2

        rollout = asyncio.run(env.store.get_rollout(ctx.rollout_id))
        episode = agl.build_episode(rollout, tree.spans, resources=["solver_prompt"])
        assert [s.agent_name for s in episode.samples] == ["solver", "solver"]


def env_policy(env: ProxyEnv) -> LLM:
    latest = asyncio.run(env.store.get_latest_resources())
    assert latest is not None
    policy = latest.resources["policy"]
    assert isinstance(policy, LLM)
    return policy


def define_agent(base: type[BaseChatAgent], prefix: str) -> type[BaseChatAgent]:
    """A user's own agent class, defined at call time (after the adapter scanned the classes)."""

    class Echo(base):  # type: ignore[misc,valid-type]
        def __init__(self, name: str, description: str = "Echoes the task.") -> None:
            super().__init__(name, description=description)

        @property
        def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
            return (TextMessage,)

        async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: Any) -> Response:
            text = messages[-1].to_text() if messages else ""
            return Response(chat_message=TextMessage(content=f"{prefix}{text}", source=self.name))

        async def on_reset(self, cancellation_token: Any) -> None:
            pass

    return Echo


def test_agent_classes_defined_later_are_patched(env: ProxyEnv) -> None:
    async def run(agent: BaseChatAgent) -> tuple[agl.TrainingContext, str]:
        async with agl.TrainingContext(task_id="late", store=env.store) as ctx:
            result = await agent.run(task="hi")
        return ctx, str(result.messages[-1].content)

    def turn_names(ctx: agl.TrainingContext) -> list[str]:
        tree = env.tree(ctx.rollout_id)
        return [s.name for s in tree.children(tree.root, kind="agent")]

    adapter = adapters.adapters()["autogen"]
    agl.instrument("autogen")  # explicitly on: no TrainingContext switches it on again
    echo_class = define_agent(BaseChatAgent, "echo: ")  # defined while on: patched as it is defined
    assert hasattr(echo_class.on_messages, "__agl_original__")
    ctx, answer = asyncio.run(run(echo_class("echo")))
    assert answer == "echo: hi"
    assert turn_names(ctx) == ["invoke_agent echo"]
    turn = env.tree(ctx.rollout_id).child(env.tree(ctx.rollout_id).root, kind="agent")
    assert turn.attributes[semconv.GEN_AI_OUTPUT_MESSAGES][0]["content"] == "echo: hi"

    agl.uninstrument("autogen")
    assert not hasattr(echo_class.on_messages, "__agl_original__")  # restored, hook removed
    loud_class = define_agent(echo_class, "ECHO: ")  # defined while off: found by the next instrument()
    assert not hasattr(loud_class.on_messages, "__agl_original__")
    agl.instrument("autogen")
    adapter.instrument()  # already on: a no-op, nothing is wrapped twice
    for cls in (echo_class, loud_class):
        original = cls.__dict__["on_messages"].__agl_original__
        assert not hasattr(original, "__agl_original__")
    ctx, answer = asyncio.run(run(loud_class("loud")))
    assert answer == "ECHO: hi"
    assert turn_names(ctx) == ["invoke_agent loud"]
