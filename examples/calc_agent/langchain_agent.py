"""The calculator agent as a LangChain tool-calling agent. Links to training: the base URL, the reward, and (when the
rollout's resources have them) the system prompt and worked examples."""

from __future__ import annotations

from typing import Any

import agent_lightning as agl
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from tasks import Shot, compute_reward, labeled_example, system_prompt
from tasks import calculator as evaluate
from tasks import worked_examples as shots


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as '12 * 7'."""
    return evaluate(expression)


def worked_examples(examples: list[Shot] | None = None) -> list[BaseMessage]:
    """The few-shot conversations (default: ``tasks.EXAMPLES``): question, calculator call, its result, final answer."""
    messages: list[BaseMessage] = []
    for i, (question, expression, result, final) in enumerate(shots() if examples is None else examples):
        messages.append(HumanMessage(question))
        if expression is not None:
            call = {"name": "calculator", "args": {"expression": expression}, "id": f"call_{i}"}
            messages += [AIMessage("", tool_calls=[call]), ToolMessage(result or "", tool_call_id=call["id"])]
        messages.append(AIMessage(final))
    return messages


def agent(task: dict[str, Any], ctx: agl.TrainingContext) -> None:
    llm = ctx.llm()
    sampling = {"max_tokens": 96, **llm.sampling_parameters}  # the endpoint's settings: greedy when evaluating
    model = ChatOpenAI(
        base_url=llm.endpoint, api_key=llm.api_key or "unused", model=llm.model, max_retries=0, **sampling
    )
    graph = create_agent(model, tools=[calculator], system_prompt=system_prompt(ctx))
    messages = [*worked_examples(shots(ctx)), HumanMessage(task["question"])]
    state = graph.invoke({"messages": messages}, {"recursion_limit": 8})
    agl.emit_reward(compute_reward(str(state["messages"][-1].content), task["answer"]))


agent.worked_example = labeled_example  # type: ignore[attr-defined]
"""How a training task looks as a worked example (demonstration search's labeled examples, ``max_labeled_demos``)."""
