"""The LLM proxy over real HTTP: OpenAI SDK and LangChain clients → proxy → scripted upstream → store."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from agent_lightning import semconv
from agent_lightning.store import InMemoryLightningStore
from agent_lightning.types import AttemptedRollout, RolloutRequest, Span
from agent_lightning_proxy import LLMProxy
from agent_lightning_testkit.scripted_llm import ByteBPETokenizer, Reply, ScriptCall, ScriptedLLM, ToolCall

pytestmark = pytest.mark.timeout(120)

TOKENIZER = ByteBPETokenizer()
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def script(call: ScriptCall) -> str | Reply:
    """Replies keyed on the last user message, so one upstream serves every test."""
    last = call.messages[-1]
    if last.get("role") == "tool":
        return f"It is {last['content']}."
    text = call.last_user_text
    if text.startswith("weather"):
        return Reply(tool_calls=[ToolCall("get_weather", {"city": text.split()[-1]}, id=f"call_{call.call_index}")])
    if text == "fail":
        return Reply(status=500, error_message="the GPU caught fire")
    if text == "slow":
        return Reply(text="too late", delay=3.0)
    if text == "broken stream":
        return Reply(text="one two three four five six", stream_error_after=2)
    if text == "spell it":
        return Reply(token_ids=TOKENIZER.encode_bytes("the answer"))
    return f"echo: {text} (choice {call.choice_index})"


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedLLM]:
    with ScriptedLLM(script) as llm:
        yield llm


@pytest.fixture(scope="module")
def store() -> InMemoryLightningStore:
    return InMemoryLightningStore()


@pytest.fixture(scope="module")
def proxy(store: InMemoryLightningStore, upstream: ScriptedLLM) -> Iterator[LLMProxy]:
    with LLMProxy(store, upstream.url, model_map={"gpt-4o-mini": "policy"}) as running:
        yield running


def start(store: InMemoryLightningStore) -> AttemptedRollout:
    return asyncio.run(store.start_rollout(RolloutRequest(input={"q": 1}), worker_id="w"))


def spans_of(proxy: LLMProxy, store: InMemoryLightningStore, rollout_id: str) -> list[Span]:
    assert proxy.flush(10)
    return asyncio.run(store.query_spans(rollout_id, kinds=["llm"]))


def client(base_url: str, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, **options)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def assert_ids_match(span: Span, upstream: ScriptedLLM, call_index: int = -1, choice: int = 0) -> None:
    sampled = upstream.calls[call_index]
    attrs = span.attributes
    assert attrs[semconv.TOKEN_IDS_AVAILABLE] is True
    assert (
        attrs[semconv.PROMPT_TOKEN_IDS] == sampled.prompt_token_ids[0 if len(sampled.prompt_token_ids) == 1 else choice]
    )
    assert attrs[semconv.COMPLETION_TOKEN_IDS] == sampled.choices[choice].token_ids
    assert attrs[semconv.COMPLETION_LOGPROBS] == sampled.choices[choice].logprobs
    assert attrs[semconv.CHOICE_INDEX] == choice


# --------------------------------------------------------------------------- OpenAI SDK
def test_sync_chat_is_answered_and_recorded_with_the_sampled_token_ids(proxy, store, upstream) -> None:
    attempted = start(store)
    sdk = client(proxy.base_url(attempted.rollout_id, attempted.attempt_id))
    raw = sdk.chat.completions.with_raw_response.create(
        model="policy",
        messages=user("hello"),
        temperature=0.7,
        top_p=0.9,
        max_tokens=64,
        stop=["\n\n"],
        extra_headers={"x-agl-parent-span-id": "0123456789abcdef"},
    )
    response = raw.parse()
    assert response.choices[0].message.content == "echo: hello (choice 0)"
    assert response.choices[0].logprobs is None  # the proxy asked for logprobs, the agent did not
    assert "prompt_token_ids" not in (response.model_extra or {})
    assert "token_ids" not in (response.choices[0].model_extra or {})
    assert upstream.calls[-1].body["return_token_ids"] is True and upstream.calls[-1].body["logprobs"] is True

    (span,) = spans_of(proxy, store, attempted.rollout_id)
    assert raw.headers["x-agl-span-id"] == span.span_id
    assert raw.headers["x-agl-model-version"] == "scripted-v1"
    assert span.kind == "llm" and span.name == "chat policy" and span.status.code == "ok"
    assert span.attempt_id == attempted.attempt_id and span.parent_id == "0123456789abcdef"
    assert span.sequence_id >= 1_000_000
    assert_ids_match(span, upstream)
    attrs = span.attributes
    assert attrs[semconv.GEN_AI_OPERATION_NAME] == "chat"
    assert attrs[semconv.GEN_AI_REQUEST_MODEL] == "policy"
    assert attrs[semconv.GEN_AI_REQUEST_TEMPERATURE] == 0.7
    assert attrs[semconv.GEN_AI_REQUEST_TOP_P] == 0.9
    assert attrs[semconv.GEN_AI_REQUEST_MAX_TOKENS] == 64
    assert attrs[semconv.GEN_AI_REQUEST_STOP_SEQUENCES] == ["\n\n"]
    assert attrs[semconv.GEN_AI_INPUT_MESSAGES] == user("hello")
    assert attrs[semconv.GEN_AI_OUTPUT_MESSAGES] == [{"role": "assistant", "content": "echo: hello (choice 0)"}]
    assert attrs[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ["stop"]
    assert attrs[semconv.GEN_AI_RESPONSE_ID] == response.id
    assert attrs[semconv.RESOURCES_ID] == "scripted-v1"
    assert attrs[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == len(attrs[semconv.COMPLETION_TOKEN_IDS])
    assert attrs[semconv.LATENCY_MS] > 0
    assert span.end_time is not None and span.end_time >= span.start_time


def test_an_agent_asking_for_token_ids_and_logprobs_gets_them(proxy, store, upstream) -> None:
    attempted = start(store)
    sdk = client(proxy.base_url(attempted.rollout_id))
    response = sdk.chat.completions.create(
        model="policy", messages=user("ids please"), logprobs=True, extra_body={"return_token_ids": True}
    )
    sampled = upstream.calls[-1].choices[0]
    assert response.model_extra["prompt_token_ids"] == upstream.calls[-1].prompt_token_ids[0]
    assert response.choices[0].model_extra["token_ids"] == sampled.token_ids
    assert [c.logprob for c in response.choices[0].logprobs.content] == sampled.logprobs
    (span,) = spans_of(proxy, store, attempted.rollout_id)
    assert_ids_match(span, upstream)


def test_async_client_and_async_streaming(proxy, store, upstream) -> None:
    attempted = start(store)

    async def main() -> tuple[str, str]:
        sdk = openai.AsyncOpenAI(base_url=proxy.base_url(attempted.rollout_id), api_key="k", max_retries=0)
        plain = await sdk.chat.completions.create(model="policy", messages=user("async"))
        stream = await sdk.chat.completions.create(model="policy", messages=user("streamed"), stream=True)
        text = ""
        async for chunk in stream:
            assert "token_ids" not in (chunk.choices[0].model_extra or {}) if chunk.choices else True
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        await sdk.close()
        return plain.choices[0].message.content or "", text

    plain, streamed = asyncio.run(main())
    assert plain == "echo: async (choice 0)"
    assert streamed == "echo: streamed (choice 0)"
    first, second = spans_of(proxy, store, attempted.rollout_id)
    assert_ids_match(first, upstream, call_index=-2)
    assert_ids_match(second, upstream, call_index=-1)
    assert second.attributes[semconv.GEN_AI_OUTPUT_MESSAGES] == [
        {"role": "assistant", "content": "echo: streamed (choice 0)"}
    ]
    assert first.sequence_id < second.sequence_id


def test_streaming_with_n_choices_records_one_span_per_choice(proxy, store, upstream) -> None:
    attempted = start(store)
    sdk = client(proxy.base_url(attempted.rollout_id))
    raw = sdk.chat.completions.with_raw_response.create(
        model="policy", messages=user("many"), n=3, stream=True, stream_options={"include_usage": True}
    )
    texts = ["", "", ""]
    for chunk in raw.parse():
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [f"echo: many (choice {i})" for i in range(3)]
    spans = spans_of(proxy, store, attempted.rollout_id)
    assert raw.headers["x-agl-span-id"].split(",") == [s.span_id for s in spans]
    for index, span in enumerate(spans):
        assert_ids_match(span, upstream, choice=index)
        assert span.attributes[semconv.GEN_AI_OUTPUT_MESSAGES][0]["content"] == texts[index]
    assert len({s.sequence_id for s in spans}) == 3


def test_non_streaming_n_choices(proxy, store, upstream) -> None:
    attempted = start(store)
    response = client(proxy.base_url(attempted.rollout_id)).chat.completions.create(
        model="policy", messages=user("two"), n=2
    )
    assert [c.message.content for c in response.choices] == ["echo: two (choice 0)", "echo: two (choice 1)"]
    spans = spans_of(proxy, store, attempted.rollout_id)
    assert [s.attributes[semconv.CHOICE_INDEX] for s in spans] == [0, 1]
    for index, span in enumerate(spans):
        assert_ids_match(span, upstream, choice=index)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_round_trip(proxy, store, upstream, stream: bool) -> None:
    attempted = start(store)
    sdk = client(proxy.base_url(attempted.rollout_id))
    messages: list[dict[str, Any]] = user("weather in Paris")
    if stream:
        calls: dict[int, dict[str, Any]] = {}
        finish = None
        for chunk in sdk.chat.completions.create(model="policy", messages=messages, tools=[WEATHER_TOOL], stream=True):
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for delta in choice.delta.tool_calls or []:
                    slot = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                    slot["id"] = delta.id or slot["id"]
                    slot["name"] += (delta.function and delta.function.name) or ""
                    slot["arguments"] += (delta.function and delta.function.arguments) or ""
        (call,) = calls.values()
        assert finish == "tool_calls"
        tool_call = {
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]},
        }
    else:
        response = sdk.chat.completions.create(model="policy", messages=messages, tools=[WEATHER_TOOL])
        assert response.choices[0].finish_reason == "tool_calls"
        tool_call = response.choices[0].message.tool_calls[0].model_dump(exclude_none=True)
    assert tool_call["function"]["name"] == "get_weather"
    assert json.loads(tool_call["function"]["arguments"]) == {"city": "Paris"}

    messages = [
        *messages,
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": tool_call["id"], "content": "sunny"},
    ]
    answer = sdk.chat.completions.create(model="policy", messages=messages, tools=[WEATHER_TOOL])
    assert answer.choices[0].message.content == "It is sunny."

    first, second = spans_of(proxy, store, attempted.rollout_id)
    assert first.attributes[semconv.GEN_AI_TOOL_DEFINITIONS] == [WEATHER_TOOL]
    (recorded,) = first.attributes[semconv.GEN_AI_OUTPUT_MESSAGES]
    assert recorded["tool_calls"][0]["function"]["name"] == "get_weather"
    assert json.loads(recorded["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert first.attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ["tool_calls"]
    assert_ids_match(first, upstream, call_index=-2)
    assert_ids_match(second, upstream, call_index=-1)
    assert second.attributes[semconv.GEN_AI_INPUT_MESSAGES][-1]["role"] == "tool"


@pytest.mark.parametrize("stream", [False, True])
def test_text_completions_with_several_prompts(proxy, store, upstream, stream: bool) -> None:
    attempted = start(store)
    sdk = client(proxy.base_url(attempted.rollout_id))
    prompts = ["first prompt", "second prompt"]
    texts = ["", "", "", ""]
    if stream:
        for chunk in sdk.completions.create(model="policy", prompt=prompts, n=2, max_tokens=50, stream=True):
            for choice in chunk.choices:
                texts[choice.index] += choice.text
    else:
        response = sdk.completions.create(model="policy", prompt=prompts, n=2, max_tokens=50)
        texts = [c.text for c in response.choices]
        assert all(c.logprobs is None for c in response.choices)
    assert texts == [f"echo: {prompts[i // 2]} (choice {i})" for i in range(4)]
    spans = spans_of(proxy, store, attempted.rollout_id)
    assert len(spans) == 4
    sampled = upstream.calls[-1]
    for index, span in enumerate(spans):
        assert span.name == "text_completion policy"
        assert span.attributes[semconv.GEN_AI_INPUT_MESSAGES] == [{"role": "user", "content": prompts[index // 2]}]
        assert span.attributes[semconv.PROMPT_TOKEN_IDS] == sampled.prompt_token_ids[index // 2]
        assert span.attributes[semconv.COMPLETION_TOKEN_IDS] == sampled.choices[index].token_ids
        assert span.attributes[semconv.COMPLETION_LOGPROBS] == sampled.choices[index].logprobs


def test_models_are_forwarded_and_model_map_renames(proxy, store, upstream) -> None:
    sdk = client(proxy.url)
    assert [m.id for m in sdk.models.list()] == ["scripted"]
    attempted = start(store)
    client(proxy.base_url(attempted.rollout_id)).chat.completions.create(model="gpt-4o-mini", messages=user("m"))
    assert upstream.calls[-1].body["model"] == "policy"
    (span,) = spans_of(proxy, store, attempted.rollout_id)
    assert span.attributes[semconv.GEN_AI_REQUEST_MODEL] == "gpt-4o-mini"


# --------------------------------------------------------------------------- LangChain
def test_langchain_chat_openai_invoke_stream_and_tools(proxy, store, upstream) -> None:
    from langchain_openai import ChatOpenAI

    attempted = start(store)
    llm = ChatOpenAI(model="policy", base_url=proxy.base_url(attempted.rollout_id), api_key="k", max_retries=0)
    assert llm.invoke("langchain").content == "echo: langchain (choice 0)"
    assert "".join(str(c.content) for c in llm.stream("chunks")) == "echo: chunks (choice 0)"
    tool_message = llm.bind_tools([WEATHER_TOOL]).invoke("weather in Oslo")
    assert tool_message.tool_calls[0]["name"] == "get_weather"
    assert tool_message.tool_calls[0]["args"] == {"city": "Oslo"}
    spans = spans_of(proxy, store, attempted.rollout_id)
    assert len(spans) == 3
    for index, span in enumerate(spans):
        assert_ids_match(span, upstream, call_index=index - 3)
    assert spans[2].attributes[semconv.GEN_AI_OUTPUT_MESSAGES][0]["tool_calls"][0]["function"]["name"] == "get_weather"


# --------------------------------------------------------------------------- attribution
def test_concurrent_calls_from_several_rollouts_are_attributed_correctly(proxy, store) -> None:
    rollouts = [start(store) for _ in range(6)]

    async def agent(attempted: AttemptedRollout, turns: int) -> list[str]:
        sdk = openai.AsyncOpenAI(base_url=proxy.base_url(attempted.rollout_id), api_key="k", max_retries=0)
        try:
            calls = [
                sdk.chat.completions.create(
                    model="policy", messages=user(f"{attempted.rollout_id} turn {t}"), stream=t % 2 == 1
                )
                for t in range(turns)
            ]
            results = await asyncio.gather(*calls)
            texts = []
            for result in results:
                if isinstance(result, openai.AsyncStream):
                    texts.append("".join([c.choices[0].delta.content or "" async for c in result if c.choices]))
                else:
                    texts.append(result.choices[0].message.content)
            return texts
        finally:
            await sdk.close()

    async def main() -> list[list[str]]:
        return await asyncio.gather(*(agent(r, 5) for r in rollouts))

    answers = asyncio.run(main())
    for attempted, texts in zip(rollouts, answers, strict=True):
        assert texts == [f"echo: {attempted.rollout_id} turn {t} (choice 0)" for t in range(5)]
        spans = spans_of(proxy, store, attempted.rollout_id)
        assert len(spans) == 5
        assert {s.attempt_id for s in spans} == {attempted.attempt_id}
        asked = sorted(s.attributes[semconv.GEN_AI_INPUT_MESSAGES][0]["content"] for s in spans)
        assert asked == [f"{attempted.rollout_id} turn {t}" for t in range(5)]
        assert len({s.sequence_id for s in spans}) == 5
        assert len({s.trace_id for s in spans}) == 1
        for span in spans:
            ids = span.attributes[semconv.COMPLETION_TOKEN_IDS]
            content = span.attributes[semconv.GEN_AI_OUTPUT_MESSAGES][0]["content"]
            assert TOKENIZER.decode(ids) == content


def test_attribution_by_headers_and_by_latest_attempt(proxy, store) -> None:
    attempted = start(store)
    headers = {"x-agl-rollout-id": attempted.rollout_id, "x-agl-attempt-id": attempted.attempt_id}
    client(proxy.url, default_headers=headers).chat.completions.create(model="policy", messages=user("by headers"))
    only_rollout = {"x-agl-rollout-id": attempted.rollout_id}
    client(proxy.url, default_headers=only_rollout).chat.completions.create(model="policy", messages=user("latest"))
    client(proxy.base_url(attempted.rollout_id)).chat.completions.create(model="policy", messages=user("path"))
    spans = spans_of(proxy, store, attempted.rollout_id)
    assert [s.attributes[semconv.GEN_AI_INPUT_MESSAGES][0]["content"] for s in spans] == [
        "by headers",
        "latest",
        "path",
    ]
    assert {s.attempt_id for s in spans} == {attempted.attempt_id}


def test_unknown_rollout_or_attempt_is_an_openai_404_naming_the_id(proxy, store) -> None:
    with pytest.raises(openai.NotFoundError, match="ro-does-not-exist") as caught:
        client(proxy.base_url("ro-does-not-exist")).chat.completions.create(model="policy", messages=user("x"))
    assert caught.value.body["code"] == "rollout_not_found"
    attempted = start(store)
    with pytest.raises(openai.NotFoundError, match="at-nope") as caught:
        client(proxy.base_url(attempted.rollout_id, "at-nope")).chat.completions.create(
            model="policy", messages=user("x")
        )
    assert caught.value.body["code"] == "attempt_not_found"
    headers = {"x-agl-rollout-id": "ro-header-unknown"}
    with pytest.raises(openai.NotFoundError, match="ro-header-unknown"):
        client(proxy.url, default_headers=headers).chat.completions.create(model="policy", messages=user("x"))
    assert spans_of(proxy, store, attempted.rollout_id) == []


def test_a_rollout_that_never_started_is_refused(proxy, store) -> None:
    rollout = asyncio.run(store.enqueue_rollout({"q": 2}))
    with pytest.raises(openai.ConflictError, match="no attempt yet"):
        client(proxy.base_url(rollout.rollout_id)).chat.completions.create(model="policy", messages=user("x"))


def test_unattributed_calls_are_forwarded_but_not_recorded(proxy) -> None:
    before = proxy.stats()
    response = client(proxy.url).chat.completions.create(model="policy", messages=user("anonymous"))
    assert response.choices[0].message.content == "echo: anonymous (choice 0)"
    after = proxy.stats()
    assert after.unattributed_calls == before.unattributed_calls + 1
    assert after.recorded_spans == before.recorded_spans


# --------------------------------------------------------------------------- failures
def test_upstream_error_reaches_the_agent_and_fails_the_span(proxy, store) -> None:
    attempted = start(store)
    sdk = client(proxy.base_url(attempted.rollout_id))
    with pytest.raises(openai.InternalServerError, match="the GPU caught fire") as caught:
        sdk.chat.completions.create(model="policy", messages=user("fail"))
    assert caught.value.status_code == 500
    (span,) = spans_of(proxy, store, attempted.rollout_id)
    assert span.status.code == "error" and "the GPU caught fire" in (span.status.message or "")
    assert span.attributes[semconv.ERROR_TYPE] == "500"
    assert caught.value.response.headers["x-agl-span-id"] == span.span_id
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(model="policy", messages=user("fail"), stream=True)
    assert len(spans_of(proxy, store, attempted.rollout_id)) == 2


def test_error_in_the_middle_of_a_stream_fails_the_span(proxy, store) -> None:
    attempted = start(store)
    sdk = client(proxy.base_url(attempted.rollout_id))
    with pytest.raises(openai.APIError, match="scripted upstream failure"):
        for _ in sdk.chat.completions.create(model="policy", messages=user("broken stream"), stream=True):
            pass
    (span,) = spans_of(proxy, store, attempted.rollout_id)
    assert span.status.code == "error"
    assert span.attributes[semconv.ERROR_TYPE] == "server_error"


def test_upstream_timeout_is_a_504_and_a_failed_span(store, upstream) -> None:
    attempted = start(store)
    with LLMProxy(store, upstream.url, timeout=0.5) as impatient:
        with pytest.raises(openai.APIStatusError, match="timed out") as caught:
            client(impatient.base_url(attempted.rollout_id)).chat.completions.create(model="p", messages=user("slow"))
        assert caught.value.status_code == 504
        assert caught.value.body["code"] == "upstream_timeout"
        (span,) = spans_of(impatient, store, attempted.rollout_id)
    assert span.status.code == "error" and span.attributes[semconv.ERROR_TYPE] == "timeout"


def test_unreachable_upstream_is_a_502(store) -> None:
    attempted = start(store)
    with socket_port() as port, LLMProxy(store, f"http://127.0.0.1:{port}/v1", timeout=5) as orphan:
        with pytest.raises(openai.APIStatusError, match="unreachable") as caught:
            client(orphan.base_url(attempted.rollout_id)).chat.completions.create(model="p", messages=user("x"))
        assert caught.value.status_code == 502
        (span,) = spans_of(orphan, store, attempted.rollout_id)
    assert span.status.code == "error"


class socket_port:
    """A port nothing listens on (bound, not listening, while in use)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def test_malformed_request_is_a_400(proxy, store) -> None:
    attempted = start(store)
    response = httpx.post(f"{proxy.base_url(attempted.rollout_id)}/chat/completions", content=b"{not json")
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


# --------------------------------------------------------------------------- token ids
def test_upstream_without_token_ids_is_recorded_as_such_and_warned_about(store, caplog) -> None:
    attempted = start(store)
    with ScriptedLLM("plain text", token_ids=False, model_version=None) as bare, LLMProxy(store, bare.url) as proxy:
        with caplog.at_level(logging.WARNING, logger="agent_lightning_proxy"):
            for stream in (False, True):
                response = client(proxy.base_url(attempted.rollout_id)).chat.completions.create(
                    model="p", messages=user("x"), stream=stream
                )
                if stream:
                    assert "".join(c.choices[0].delta.content or "" for c in response if c.choices) == "plain text"
                else:
                    assert response.choices[0].message.content == "plain text"
        spans = spans_of(proxy, store, attempted.rollout_id)
        assert proxy.stats().calls_without_token_ids == 2
    assert len(spans) == 2
    for span in spans:
        assert span.status.code == "ok"
        assert span.attributes[semconv.TOKEN_IDS_AVAILABLE] is False
        assert "no token ids" in span.attributes["agl.llm.warning"]
        assert semconv.COMPLETION_TOKEN_IDS not in span.attributes
        assert semconv.RESOURCES_ID not in span.attributes
    assert sum("returned no token ids" in r.getMessage() for r in caplog.records) == 1  # loud, once


def test_captured_ids_are_what_was_sampled_even_where_retokenizing_drifts(proxy, store, upstream) -> None:
    attempted = start(store)
    for stream in (False, True):
        response = client(proxy.base_url(attempted.rollout_id)).chat.completions.create(
            model="policy", messages=user("spell it"), stream=stream
        )
        text = (
            "".join(c.choices[0].delta.content or "" for c in response if c.choices)
            if stream
            else response.choices[0].message.content
        )
        assert text == "the answer"
    sampled = TOKENIZER.encode_bytes("the answer")
    retokenized = TOKENIZER.encode(TOKENIZER.decode(sampled))
    assert retokenized != sampled  # re-tokenizing the text would train on ids that were never sampled
    for span in spans_of(proxy, store, attempted.rollout_id):
        assert span.attributes[semconv.COMPLETION_TOKEN_IDS] == sampled
        assert span.attributes[semconv.COMPLETION_TOKEN_IDS] != retokenized


def test_proxy_spans_build_a_training_episode(proxy, store, upstream) -> None:
    from agent_lightning.trajectory import build_episode
    from agent_lightning.types import Reward, new_span_id

    attempted = start(store)
    sdk = client(proxy.base_url(attempted.rollout_id))
    sdk.chat.completions.create(model="policy", messages=user("turn one"))
    sdk.chat.completions.create(model="policy", messages=user("turn two"))
    calls = spans_of(proxy, store, attempted.rollout_id)
    reward = Span(
        rollout_id=attempted.rollout_id,
        attempt_id=attempted.attempt_id,
        sequence_id=1,
        trace_id=calls[0].trace_id,
        span_id=new_span_id(),
        name="reward",
        kind="reward",
        attributes={semconv.REWARD_VALUE: Reward(value=1.0).value},
    )
    asyncio.run(store.add_spans([reward]))
    rollout = asyncio.run(store.get_rollout(attempted.rollout_id))
    episode = build_episode(rollout, asyncio.run(store.query_spans(attempted.rollout_id)))
    assert [s.completion_token_ids for s in episode.samples] == [c.choices[0].token_ids for c in upstream.calls[-2:]]
    assert [s.prompt_token_ids for s in episode.samples] == [c.prompt_token_ids[0] for c in upstream.calls[-2:]]
    assert all(s.reward == 1.0 for s in episode.samples)


# --------------------------------------------------------------------------- Responses API (forwarded, not recorded)
def test_responses_api_is_forwarded_unrecorded_and_parsed_by_the_sdk(proxy, store, upstream) -> None:
    attempted = start(store)
    sdk = client(proxy.base_url(attempted.rollout_id))
    before = proxy.stats()
    tool = {"type": "function", **WEATHER_TOOL["function"]}
    first = sdk.responses.create(model="policy", input="weather in Paris", tools=[tool], instructions="Be brief.")
    assert first.status == "completed" and upstream.calls[-1].endpoint == "responses"
    (call,) = first.output
    assert (call.type, call.name, json.loads(call.arguments)) == ("function_call", "get_weather", {"city": "Paris"})
    assert upstream.calls[-1].body["tools"] == [tool]
    follow_up = [
        {"role": "user", "content": "weather in Paris"},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]
    second = sdk.responses.create(model="policy", input=follow_up, tools=[tool])
    assert second.output_text == "It is sunny."
    assert second.usage is not None and second.usage.output_tokens == len(upstream.calls[-1].choices[0].token_ids)

    events = list(sdk.responses.create(model="policy", input="hello", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text == "echo: hello (choice 0)"
    assert [e.sequence_number for e in events] == list(range(len(events)))

    after = proxy.stats()
    assert after.recorded_spans == before.recorded_spans  # only chat/text completions are recorded
    assert spans_of(proxy, store, attempted.rollout_id) == []
