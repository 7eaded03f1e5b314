"""The product article's LangChain snippet, verbatim, with real objects behind its names.

``AgentExecutor.from_agent_and_tools`` and ``agent.run`` exist only in LangChain < 1.0; run with
``pip install 'langchain>=0.3,<1' 'langchain-core>=0.3,<1' 'langchain-openai>=0.2,<0.4'``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Iterator

import pytest
from packaging.version import Version

if Version(importlib.metadata.version("langchain")) >= Version("1"):
    pytest.skip(
        "the article's classic AgentExecutor API needs langchain<1 (installed: "
        f"{importlib.metadata.version('langchain')}); run the langchain-classic session",
        allow_module_level=True,
    )

from agent_lightning import semconv
from agent_lightning.instrumentation.tracer import configure
from agent_lightning_langchain.handler import OUTPUTS
from agent_lightning_testkit.adapters import MODEL, ProxyEnv, scripted_proxy
from langchain.agents import create_tool_calling_agent
from langchain.agents.agent import RunnableMultiActionAgent
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI


@pytest.fixture
def env() -> Iterator[ProxyEnv]:
    with scripted_proxy() as env:
        yield env


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as 25 * 17."""
    return str(eval(expression))


@tool
def search(query: str) -> str:
    """Search the web."""
    return f"No results for {query!r}."


def compute_reward(result: str, expected: str) -> float:
    return 1.0 if expected in result else 0.0


def test_article_snippet_verbatim(env: ProxyEnv) -> None:
    # Built before any rollout exists, so the model points at the plain proxy URL; the OpenAI adapter's
    # rollout headers attribute its calls.
    llm = ChatOpenAI(base_url=env.proxy.url, api_key="unused", model=MODEL, max_retries=0)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a math solver."), ("human", "{input}"), ("placeholder", "{agent_scratchpad}")]
    )
    chat_agent = RunnableMultiActionAgent(
        runnable=create_tool_calling_agent(llm, [calculator, search], prompt),
        input_keys_arg=["input"],
        return_keys_arg=["output"],
    )
    expected_answer = "425"
    configure(env.store)  # the snippet's TrainingContext names no store: it writes to the default one

    # ---- the article's snippet, verbatim ----
    import agent_lightning as agl
    from langchain.agents import AgentExecutor

    # Initialize Lightning context
    with agl.TrainingContext(task_id="math_solver") as ctx:
        # Your existing agent code runs unchanged
        agent = AgentExecutor.from_agent_and_tools(agent=chat_agent, tools=[calculator, search], verbose=True)
        # Emit trace spans for training
        with agl.span("agent_step") as step:
            result = agent.run("What is 25 * 17?")
        # Emit reward signal based on outcome
        reward = compute_reward(result, expected_answer)
        agl.emit_reward(reward, span_id=step.id)
    # ---- end of the snippet ----

    assert result == "The answer is 425."
    tree = env.tree(ctx.rollout_id)
    assert tree.root.name == "math_solver"
    step_span = tree.child(tree.root, name="agent_step")
    executor = tree.child(step_span, kind="agent")
    assert executor.name == "AgentExecutor"
    assert executor.attributes[OUTPUTS] == {"output": "The answer is 425."}
    llms = tree.client_llm_spans("langchain")
    assert len(llms) == 2
    for span in llms:
        assert span.attributes[semconv.AGENT_NAME] == "AgentExecutor"
        assert tree.proxy_record(span).rollout_id == ctx.rollout_id
    run = tree.child(executor, kind="tool")
    assert run.name == "execute_tool calculator"
    assert run.attributes[semconv.GEN_AI_TOOL_CALL_ARGUMENTS] == {"expression": "25 * 17"}
    assert run.attributes[semconv.GEN_AI_TOOL_CALL_RESULT] == "425"
    reward_span = tree.child(step_span, kind="reward")
    assert reward_span.reward == 1.0

    rollout = asyncio.run(env.store.get_rollout(ctx.rollout_id))
    episode = agl.build_episode(rollout, tree.spans)
    assert len(episode.samples) == 2 and all(s.reward == 1.0 for s in episode.samples)
