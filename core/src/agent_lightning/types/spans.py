"""Spans: the trace records agents emit, in OpenTelemetry's shape."""

from __future__ import annotations

import math
import random
import time
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent_lightning import semconv

SpanKind = Literal["agent", "llm", "tool", "reward", "message", "custom"]
"""``agent``: an agent step; ``llm``: one model call; ``tool``: one tool call; ``reward``: a reward."""
StatusCode = Literal["unset", "ok", "error"]

AttributeValue = Union[str, bool, int, float, None, list[Any], dict[str, Any]]

_HEX = frozenset("0123456789abcdef")


# Like OpenTelemetry's SDK, ids come from ``random`` (reseeded in forked children), not ``os.urandom``:
# its syscall releases the GIL, and an agent thread then waits behind the span writer for every span.
def new_trace_id() -> str:
    """A random 128-bit OpenTelemetry trace id (32 lowercase hex digits, never all zeros)."""
    return f"{random.getrandbits(128) or 1:032x}"


def new_span_id() -> str:
    """A random 64-bit OpenTelemetry span id (16 lowercase hex digits, never all zeros)."""
    return f"{random.getrandbits(64) or 1:016x}"


class SpanStatus(BaseModel):
    """OpenTelemetry span status."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: StatusCode = "unset"
    message: str | None = None


_PLAIN = frozenset({str, int, bool, type(None)})
_NUMBERS = frozenset({int, bool, float})


def _check_json_finite(value: Any, path: str) -> None:
    kind = type(value)
    if kind in _PLAIN:
        return
    if kind is list or kind is tuple:
        # fast paths for the long lists spans carry (token ids, logprobs): type checks at C speed
        kinds = set(map(type, value))
        if kinds <= _PLAIN or (kinds <= _NUMBERS and all(map(math.isfinite, value))):
            return
    _check_json_finite_slow(value, path)


def _check_json_finite_slow(value: Any, path: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"attribute {path!r} is {value!r}; only finite numbers can be stored")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"attribute {path!r} has a non-string key {key!r}")
            _check_json_finite(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_json_finite(item, f"{path}[{index}]")
    elif not isinstance(value, (str, bool, int, float, type(None))):
        raise ValueError(f"attribute {path!r} has type {type(value).__name__}; use JSON values")


class Span(BaseModel):
    """One traced operation of an agent run.

    ``sequence_id`` orders the spans of one attempt as they were *started*
    (1, 2, 3, …); stores return spans in that order.
    """

    model_config = ConfigDict(extra="forbid")

    rollout_id: str = Field(min_length=1)
    attempt_id: str = Field(min_length=1)
    sequence_id: int = Field(ge=0)
    trace_id: str
    span_id: str
    parent_id: str | None = None
    name: str = Field(min_length=1)
    kind: SpanKind = "custom"
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)
    start_time: float = Field(default_factory=time.time)
    end_time: float | None = None
    status: SpanStatus = Field(default_factory=SpanStatus)

    @field_validator("trace_id")
    @classmethod
    def _trace_id_hex(cls, value: str) -> str:
        if len(value) != 32 or not set(value) <= _HEX:
            raise ValueError(f"trace_id must be 32 lowercase hex digits, got {value!r}")
        return value

    @field_validator("span_id", "parent_id")
    @classmethod
    def _span_id_hex(cls, value: str | None) -> str | None:
        if value is not None and (len(value) != 16 or not set(value) <= _HEX):
            raise ValueError(f"span ids must be 16 lowercase hex digits, got {value!r}")
        return value

    @field_validator("attributes")
    @classmethod
    def _attributes_json(cls, value: dict[str, AttributeValue]) -> dict[str, AttributeValue]:
        for key, item in value.items():
            _check_json_finite(item, key)
        return value

    @model_validator(mode="after")
    def _times_ordered(self) -> Span:
        if not math.isfinite(self.start_time):
            raise ValueError("start_time must be a finite number")
        if self.end_time is not None and (not math.isfinite(self.end_time) or self.end_time < self.start_time):
            raise ValueError(f"span {self.span_id}: end_time {self.end_time} is before start_time {self.start_time}")
        if self.parent_id is not None and self.parent_id == self.span_id:
            raise ValueError(f"span {self.span_id} cannot be its own parent")
        return self

    @property
    def duration(self) -> float | None:
        """Seconds between start and end, or ``None`` while the span is open."""
        return None if self.end_time is None else self.end_time - self.start_time

    @property
    def reward(self) -> float | None:
        """The scalar reward, for a ``reward`` span."""
        value = self.attributes.get(semconv.REWARD_VALUE)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
