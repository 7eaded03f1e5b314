"""The scripted upstream the proxy tests run against: tokenizer, script forms, protocol fields, failures."""

from __future__ import annotations

import httpx
import openai
import pytest
from agent_lightning_testkit.scripted_llm import ByteBPETokenizer, Reply, ScriptedLLM, ToolCall, scripted_logprob

pytestmark = pytest.mark.timeout(60)


def test_tokenizer_round_trips_text_but_not_every_id_sequence() -> None:
    tok = ByteBPETokenizer()
    for text in ["", "the answer is 42", "héllo ✓ <tool_call>{}</tool_call>", "<|im_start|>user\nhi<|im_end|>"]:
        assert tok.decode(tok.encode(text), skip_special_tokens=False) == text
    assert tok.encode("<|eos|>") == [tok.eos_id]
    assert tok.decode([*tok.encode("hi"), tok.eos_id]) == "hi"
    spelled = tok.encode_bytes("the")
    assert tok.decode(spelled) == "the" and tok.encode("the") != spelled  # two id sequences, one text
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_list_script_answers_in_order_and_says_when_exhausted() -> None:
    with ScriptedLLM(["one", Reply(text="two")]) as llm:
        sdk = openai.OpenAI(base_url=llm.url, api_key="k", max_retries=0)
        messages = [{"role": "user", "content": "q"}]
        assert sdk.chat.completions.create(model="m", messages=messages).choices[0].message.content == "one"
        assert sdk.chat.completions.create(model="m", messages=messages).choices[0].message.content == "two"
        with pytest.raises(openai.InternalServerError, match="script exhausted"):
            sdk.chat.completions.create(model="m", messages=messages)


def test_token_ids_and_logprobs_follow_the_protocol_only_when_asked() -> None:
    with ScriptedLLM("the answer") as llm:
        url = f"{llm.url}/chat/completions"
        body = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
        plain = httpx.post(url, json=body).json()
        assert "prompt_token_ids" not in plain and "token_ids" not in plain["choices"][0]
        assert plain["choices"][0]["logprobs"] is None
        full = httpx.post(url, json={**body, "return_token_ids": True, "logprobs": True}).json()
        ids = full["choices"][0]["token_ids"]
        assert ids == [*llm.tokenizer.encode("the answer"), llm.tokenizer.eos_id]
        assert full["prompt_token_ids"] == llm.calls[-1].prompt_token_ids[0]
        logprobs = [c["logprob"] for c in full["choices"][0]["logprobs"]["content"]]
        assert logprobs == [scripted_logprob(t, j) for j, t in enumerate(ids)]
        response = httpx.post(url, json={**body, "return_token_ids": True})
        assert response.headers["x-agl-model-version"] == "scripted-v1"
        truncated = httpx.post(url, json={**body, "return_token_ids": True, "max_tokens": 2}).json()
        assert truncated["choices"][0]["finish_reason"] == "length"
        assert len(truncated["choices"][0]["token_ids"]) == 2


def test_streamed_ids_concatenate_to_the_sampled_ids() -> None:
    with ScriptedLLM(Reply(tool_calls=[ToolCall("f", {"x": 1})]), tokens_per_chunk=3) as llm:
        body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True, "return_token_ids": True}
        lines = httpx.post(f"{llm.url}/chat/completions", json=body).text.split("\n\n")
        import json

        chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        assert chunks[0]["prompt_token_ids"] == llm.calls[-1].prompt_token_ids[0]
        ids = [t for c in chunks for ch in c["choices"] for t in ch.get("token_ids", [])]
        assert ids == llm.calls[-1].choices[0].token_ids
        assert lines[-2] == "data: [DONE]"


def test_injected_delay_and_status() -> None:
    with ScriptedLLM(Reply(status=503, error_message="overloaded", delay=0.2)) as llm:
        sdk = openai.OpenAI(base_url=llm.url, api_key="k", max_retries=0)
        with pytest.raises(openai.APIStatusError, match="overloaded") as caught:
            sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}])
        assert caught.value.status_code == 503
        assert llm.calls[-1].status == 503
