"""The OpenAI adapter against the test kit's adapter conformance suite: a plain SDK tool-calling loop."""

from __future__ import annotations

import json

import agent_lightning as agl
import openai
from agent_lightning import semconv
from agent_lightning_testkit import AdapterConformanceSuite
from agent_lightning_testkit.adapters import MODEL
from openai.types.chat import ChatCompletion

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression.",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
        },
    }
]

SOLVER = {semconv.AGENT_NAME: "solver"}
"""The agent's own span: its model calls carry its name."""


def client(ctx: agl.TrainingContext) -> openai.OpenAI:
    return openai.OpenAI(base_url=ctx.llm().endpoint, api_key="unused", max_retries=0)


def answered(messages: list[dict], reply: ChatCompletion) -> str | None:
    """The agent's step on a reply: its answer, or ``None`` after running the tools it asked for."""
    message = reply.choices[0].message
    if not message.tool_calls:
        return message.content or ""
    messages.append(message.model_dump(exclude_none=True))
    for call in message.tool_calls:
        result = str(eval(json.loads(call.function.arguments)["expression"]))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return None


def solve(client: openai.OpenAI, question: str, system: str | None = None) -> str:
    """A tiny tool-calling agent written against the plain SDK."""
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    for _ in range(3):
        answer = answered(
            messages, client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, temperature=0.5)
        )
        if answer is not None:
            return answer
    raise AssertionError("the agent did not finish")


async def asolve(client: openai.AsyncOpenAI, question: str) -> str:
    """:func:`solve` with the async client."""
    messages: list[dict] = [{"role": "user", "content": question}]
    while (answer := answered(messages, await client.chat.completions.create(model=MODEL, messages=messages))) is None:
        pass
    return answer


class TestOpenAIConformance(AdapterConformanceSuite):
    adapter_name = "openai"
    records_tools = False  # the SDK has no tools: the agent's own loop runs them

    def run_agent(self, ctx: agl.TrainingContext, question: str) -> str:
        with agl.span("solver", **SOLVER):
            return solve(client(ctx), question)

    async def arun_agent(self, ctx: agl.TrainingContext, question: str) -> str:
        async_client = openai.AsyncOpenAI(base_url=ctx.llm().endpoint, api_key="unused", max_retries=0)
        with agl.span("solver", **SOLVER):
            return await asolve(async_client, question)

    def stream_reply(self, ctx: agl.TrainingContext, prompt: str) -> str:
        with client(ctx).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], stream=True
        ) as stream:
            assert isinstance(stream, openai.Stream)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
