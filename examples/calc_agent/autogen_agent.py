"""The calculator agent as an AutoGen AssistantAgent. Links to training: the base URL, the reward, and (when the
rollout's resources have them) the system prompt and worked examples."""

from __future__ import annotations

import json
from typing import Any

import agent_lightning as agl
from autogen_agentchat.agents import AssistantAgent
from autogen_core import FunctionCall
from autogen_core.model_context import UnboundedChatCompletionContext
from autogen_core.models import (
    AssistantMessage,
    FunctionExecutionResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    UserMessage,
)
from autogen_ext.models.openai import OpenAIChatCompletionClient
from tasks import Shot, compute_reward, labeled_example, system_prompt
from tasks import calculator as evaluate
from tasks import worked_examples as shots


async def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as '12 * 7'."""
    return evaluate(expression)


def worked_examples(examples: list[Shot] | None = None) -> list[LLMMessage]:
    """The few-shot conversations (default: ``tasks.EXAMPLES``): question, calculator call, its result, final answer."""
    messages: list[LLMMessage] = []
    for i, (question, expression, result, final) in enumerate(shots() if examples is None else examples):
        messages.append(UserMessage(content=question, source="user"))
        if expression is not None:
            call = FunctionCall(id=f"call_{i}", name="calculator", arguments=json.dumps({"expression": expression}))
            execution = FunctionExecutionResult(
                content=result or "", name="calculator", call_id=call.id, is_error=False
            )
            messages += [
                AssistantMessage(content=[call], source="calc"),
                FunctionExecutionResultMessage(content=[execution]),
            ]
        messages.append(AssistantMessage(content=final, source="calc"))
    return messages


async def agent(task: dict[str, Any], ctx: agl.TrainingContext) -> None:
    llm = ctx.llm()
    client = OpenAIChatCompletionClient(
        model=llm.model,
        base_url=llm.endpoint,
        api_key=llm.api_key or "unused",
        **{"max_tokens": 96, **llm.sampling_parameters},  # the endpoint's settings: greedy when evaluating
        model_info={
            "vision": False,
            "function_calling": True,
            "json_output": False,
            "family": "unknown",
            "structured_output": False,
        },
    )
    solver = AssistantAgent(
        "calc",
        model_client=client,
        tools=[calculator],
        system_message=system_prompt(ctx),
        model_context=UnboundedChatCompletionContext(initial_messages=worked_examples(shots(ctx))),
        reflect_on_tool_use=True,
        max_tool_iterations=2,
    )
    result = await solver.run(task=task["question"])
    await client.close()
    agl.emit_reward(compute_reward(str(result.messages[-1].content), task["answer"]))


agent.worked_example = labeled_example  # type: ignore[attr-defined]
"""How a training task looks as a worked example (demonstration search's labeled examples, ``max_labeled_demos``)."""
