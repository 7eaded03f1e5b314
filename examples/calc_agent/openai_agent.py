"""The calculator agent with the plain OpenAI SDK. Its links to training: the base URL, the reward, and (when the
rollout's resources have them) the system prompt and worked examples."""

from __future__ import annotations

import json
from typing import Any

import agent_lightning as agl
from openai import OpenAI
from tasks import SYSTEM_PROMPT, Shot, calculator, compute_reward, labeled_example, system_prompt
from tasks import worked_examples as shots

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression such as '12 * 7'.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    }
]


def worked_examples(examples: list[Shot] | None = None) -> list[dict[str, Any]]:
    """The few-shot conversations (default: ``tasks.EXAMPLES``): question, calculator call, its result, final answer."""
    messages: list[dict[str, Any]] = []
    for i, (question, expression, result, final) in enumerate(shots() if examples is None else examples):
        messages.append({"role": "user", "content": question})
        if expression is not None:
            arguments = json.dumps({"expression": expression})
            call = {"id": f"call_{i}", "type": "function", "function": {"name": "calculator", "arguments": arguments}}
            messages += [
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call["id"], "content": result or ""},
            ]
        messages.append({"role": "assistant", "content": final})
    return messages


def solve(
    client: OpenAI,
    model: str,
    question: str,
    max_turns: int = 3,
    *,
    system: str = SYSTEM_PROMPT,
    examples: list[Shot] | None = None,
    **sampling: Any,
) -> str:
    """An ordinary tool-calling loop; ``sampling`` (temperature, max_tokens, …) goes to every call."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        *worked_examples(examples),
        {"role": "user", "content": question},
    ]
    reply = ""
    for _ in range(max_turns):
        response = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, **sampling)
        message = response.choices[0].message
        reply = message.content or ""
        if not message.tool_calls:
            return reply
        messages.append(message.model_dump(exclude_none=True))
        messages += [tool_message(call) for call in message.tool_calls]
    return reply


def tool_message(call: Any) -> dict[str, Any]:
    """The ``tool`` turn answering one of the model's calculator calls."""
    try:
        arguments = json.loads(call.function.arguments or "{}")
    except json.JSONDecodeError:
        arguments = {}
    # a sampled call may carry any JSON (a list, a number): only an object names an expression
    expression = str(arguments.get("expression", "")) if isinstance(arguments, dict) else ""
    return {"role": "tool", "tool_call_id": call.id, "content": calculator(expression)}


def agent(task: dict[str, Any], ctx: agl.TrainingContext) -> None:
    llm = ctx.llm()
    client = OpenAI(base_url=llm.endpoint, api_key=llm.api_key or "unused", max_retries=0)
    sampling = {"max_tokens": 96, **llm.sampling_parameters}  # the endpoint's settings: greedy when evaluating
    result = solve(client, llm.model, task["question"], system=system_prompt(ctx), examples=shots(ctx), **sampling)
    agl.emit_reward(compute_reward(result, task["answer"]))


agent.worked_example = labeled_example  # type: ignore[attr-defined]
"""How a training task looks as a worked example (demonstration search's labeled examples, ``max_labeled_demos``)."""
