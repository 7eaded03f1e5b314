"""The LangChain adapter against the test kit's adapter conformance suite: a LangChain 1.x ``create_agent``."""

from __future__ import annotations

import importlib.metadata

import pytest
from packaging.version import Version

if Version(importlib.metadata.version("langchain")) < Version("1"):
    pytest.skip(
        "create_agent needs LangChain 1.x; with langchain<1 only tests/classic applies", allow_module_level=True
    )

import agent_lightning as agl
from agent_lightning_testkit import AdapterConformanceSuite
from langchain.agents import create_agent
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as 25 * 17."""
    return str(eval(expression))


def chat_model(ctx: agl.TrainingContext) -> ChatOpenAI:
    llm = ctx.llm()
    return ChatOpenAI(base_url=llm.endpoint, api_key="unused", model=llm.model, max_retries=0, temperature=0.2)


def last_text(state: dict) -> str:
    return str(state["messages"][-1].content)


class TestLangChainConformance(AdapterConformanceSuite):
    adapter_name = "langchain"

    def run_agent(self, ctx: agl.TrainingContext, question: str) -> str:
        agent = create_agent(chat_model(ctx), [calculator], name="calc_agent")
        return last_text(agent.invoke({"messages": [{"role": "user", "content": question}]}))

    async def arun_agent(self, ctx: agl.TrainingContext, question: str) -> str:
        agent = create_agent(chat_model(ctx), [calculator], name="calc_agent")
        return last_text(await agent.ainvoke({"messages": [{"role": "user", "content": question}]}))

    def stream_reply(self, ctx: agl.TrainingContext, prompt: str) -> str:
        chunks = [str(c.content) for c in chat_model(ctx).stream(prompt)]
        assert len([c for c in chunks if c]) > 1, "not streamed in several chunks"
        return "".join(chunks)
