"""Arithmetic word problems with known answers, generated deterministically."""

from __future__ import annotations

import random
import re
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
