"""The calculator agent with the plain OpenAI SDK. Its only links to training: the base URL and the reward."""

from __future__ import annotations

import json
from typing import Any

import agent_lightning as agl
from openai import OpenAI
from tasks import EXAMPLES, SYSTEM_PROMPT, calculator, compute_reward

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


def worked_examples() -> list[dict[str, Any]]:
    """The few-shot conversations: question, calculator call, its result, final answer."""
    messages: list[dict[str, Any]] = []
    for i, (question, expression) in enumerate(EXAMPLES):
        arguments = json.dumps({"expression": expression})
        call = {"id": f"call_{i}", "type": "function", "function": {"name": "calculator", "arguments": arguments}}
        result = calculator(expression)
        messages += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": result},
            {"role": "assistant", "content": f"ANSWER: {result}"},
        ]
    return messages


def solve(client: OpenAI, model: str, question: str, max_turns: int = 3, **sampling: Any) -> str:
    """An ordinary tool-calling loop; ``sampling`` (temperature, max_tokens, …) goes to every call."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        *worked_examples(),
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
        for call in message.tool_calls:
            try:
                arguments = json.loads(call.function.arguments or "{}")
            except json.JSONDecodeError:
                arguments = {}
            messages.append(
                {"role": "tool", "tool_call_id": call.id, "content": calculator(str(arguments.get("expression", "")))}
            )
    return reply


def agent(task: dict[str, Any], ctx: agl.TrainingContext) -> None:
    llm = ctx.llm()
    client = OpenAI(base_url=llm.endpoint, api_key=llm.api_key or "unused", max_retries=0)
    sampling = {"max_tokens": 96, **llm.sampling_parameters}  # the endpoint's settings: greedy when evaluating
    result = solve(client, llm.model, task["question"], **sampling)
    agl.emit_reward(compute_reward(result, task["answer"]))
