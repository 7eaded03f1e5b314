"""The LangChain adapter with real LangChain/LangGraph objects over real HTTP: ChatOpenAI → proxy → scripted LLM."""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Iterator
from typing import Any, TypedDict

import pytest
from packaging.version import Version

if Version(importlib.metadata.version("langchain")) < Version("1"):
    pytest.skip(
        "these tests use LangChain 1.x (create_agent); with langchain<1 only tests/classic applies",
        allow_module_level=True,
    )

import agent_lightning as agl
from agent_lightning import semconv
from agent_lightning.instrumentation import adapter as adapters
from agent_lightning.types import PromptTemplate
from agent_lightning_langchain.handler import (
    INPUTS,
    LANGGRAPH_NODE,
    OUTPUTS,
    RETRIEVER_DOCUMENTS,
    RETRIEVER_QUERY,
    RUN_TYPE,
)
from agent_lightning_testkit.adapters import MODEL, ProxyEnv, SpanTree, scripted_proxy
from agent_lightning_testkit.scripted_llm import ScriptCall
from langchain.agents import create_agent
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, StateGraph

ROUTER_PROMPT = PromptTemplate(template="You are the router. Reply with the topic of: {question}")
SOLVER_PROMPT = PromptTemplate(template="You are the solver. Solve: {question}")


@pytest.fixture
def env() -> Iterator[ProxyEnv]:
    with scripted_proxy() as env:
        yield env


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as 25 * 17."""
    if "/ 0" in expression:
        raise ZeroDivisionError(f"cannot evaluate {expression}: division by zero")
    return str(eval(expression))


def chat_model(ctx: agl.TrainingContext) -> ChatOpenAI:
    llm = ctx.llm()
    return ChatOpenAI(base_url=llm.endpoint, api_key="unused", model=llm.model, max_retries=0, temperature=0.2)


def assert_model_call(tree: SpanTree, node: Any, agent: str) -> Any:
    llm = tree.child(node, kind="llm")
    assert llm.name == f"chat {MODEL}"
    assert llm.attributes[semconv.ADAPTER] == "langchain"
    assert llm.attributes[semconv.GEN_AI_REQUEST_MODEL] == MODEL
    assert llm.attributes[semconv.GEN_AI_REQUEST_TEMPERATURE] == 0.2
    assert llm.attributes[semconv.AGENT_NAME] == agent
    assert "policy" in llm.attributes[semconv.RESOURCE_NAMES]
    assert llm.status.code == "ok"
    assert llm.attributes["agl.langchain.run_id"]  # what LangChain knew, joined onto the proxy's record
    tree.proxy_record(llm)  # the one span of the call: the proxy's record, with the token ids
    return llm


def test_create_agent_tool_calling_span_tree(env: ProxyEnv) -> None:
    with agl.TrainingContext(task_id="math", store=env.store) as ctx:
        agent = create_agent(chat_model(ctx), [calculator], system_prompt="Use the calculator.", name="calc_agent")
        state = agent.invoke({"messages": [{"role": "user", "content": "What is 25 * 17?"}]})
    assert state["messages"][-1].content == "The answer is 425."

    tree = env.tree(ctx.rollout_id)
    graph = tree.child(tree.root, kind="agent")
    assert graph.name == "calc_agent"
    assert graph.attributes[semconv.AGENT_NAME] == "calc_agent"
    assert graph.attributes[semconv.ADAPTER] == "langchain"
    model_1, tools, model_2 = tree.children(graph)
    assert [model_1.name, tools.name, model_2.name] == ["model", "tools", "model"]
    tree.assert_one_span_per_call(env.upstream_calls, adapter="langchain")
    assert all(s.kind == "agent" and s.attributes[LANGGRAPH_NODE] == s.name for s in (model_1, tools, model_2))

    first = assert_model_call(tree, model_1, "calc_agent")
    assert first.attributes[semconv.GEN_AI_INPUT_MESSAGES][0] == {"role": "system", "content": "Use the calculator."}
    assert first.attributes[semconv.GEN_AI_TOOL_DEFINITIONS][0]["function"]["name"] == "calculator"
    call = first.attributes[semconv.GEN_AI_OUTPUT_MESSAGES][0]["tool_calls"][0]
    assert call["function"]["name"] == "calculator"

    run = tree.child(tools, kind="tool")
    assert run.name == "execute_tool calculator"
    assert run.attributes[semconv.GEN_AI_TOOL_NAME] == "calculator"
    assert run.attributes[semconv.GEN_AI_TOOL_CALL_ARGUMENTS] == {"expression": "25 * 17"}
    assert run.attributes[semconv.GEN_AI_TOOL_CALL_RESULT] == "425"
    assert run.attributes[semconv.GEN_AI_TOOL_CALL_ID] == call["id"]
    assert run.attributes[semconv.AGENT_NAME] == "calc_agent"

    second = assert_model_call(tree, model_2, "calc_agent")
    assert second.attributes[semconv.GEN_AI_OUTPUT_MESSAGES][0]["content"] == "The answer is 425."
    # spans are in time order and nothing else was recorded
    assert {s.kind for s in tree.spans} == {"agent", "llm", "tool"}


def graph_script(call: ScriptCall) -> str:
    system = call.messages[0]["content"] if call.messages else ""
    return "arithmetic" if "router" in system else "425"


class GraphState(TypedDict, total=False):
    question: str
    topic: str
    answer: str


def build_graph(model: ChatOpenAI) -> Any:
    def router(state: GraphState) -> GraphState:
        reply = model.invoke([SystemMessage(ROUTER_PROMPT.format(question=state["question"]))])
        return {"topic": str(reply.content)}

    async def solver(state: GraphState) -> GraphState:
        reply = await model.ainvoke(
            [SystemMessage(SOLVER_PROMPT.format(question=state["question"])), HumanMessage(state["question"])]
        )
        return {"answer": str(reply.content)}

    graph = StateGraph(GraphState)
    graph.add_node("router", router)
    graph.add_node("solver", solver)
    graph.add_edge(START, "router")
    graph.add_edge("router", "solver")
    graph.add_edge("solver", END)
    return graph.compile()


def test_langgraph_nodes_are_agents_and_can_be_selected() -> None:
    resources = {"router_prompt": ROUTER_PROMPT, "solver_prompt": SOLVER_PROMPT}
    with scripted_proxy(graph_script, resources=resources) as env:

        async def main() -> agl.TrainingContext:
            async with agl.TrainingContext(task_id="graph", store=env.store) as ctx:
                with agl.span("episode") as step:
                    result = await build_graph(chat_model(ctx)).ainvoke({"question": "What is 25 * 17?"})
                agl.emit_reward(1.0 if result["answer"] == "425" else 0.0, span_id=step.id)
            return ctx

        ctx = asyncio.run(main())
        tree = env.tree(ctx.rollout_id)
        step = tree.child(tree.root, name="episode")
        graph = tree.child(step, kind="agent")
        assert graph.name == "LangGraph"
        router, solver = tree.children(graph)
        assert (router.name, solver.name) == ("router", "solver")
        tree.assert_one_span_per_call(env.upstream_calls, adapter="langchain")
        router_llm = assert_model_call(tree, router, "router")
        solver_llm = assert_model_call(tree, solver, "solver")
        assert router_llm.attributes[semconv.RESOURCE_NAMES] == ["policy", "router_prompt"]
        assert solver_llm.attributes[semconv.RESOURCE_NAMES] == ["policy", "solver_prompt"]
        assert router.attributes[OUTPUTS] == {"topic": "arithmetic"}
        assert solver.attributes[OUTPUTS] == {"answer": "425"}

        # selective optimization: only the router's call becomes a sample
        rollout = asyncio.run(env.store.get_rollout(ctx.rollout_id))
        episode = agl.build_episode(rollout, tree.spans, agents=["router"])
        assert [s.agent_name for s in episode.samples] == ["router"]
        assert episode.samples[0].reward == 1.0
        by_resource = agl.build_episode(rollout, tree.spans, resources=["solver_prompt"])
        assert [s.agent_name for s in by_resource.samples] == ["solver"]


class Notes(BaseRetriever):
    """A real retriever over a fixed list of notes."""

    notes: list[str]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [Document(page_content=n, metadata={"i": i}) for i, n in enumerate(self.notes) if query in n]


def test_retriever_span(env: ProxyEnv) -> None:
    with agl.TrainingContext(task_id="retrieve", store=env.store) as ctx:
        docs = Notes(notes=["25 * 17 = 425", "6 * 7 = 42"]).invoke("425")
    assert [d.page_content for d in docs] == ["25 * 17 = 425"]
    tree = env.tree(ctx.rollout_id)
    span = tree.child(tree.root, kind="custom")
    assert span.name == "retrieve Notes"
    assert span.attributes[RETRIEVER_QUERY] == "425"
    assert span.attributes[RETRIEVER_DOCUMENTS] == [{"page_content": "25 * 17 = 425", "metadata": {"i": 0}}]


def test_tool_exception_is_recorded_and_the_rollout_closes(env: ProxyEnv) -> None:
    with pytest.raises(ZeroDivisionError):
        with agl.TrainingContext(task_id="divide", store=env.store) as ctx:
            agent = create_agent(chat_model(ctx), [calculator], name="calc_agent")
            agent.invoke({"messages": [{"role": "user", "content": "What is 1 / 0?"}]})
    tree = env.tree(ctx.rollout_id)
    run = tree.child(tree.child(tree.child(tree.root, kind="agent"), name="tools"), kind="tool")
    assert run.status.code == "error"
    assert run.attributes[semconv.ERROR_TYPE] == "ZeroDivisionError"
    assert "division by zero" in run.attributes["exception.message"]
    assert run.attributes[semconv.GEN_AI_TOOL_CALL_ARGUMENTS] == {"expression": "1 / 0"}
    assert all(s.end_time is not None for s in tree.spans)
    assert asyncio.run(env.store.get_attempts(ctx.rollout_id))[-1].status == "failed"


@pytest.mark.parametrize(
    ("selection", "active", "recorded_by"),
    [
        ("openai", ["openai"], {"openai"}),
        ("none", [], {None}),
        # both: the proxy's record is LangChain's model span (the OpenAI adapter sends it along, adds none)
        (" langchain , openai ", ["langchain", "openai"], {"langchain"}),
    ],
)
def test_agl_adapters_environment_variable_selects_adapters(
    env: ProxyEnv, monkeypatch: pytest.MonkeyPatch, selection: str, active: list[str], recorded_by: set[str | None]
) -> None:
    monkeypatch.setenv("AGL_ADAPTERS", selection)
    with agl.TrainingContext(task_id="selected", store=env.store) as ctx:
        assert adapters.active_adapters() == active
        create_agent(chat_model(ctx), [calculator], name="calc_agent").invoke(
            {"messages": [{"role": "user", "content": "What is 2 * 3?"}]}
        )
    assert adapters.active_adapters() == []
    spans = [s for s in env.spans(ctx.rollout_id) if s.span_id != ctx.root_span_id]
    assert {s.attributes.get(semconv.ADAPTER) for s in spans} == recorded_by  # None: the proxy's bare records
    # one span per call, the proxy's token-id record, whatever the selection
    llms = [s for s in spans if s.kind == "llm"]
    assert len(llms) == 2 and all(s.attributes.get(semconv.PROMPT_TOKEN_IDS) for s in llms)


def chain_script(call: ScriptCall) -> str:
    return "The answer is 425." if "solver" in (call.messages[0].get("content") or "") else "I cannot tell."


def test_lcel_prompt_model_parser_chain() -> None:
    with scripted_proxy(chain_script, resources={"solver_prompt": SOLVER_PROMPT}) as env:
        with agl.TrainingContext(task_id="lcel", store=env.store) as ctx:
            prompt = ChatPromptTemplate.from_messages([("system", SOLVER_PROMPT.template), ("human", "{question}")])
            chain = prompt | chat_model(ctx) | StrOutputParser()
            answer = chain.invoke({"question": "What is 25 * 17?"})
        assert answer == "The answer is 425."

        tree = env.tree(ctx.rollout_id)
        sequence = tree.child(tree.root, kind="agent")
        assert sequence.name == "RunnableSequence"
        assert sequence.attributes[semconv.GEN_AI_OPERATION_NAME] == "invoke_agent"
        assert sequence.attributes[INPUTS] == {"question": "What is 25 * 17?"}
        assert sequence.attributes[OUTPUTS] == "The answer is 425."
        steps = tree.children(sequence)
        assert [(s.kind, s.name) for s in steps] == [
            ("custom", "ChatPromptTemplate"),
            ("llm", f"chat {MODEL}"),
            ("custom", "StrOutputParser"),
        ]
        prompt_step, llm, parser_step = steps
        assert prompt_step.attributes[RUN_TYPE] == "prompt" and parser_step.attributes[RUN_TYPE] == "parser"
        assert semconv.GEN_AI_OPERATION_NAME not in prompt_step.attributes  # steps, not agents
        assert prompt_step.attributes[INPUTS] == {"question": "What is 25 * 17?"}
        assert parser_step.attributes[OUTPUTS] == "The answer is 425."
        for span in steps:
            assert span.attributes[semconv.AGENT_NAME] == "RunnableSequence"  # the top-level chain's name
            assert span.status.code == "ok"
        assert_model_call(tree, sequence, "RunnableSequence")
        assert llm.attributes[semconv.RESOURCE_NAMES] == ["policy", "solver_prompt"]
        assert llm.attributes[semconv.GEN_AI_INPUT_MESSAGES] == [
            {"role": "system", "content": SOLVER_PROMPT.format(question="What is 25 * 17?")},
            {"role": "user", "content": "What is 25 * 17?"},
        ]
        assert llm.attributes[semconv.GEN_AI_OUTPUT_MESSAGES][0]["content"] == "The answer is 425."


def test_without_the_openai_adapter_a_warning_says_calls_are_recorded_twice(
    env: ProxyEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AGL_ADAPTERS", "langchain")
    with caplog.at_level("WARNING"), agl.TrainingContext(task_id="alone", store=env.store) as ctx:
        chat_model(ctx).invoke("Say hi")
    (warning,) = [r.getMessage() for r in caplog.records if "recorded twice" in r.getMessage()]
    assert "AGL_ADAPTERS=langchain,openai" in warning
    llms = [s for s in env.spans(ctx.rollout_id) if s.kind == "llm"]
    assert sorted(str(s.attributes.get(semconv.RECORDED_BY)) for s in llms) == ["None", "proxy"]  # what it warns of
