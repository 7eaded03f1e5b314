"""The OpenAI adapter against real HTTP: the SDK → the project's proxy → a scripted upstream with token ids."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import agent_lightning as agl
import openai
import pytest
from agent_lightning import semconv
from agent_lightning.instrumentation import adapter as adapters
from agent_lightning.instrumentation.scoping import RESOURCES_VERSION
from agent_lightning.types import PromptTemplate
from agent_lightning_testkit.adapters import MODEL, ProxyEnv, reset_adapters, scripted_proxy
from agent_lightning_testkit.scripted_llm import Reply, ScriptedCall
from test_conformance import TOOLS, solve  # the suite's SDK agent (tests/ is on sys.path)

SYSTEM = PromptTemplate(template="You are a careful {role}. Answer with a number only.")


@pytest.fixture
def env() -> Iterator[ProxyEnv]:
    with scripted_proxy(resources={"system_prompt": SYSTEM}) as env:
        yield env


def test_tool_calling_agent_span_tree(env: ProxyEnv) -> None:
    with agl.TrainingContext(task_id="math", store=env.store, agent_name="solver") as ctx:
        client = openai.OpenAI(base_url=ctx.llm().endpoint, api_key="unused", max_retries=0)
        answer = solve(client, "What is 25 * 17?", system=SYSTEM.format(role="calculator"))
    assert answer == "The answer is 425."
    assert adapters.active_adapters() == []  # switched off with the context

    tree = env.tree(ctx.rollout_id)
    assert tree.root.name == "math" and tree.root.kind == "agent"
    first, second = tree.assert_one_span_per_call(env.upstream_calls, adapter="openai")
    assert [first, second] == tree.children(tree.root, kind="llm")
    for span in (first, second):
        assert span.name == f"chat {MODEL}"
        assert span.status.code == "ok"
        assert span.attributes[semconv.ADAPTER] == "openai"
        assert span.attributes[semconv.GEN_AI_REQUEST_MODEL] == MODEL
        assert span.attributes[semconv.GEN_AI_REQUEST_TEMPERATURE] == 0.5
        assert span.attributes[semconv.GEN_AI_TOOL_DEFINITIONS][0]["function"]["name"] == "calculator"
        assert span.attributes[semconv.AGENT_NAME] == "solver"
        assert span.attributes[semconv.RESOURCE_NAMES] == ["policy", "system_prompt"]
        assert ctx.resources is not None
        assert span.attributes[semconv.RESOURCES_ID] == "scripted-v1"  # the weights version that answered
        assert span.attributes[RESOURCES_VERSION] == ctx.resources.version == 1
        assert span.rollout_id == ctx.rollout_id
    assert first.attributes[semconv.GEN_AI_INPUT_MESSAGES][1] == {"role": "user", "content": "What is 25 * 17?"}
    call = first.attributes[semconv.GEN_AI_OUTPUT_MESSAGES][0]["tool_calls"][0]
    assert call["function"] == {"name": "calculator", "arguments": '{"expression": "25 * 17"}'}
    assert first.attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ["tool_calls"]
    assert second.attributes[semconv.GEN_AI_INPUT_MESSAGES][-1]["role"] == "tool"
    assert second.attributes[semconv.GEN_AI_OUTPUT_MESSAGES][0]["content"] == "The answer is 425."
    assert second.attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] > 0


def test_async_stream_of_a_tool_call(env: ProxyEnv) -> None:
    async def stream_async(endpoint: str) -> str:
        client = openai.AsyncOpenAI(base_url=endpoint, api_key="unused", max_retries=0)
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "What is 6 * 7?"}], tools=TOOLS, stream=True
        )
        assert isinstance(stream, openai.AsyncStream)
        names = [
            c.choices[0].delta.tool_calls[0].function.name
            async for c in stream
            if c.choices and c.choices[0].delta.tool_calls
        ]
        return "".join(n or "" for n in names)

    with agl.TrainingContext(task_id="stream", store=env.store) as ctx:
        assert asyncio.run(stream_async(ctx.llm().endpoint)) == "calculator"

    tree = env.tree(ctx.rollout_id)
    (span,) = tree.assert_one_span_per_call(1, adapter="openai")
    assert span.parent_id == tree.root.span_id
    tool_call = span.attributes[semconv.GEN_AI_OUTPUT_MESSAGES][0]["tool_calls"][0]
    assert tool_call["function"] == {"name": "calculator", "arguments": '{"expression": "6 * 7"}'}
    assert span.attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ["tool_calls"]


def test_plain_proxy_url_is_attributed_by_headers(env: ProxyEnv) -> None:
    """An agent built before the rollout exists points at the plain proxy URL; headers route its calls."""
    client = openai.OpenAI(base_url=env.proxy_url + "/v1", api_key="unused", max_retries=0)
    with agl.TrainingContext(task_id="plain", store=env.store) as ctx:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi"}])
    tree = env.tree(ctx.rollout_id)
    span = tree.child(tree.root, kind="llm")
    assert tree.proxy_record(span).rollout_id == ctx.rollout_id


def test_text_completion(env: ProxyEnv) -> None:
    with agl.TrainingContext(task_id="complete", store=env.store) as ctx:
        client = openai.OpenAI(base_url=ctx.llm().endpoint, api_key="unused", max_retries=0)
        result = client.completions.create(model=MODEL, prompt="What is 1 + 1?", max_tokens=64)
    tree = env.tree(ctx.rollout_id)
    (span,) = tree.assert_one_span_per_call(1, adapter="openai")
    assert span.parent_id == tree.root.span_id
    assert span.name == f"text_completion {MODEL}"
    assert span.attributes[semconv.GEN_AI_OPERATION_NAME] == "text_completion"
    assert span.attributes[semconv.GEN_AI_OUTPUT_MESSAGES][0]["content"] == result.choices[0].text
    tree.proxy_record(span)


def test_upstream_failure_is_an_error_span_and_the_rollout_fails() -> None:
    with scripted_proxy(Reply(status=500, error_message="engine crashed")) as env:
        with pytest.raises(openai.APIStatusError):
            with agl.TrainingContext(task_id="broken", store=env.store) as ctx:
                client = openai.OpenAI(base_url=ctx.llm().endpoint, api_key="unused", max_retries=0)
                client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        tree = env.tree(ctx.rollout_id)
        (span,) = tree.of_kind("llm")  # one span for the failed call: the proxy's record of the error
        assert span.parent_id == tree.root.span_id
        assert span.attributes[semconv.RECORDED_BY] == "proxy"
        assert span.attributes[semconv.ADAPTER] == "openai"
        assert span.status.code == "error" and "engine crashed" in (span.status.message or "")
        assert span.attributes[semconv.ERROR_TYPE] == "500"
        attempts = asyncio.run(env.store.get_attempts(ctx.rollout_id))
        assert attempts[-1].status == "failed"


# ---------------------------------------------------------------------- the Responses API
RESPONSES_TOOLS = [{"type": "function", **TOOLS[0]["function"]}]


def assert_responses_span(span: Any, sampled: ScriptedCall) -> None:
    """A Responses call's span: chat-shaped attributes, usage of the sampled call, and no token ids (the proxy
    only forwards ``/v1/responses``, so no record links to it)."""
    assert span.name == f"chat {MODEL}" and span.kind == "llm" and span.status.code == "ok"
    assert span.end_time is not None
    assert span.attributes[semconv.ADAPTER] == "openai"
    assert span.attributes[semconv.GEN_AI_OPERATION_NAME] == "chat"
    assert span.attributes[semconv.GEN_AI_REQUEST_MODEL] == MODEL
    assert span.attributes[semconv.GEN_AI_RESPONSE_MODEL] == MODEL
    assert span.attributes[semconv.GEN_AI_RESPONSE_ID].startswith("resp_")
    assert span.attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == len(sampled.prompt_token_ids[0])
    assert span.attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == len(sampled.choices[0].token_ids)
    assert span.attributes[semconv.TOKEN_IDS_AVAILABLE] is False
    assert semconv.RECORDED_BY not in span.attributes  # the proxy only forwards the Responses API
    assert semconv.COMPLETION_TOKEN_IDS not in span.attributes


def test_responses_api_tool_calling_agent(env: ProxyEnv) -> None:
    with agl.TrainingContext(task_id="responses", store=env.store, agent_name="solver") as ctx:
        client = openai.OpenAI(base_url=ctx.llm().endpoint, api_key="unused", max_retries=0)
        instructions = SYSTEM.format(role="calculator")
        first = client.responses.create(
            model=MODEL, instructions=instructions, input="What is 25 * 17?", tools=RESPONSES_TOOLS, temperature=0.3
        )
        (call,) = first.output
        assert call.type == "function_call"
        result = str(eval(json.loads(call.arguments)["expression"]))
        history = [
            {"role": "user", "content": "What is 25 * 17?"},
            call,
            {"type": "function_call_output", "call_id": call.call_id, "output": result},
        ]
        second = client.responses.create(model=MODEL, instructions=instructions, input=history, tools=RESPONSES_TOOLS)
    assert second.output_text == "The answer is 425."

    tree = env.tree(ctx.rollout_id)
    spans = tree.children(tree.root)
    assert [s.kind for s in spans] == ["llm", "llm"]  # the proxy recorded nothing: no record under them
    assert all(not tree.children(s) for s in spans)
    assert [c.endpoint for c in env.upstream.calls] == ["responses", "responses"]
    for span, sampled in zip(spans, env.upstream.calls, strict=True):
        assert_responses_span(span, sampled)
        assert span.attributes[semconv.AGENT_NAME] == "solver"
        assert span.attributes[semconv.RESOURCE_NAMES] == ["policy", "system_prompt"]
        assert span.attributes[semconv.GEN_AI_TOOL_DEFINITIONS] == RESPONSES_TOOLS
        assert span.attributes[semconv.GEN_AI_INPUT_MESSAGES][0] == {"role": "system", "content": instructions}
    one, two = spans
    assert one.attributes[semconv.GEN_AI_REQUEST_TEMPERATURE] == 0.3
    assert one.attributes[semconv.GEN_AI_INPUT_MESSAGES][1] == {"role": "user", "content": "What is 25 * 17?"}
    assert one.attributes[semconv.GEN_AI_OUTPUT_MESSAGES] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": "calculator", "arguments": '{"expression": "25 * 17"}'},
                }
            ],
        }
    ]
    assert one.attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ["tool_calls"]
    # the follow-up's input items are recorded as chat messages: the call, then the tool's result
    assert two.attributes[semconv.GEN_AI_INPUT_MESSAGES][2]["tool_calls"][0]["id"] == call.call_id
    assert two.attributes[semconv.GEN_AI_INPUT_MESSAGES][3] == {
        "role": "tool",
        "tool_call_id": call.call_id,
        "content": "425",
    }
    assert two.attributes[semconv.GEN_AI_OUTPUT_MESSAGES] == [{"role": "assistant", "content": "The answer is 425."}]
    assert two.attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ["stop"]


def test_responses_api_streaming_and_async(env: ProxyEnv) -> None:
    async def call_async(endpoint: str) -> tuple[str, list[str]]:
        client = openai.AsyncOpenAI(base_url=endpoint, api_key="unused", max_retries=0)
        plain = await client.responses.create(model=MODEL, input="Say hi", max_output_tokens=5)
        stream = await client.responses.create(model=MODEL, input="What is 6 * 7?", tools=RESPONSES_TOOLS, stream=True)
        assert isinstance(stream, openai.AsyncStream)
        return plain.output_text, [event.type async for event in stream]

    with agl.TrainingContext(task_id="responses-stream", store=env.store) as ctx:
        client = openai.OpenAI(base_url=ctx.llm().endpoint, api_key="unused", max_retries=0)
        with client.responses.create(model=MODEL, input="Say hi", stream=True) as stream:
            assert isinstance(stream, openai.Stream)
            text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        truncated, events = asyncio.run(call_async(ctx.llm().endpoint))

    assert text == "I can only do arithmetic."
    assert truncated == "I can "
    assert events[-1] == "response.completed" and "response.function_call_arguments.delta" in events
    tree = env.tree(ctx.rollout_id)
    sync_stream, async_plain, async_stream = tree.children(tree.root, kind="llm")
    for span, sampled in zip((sync_stream, async_plain, async_stream), env.upstream.calls, strict=True):
        assert_responses_span(span, sampled)
    assert sync_stream.attributes[semconv.GEN_AI_OUTPUT_MESSAGES] == [
        {"role": "assistant", "content": "I can only do arithmetic."}
    ]
    assert sync_stream.attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ["stop"]
    assert async_plain.attributes[semconv.GEN_AI_REQUEST_MAX_TOKENS] == 5
    assert async_plain.attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ["length"]
    tool_call = async_stream.attributes[semconv.GEN_AI_OUTPUT_MESSAGES][0]["tool_calls"][0]
    assert tool_call["function"] == {"name": "calculator", "arguments": '{"expression": "6 * 7"}'}
    assert async_stream.attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ["tool_calls"]


def test_an_uninstrument_does_not_leak_into_the_next_test(env: ProxyEnv) -> None:
    agl.uninstrument("openai")
    reset_adapters()  # what the suites' autouse fixture (tests/conftest.py) runs between tests
    assert adapters.active_adapters() == []
    with agl.TrainingContext(task_id="after", store=env.store) as ctx:
        assert "openai" in adapters.active_adapters()
        client = openai.OpenAI(base_url=ctx.llm().endpoint, api_key="unused", max_retries=0)
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert adapters.active_adapters() == []
    assert len(env.tree(ctx.rollout_id).client_llm_spans("openai")) == 1


def _two_calls(store: Any, base_url: str | None = None) -> agl.TrainingContext:
    with agl.TrainingContext(task_id="ids", store=store) as ctx:
        client = openai.OpenAI(base_url=base_url or ctx.llm().endpoint, api_key="unused", max_retries=0)
        for question in ("hi", "again"):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}])
        agl.emit_reward(1.0)
    return ctx


def test_a_bypassed_proxy_is_reported_per_call_in_the_agents_process(
    env: ProxyEnv, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"):
        ctx = _two_calls(env.store, base_url=env.upstream.url)  # straight to the model, not through the proxy
    (printed,) = [r.getMessage() for r in caplog.records if "did not go through the proxy" in r.getMessage()]
    assert printed.startswith(f"agent-lightning: 2 LLM call(s) of rollout {ctx.rollout_id}")
    assert "ctx.llm().endpoint" in printed
    tree = env.tree(ctx.rollout_id)
    assert [s.attributes.get(semconv.RECORDED_BY) for s in tree.of_kind("llm")] == [None, None]  # adapter's own
    rollout = asyncio.run(env.store.get_rollout(ctx.rollout_id))
    (warning,) = agl.build_episode(rollout, tree.spans).warnings
    assert warning.startswith("2 LLM call(s) without token ids were skipped: the call did not go through the proxy")


def test_an_upstream_without_token_ids_is_reported_per_call(caplog: pytest.LogCaptureFixture) -> None:
    from agent_lightning.store.memory import InMemoryLightningStore
    from agent_lightning.types import LLM
    from agent_lightning_proxy import LLMProxy
    from agent_lightning_testkit.scripted_llm import ScriptedLLM

    store = InMemoryLightningStore()
    with ScriptedLLM("no ids", token_ids=False) as upstream, LLMProxy(store, upstream.url) as proxy:
        asyncio.run(store.add_resources({"policy": LLM(endpoint=proxy.url, model=MODEL)}))
        with caplog.at_level("WARNING"):
            ctx = _two_calls(store)
        spans = asyncio.run(store.query_spans(ctx.rollout_id))
    assert not [r for r in caplog.records if "did not go through the proxy" in r.getMessage()]
    llms = [s for s in spans if s.kind == "llm"]
    assert [s.attributes.get(semconv.RECORDED_BY) for s in llms] == ["proxy", "proxy"]  # one span per call
    rollout = asyncio.run(store.get_rollout(ctx.rollout_id))
    (warning,) = agl.build_episode(rollout, spans).warnings
    assert warning.startswith("2 LLM call(s) without token ids were skipped: the upstream returned no token ids")
    assert "return_token_ids" in warning
