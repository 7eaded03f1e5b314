"""Chat templates with tools, tool-call parsing, and tool calls end to end from a model trained in the test."""

from __future__ import annotations

import copy
import json

import openai
import pytest
import torch
from agent_lightning_rl.policy import PolicyServer, parse_tool_calls, render_chat
from agent_lightning_rl.policy.chat import ChatFormatError
from conftest import MODEL_NAME, TOOL_CALL_TEXT

ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
    },
}
QUESTION = [{"role": "user", "content": "What is 2+3?"}]


def test_tools_go_into_the_system_prompt_when_the_template_has_no_tool_support(tokenizer):
    history = [
        {"role": "system", "content": "Be brief."},
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
    ]
    prompt = render_chat(tokenizer, history, [ADD_TOOL])
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\nYou are a function calling AI model.")
    assert json.dumps(ADD_TOOL["function"]) in prompt
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>' in prompt
    assert "<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_a_template_that_takes_tools_renders_them_itself(tokenizer):
    native = copy.deepcopy(tokenizer)
    native.chat_template = (
        "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}|{% endif %}"
        "{% for m in messages %}{{ m.role }}: {{ m.content }}"
        "{% for c in m.tool_calls or [] %} CALL {{ c.function.name }}({{ c.function.arguments.a }}){% endfor %}|"
        "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    history = [
        *QUESTION,
        {
            "role": "assistant",
            "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}],
        },
    ]
    assert (
        render_chat(native, history, [ADD_TOOL]) == "TOOLS:add;|user: What is 2+3?|assistant:  CALL add(2)|assistant:"
    )


def test_content_parts_are_joined_and_unsupported_parts_are_named(tokenizer):
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+3?"}]}]
    assert render_chat(tokenizer, parts) == render_chat(tokenizer, QUESTION)
    with pytest.raises(ChatFormatError, match="image_url"):
        render_chat(tokenizer, [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        (TOOL_CALL_TEXT, None, [("add", {"a": 2, "b": 3})]),
        (
            'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>',
            "Let me add.",
            [("add", {"a": 1})],
        ),
        (
            '<tool_call>[{"name": "add", "arguments": {"a": 1}}, {"name": "mul", "arguments": "{}"}]</tool_call>',
            None,
            [("add", {"a": 1}), ("mul", {})],
        ),
        ('<tool_call>{"name": "add", "parameters": {"b": 4}}', None, [("add", {"b": 4})]),  # unclosed at the end
        ('```json\n{"name": "add", "arguments": {"a": 2}}\n```', None, [("add", {"a": 2})]),
        ('{"name": "unknown_tool", "arguments": {}}', '{"name": "unknown_tool", "arguments": {}}', []),
        ("<tool_call>not json</tool_call>", "<tool_call>not json</tool_call>", []),
        ("The answer is 5.", "The answer is 5.", []),
    ],
)
def test_tool_calls_are_parsed_into_openai_shape(text, content, calls):
    parsed_content, parsed_calls = parse_tool_calls(text, {"add", "mul"})
    assert parsed_content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed_calls] == calls
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in parsed_calls)


@pytest.fixture
def tool_calling_model(model, tokenizer):
    """The tiny model, trained in-test until greedy decoding answers QUESTION (with the add tool) by a tool call."""
    prompt = tokenizer(render_chat(tokenizer, QUESTION, [ADD_TOOL]), add_special_tokens=False)["input_ids"]
    target = tokenizer(TOOL_CALL_TEXT, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt + target])
    labels = torch.tensor([[-100] * len(prompt) + target])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(300):
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.01:
            break
    model.eval()
    return model


def test_a_tool_call_comes_back_as_openai_tool_calls_with_token_ids(tool_calling_model, tokenizer):
    with PolicyServer(tool_calling_model, tokenizer, model_name=MODEL_NAME) as server:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
        response = client.chat.completions.create(
            model=MODEL_NAME, messages=QUESTION, tools=[ADD_TOOL], temperature=0, max_tokens=60
        )
        chunks = list(
            client.chat.completions.create(
                model=MODEL_NAME, messages=QUESTION, tools=[ADD_TOOL], temperature=0, max_tokens=60, stream=True
            )
        )
        untooled = client.chat.completions.create(
            model=MODEL_NAME, messages=QUESTION, tools=[ADD_TOOL], tool_choice="none", temperature=0, max_tokens=60
        )

    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "add" and json.loads(call.function.arguments) == {"a": 2, "b": 3}
    assert tokenizer.decode(choice.token_ids, skip_special_tokens=True) == TOOL_CALL_TEXT
    assert choice.token_ids[-1] == tokenizer.eos_token_id  # the sampled EOS is part of the ids to train on
    assert len(choice.logprobs.content) == len(choice.token_ids)

    streamed_calls = [tc for c in chunks for ch in c.choices for tc in (ch.delta.tool_calls or [])]
    assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in streamed_calls] == [
        ("add", {"a": 2, "b": 3})
    ]
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["tool_calls"]
    assert [i for c in chunks for ch in c.choices for i in ch.token_ids] == choice.token_ids

    # tool_choice="none": no tools in the prompt, no parsing
    assert untooled.choices[0].message.tool_calls is None
    assert untooled.prompt_token_ids != response.prompt_token_ids
