"""The calculator agent as a LangChain tool-calling agent. Links to training: the base URL and the reward."""

from __future__ import annotations

from typing import Any

import agent_lightning as agl
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from tasks import EXAMPLES, SYSTEM_PROMPT, compute_reward
from tasks import calculator as evaluate


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as '12 * 7'."""
    return evaluate(expression)


def worked_examples() -> list[BaseMessage]:
    """The few-shot conversations: question, calculator call, its result, final answer."""
    messages: list[BaseMessage] = []
    for i, (question, expression) in enumerate(EXAMPLES):
        result = evaluate(expression)
        call = {"name": "calculator", "args": {"expression": expression}, "id": f"call_{i}"}
        messages += [
            HumanMessage(question),
            AIMessage("", tool_calls=[call]),
            ToolMessage(result, tool_call_id=call["id"]),
            AIMessage(f"ANSWER: {result}"),
        ]
    return messages


def agent(task: dict[str, Any], ctx: agl.TrainingContext) -> None:
    llm = ctx.llm()
    sampling = {"max_tokens": 96, **llm.sampling_parameters}  # the endpoint's settings: greedy when evaluating
    model = ChatOpenAI(
        base_url=llm.endpoint, api_key=llm.api_key or "unused", model=llm.model, max_retries=0, **sampling
    )
    graph = create_agent(model, tools=[calculator], system_prompt=SYSTEM_PROMPT)
    state = graph.invoke({"messages": [*worked_examples(), HumanMessage(task["question"])]}, {"recursion_limit": 8})
    agl.emit_reward(compute_reward(str(state["messages"][-1].content), task["answer"]))
