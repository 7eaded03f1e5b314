"""Arithmetic word problems with known answers, generated deterministically; the agents' prompt and examples."""

from __future__ import annotations

import json
import random
import re
import warnings
from typing import Any

TEMPLATES = [
    ("{name} has {a} apples and buys {b} more. How many apples does {name} have now?", lambda a, b: a + b, "{a} + {b}"),
    ("A shelf holds {a} books. {b} books are taken away. How many books are left?", lambda a, b: a - b, "{a} - {b}"),
    ("There are {a} boxes with {b} pens in each box. How many pens are there?", lambda a, b: a * b, "{a} * {b}"),
    ("{name} walks {a} km on Monday and {b} km on Tuesday. How many km in total?", lambda a, b: a + b, "{a} + {b}"),
    ("What is {a} plus {b}?", lambda a, b: a + b, "{a} + {b}"),
    ("What is {a} times {b}?", lambda a, b: a * b, "{a} * {b}"),
]
NAMES = ["Tom", "Ana", "Li", "Sara", "Omar", "Eva"]


def make_tasks(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` problems; the same seed gives the same problems."""
    rng = random.Random(seed)
    tasks = []
    for _ in range(n):
        template, solve, expression = rng.choice(TEMPLATES)
        a, b = rng.randint(2, 20), rng.randint(2, 12)
        if "taken away" in template and b > a:
            a, b = b, a
        tasks.append(
            {
                "question": template.format(name=rng.choice(NAMES), a=a, b=b),
                "answer": solve(a, b),
                "expression": expression.format(a=a, b=b),
            }
        )
    return tasks


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def extract_answer(text: str) -> float | None:
    """The number after 'ANSWER:' if present, else the last number in the text."""
    marker = re.search(r"ANSWER:\s*(-?\d+(?:\.\d+)?)", text or "", flags=re.IGNORECASE)
    if marker:
        return float(marker.group(1))
    numbers = _NUMBER.findall(text or "")
    return float(numbers[-1]) if numbers else None


def compute_reward(result: str, expected: float) -> float:
    """1.0 for the right number; 0.1 for a well-formed but wrong 'ANSWER: n'; else 0."""
    answer = extract_answer(result)
    if answer is not None and abs(answer - expected) < 1e-6:
        return 1.0
    if re.search(r"ANSWER:\s*-?\d", result or "", flags=re.IGNORECASE):
        return 0.1
    return 0.0


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / and parentheses."""
    if not re.fullmatch(r"[\d\s+\-*/().]+", expression or ""):
        return f"error: cannot evaluate {expression!r}; use numbers and + - * / ( )"
    try:
        with warnings.catch_warnings():  # "2(3)": the compiler's warning becomes the tool's error, not stderr noise
            warnings.simplefilter("error", SyntaxWarning)
            value = eval(expression, {"__builtins__": {}}, {})  # the regex admits arithmetic only
    except Exception as exc:  # division by zero, syntax errors
        return f"error: {exc}"
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


SYSTEM_PROMPT = (
    "Solve the math problem. Call the calculator tool with the arithmetic expression, "
    "then reply with the result as 'ANSWER: <number>'."
)

EXAMPLES = [
    ("What is 23 plus 5?", "23 + 5"),
    ("A jar holds 6 bags with 15 beads in each bag. How many beads are there?", "6 * 15"),
    ("Kim had 31 stamps and gave away 8. How many stamps are left?", "31 - 8"),
]
"""Worked examples (question, calculator expression) each agent shows the model before the real question.

A 135M model never calls a tool from the instruction alone; with these three solved conversations it calls the
calculator about half the time, often enough for training to reinforce the calls that work. No example question
is produced by :func:`make_tasks` (its templates and number ranges differ)."""


def labeled_example(task: dict[str, Any]) -> dict[str, Any] | None:
    """A task rendered from its label as a worked example (demonstration search's labeled demos): the question, a
    calculator call with the task's ``expression``, the real :func:`calculator` result, ``ANSWER: n``, as the OpenAI
    chat messages of the ``worked_examples`` resource. ``None`` for a task without a usable label (no expression, or
    one whose result is not the task's answer)."""
    question, expression, answer = task.get("question"), task.get("expression"), task.get("answer")
    if not isinstance(question, str) or not isinstance(expression, str) or not isinstance(answer, (int, float)):
        return None
    result = calculator(expression)
    if compute_reward(result, answer) < 1.0:
        return None
    arguments = json.dumps({"expression": expression})
    call = {"id": "call_0", "type": "function", "function": {"name": "calculator", "arguments": arguments}}
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": result},
            {"role": "assistant", "content": f"ANSWER: {result}"},
        ]
    }


PROMPT_RESOURCE = "system_prompt"
"""The resource (a ``PromptTemplate``) that replaces :data:`SYSTEM_PROMPT` when the rollout's resources have it."""
EXAMPLES_RESOURCE = "worked_examples"
"""The resource (a ``ToolConfig`` with ``config["examples"]``, each ``{"messages": [OpenAI chat messages]}``) that
replaces :data:`EXAMPLES` when the rollout's resources have it; an empty list means no worked examples."""

Shot = tuple[str, str | None, str | None, str]
"""One worked example: question, calculator expression (``None``: answered without it), its result, final reply."""


def _resource(ctx: Any, name: str) -> Any:
    snapshot = getattr(ctx, "resources", None)
    return getattr(snapshot, "resources", {}).get(name) if snapshot is not None else None


def system_prompt(ctx: Any = None) -> str:
    """The system prompt: the rollout's ``system_prompt`` resource if it has one, else :data:`SYSTEM_PROMPT`."""
    template = getattr(_resource(ctx, PROMPT_RESOURCE), "template", None)
    return template if isinstance(template, str) else SYSTEM_PROMPT


def worked_examples(ctx: Any = None) -> list[Shot]:
    """The worked examples: the rollout's ``worked_examples`` resource if it has one, else :data:`EXAMPLES`."""
    config = getattr(_resource(ctx, EXAMPLES_RESOURCE), "config", None)
    if not isinstance(config, dict) or not isinstance(config.get("examples"), list):
        return [(q, e, calculator(e), f"ANSWER: {calculator(e)}") for q, e in EXAMPLES]
    shots = [_shot(example.get("messages") or []) for example in config["examples"] if isinstance(example, dict)]
    return [shot for shot in shots if shot is not None]


def _shot(messages: list[dict[str, Any]]) -> Shot | None:
    """A conversation (question, one calculator call and its result, final reply) as a :data:`Shot`."""
    question = next((m.get("content") for m in messages if m.get("role") == "user"), None)
    final = next((m for m in reversed(messages) if m.get("role") == "assistant" and not m.get("tool_calls")), None)
    if not isinstance(question, str) or final is None:
        return None
    expression = result = None
    for message in messages:
        for call in message.get("tool_calls") or []:
            arguments = (call.get("function") or {}).get("arguments")
            try:
                arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
            except json.JSONDecodeError:
                arguments = None
            if expression is None and isinstance(arguments, dict) and "expression" in arguments:
                expression = str(arguments["expression"])
        if message.get("role") == "tool" and result is None:
            result = str(message.get("content") or "")
    if expression is not None and result is None:
        result = calculator(expression)
    return question, expression, result if expression is not None else None, str(final.get("content") or "")
