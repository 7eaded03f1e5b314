"""Span attributes must be finite JSON: the fast paths for long lists still reject what the slow path rejects."""

from __future__ import annotations

import math
from typing import Any

import pytest
from agent_lightning.types import Span, new_span_id, new_trace_id


def _span(attributes: dict[str, Any]) -> Span:
    return Span(
        rollout_id="r", attempt_id="a", sequence_id=1, trace_id=new_trace_id(), span_id=new_span_id(),
        name="llm", attributes=attributes,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1, 2, math.nan], r"'x\[2\]' is nan"),
        ((0.5, -math.inf), r"'x\[1\]' is -inf"),
        ([1, {2: "a"}], r"'x\[1\]' has a non-string key 2"),
        ([1, {"a", "b"}], r"'x\[1\]' has type set"),
        ([[0.1, math.inf]], r"'x\[0\]\[1\]' is inf"),
        ({"m": [{"content": b"bytes"}]}, r"'x.m\[0\].content' has type bytes"),
    ],
)
def test_non_json_or_non_finite_values_are_named_by_their_path(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _span({"x": value})


def test_long_id_and_logprob_lists_and_nested_messages_are_accepted() -> None:
    ids, logprobs = list(range(4096)), [-0.5] * 4096
    span = _span({"ids": ids, "logprobs": logprobs, "mixed": [1, "a", None, True, 2.5], "m": [{"role": "user"}]})
    assert span.attributes["ids"] == ids and span.attributes["logprobs"] == logprobs


def test_ids_are_otel_shaped_and_distinct() -> None:
    spans = {new_span_id() for _ in range(10_000)}
    traces = {new_trace_id() for _ in range(10_000)}
    assert len(spans) == len(traces) == 10_000
    assert all(len(s) == 16 and int(s, 16) for s in spans) and all(len(t) == 32 and int(t, 16) for t in traces)
