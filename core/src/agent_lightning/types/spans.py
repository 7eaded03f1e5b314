"""Spans: the trace records agents emit, in OpenTelemetry's shape."""

from __future__ import annotations

import math
import random
import time
from typing import Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent_lightning import semconv
from agent_lightning.limits import MAX_ID_LENGTH, MAX_INT, MAX_JSON_DEPTH, MAX_NAME_LENGTH, MAX_TEXT_LENGTH

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
    message: str | None = Field(default=None, max_length=MAX_TEXT_LENGTH)


_PLAIN = frozenset({str, int, bool, type(None)})
_NUMBERS = frozenset({int, bool, float})


def _check_json_finite(value: Any, path: str, budget: int = MAX_JSON_DEPTH - 1) -> None:
    """Check an attribute value that may nest ``budget`` more containers (see :mod:`agent_lightning.limits`)."""
    kind = type(value)
    if kind in _PLAIN:
        return
    if (kind is list or kind is tuple) and budget > 0:
        # fast paths for the long lists spans carry (token ids, logprobs): type checks at C speed
        kinds = set(map(type, value))
        if kinds <= _PLAIN or (kinds <= _NUMBERS and all(map(math.isfinite, value))):
            return
    _check_json_finite_slow(value, path, budget)


def _check_json_finite_slow(value: Any, path: str, budget: int) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"attribute {path!r} is {value!r}; only finite numbers can be stored")
    if isinstance(value, (dict, list, tuple)) and budget <= 0:
        raise ValueError(
            f"attribute {_short_path(path)!r} is nested too deep: attributes may nest at most {MAX_JSON_DEPTH} levels"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"attribute {path!r} has a non-string key {key!r}")
            _check_json_finite(item, f"{path}.{key}", budget - 1)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_json_finite(item, f"{path}[{index}]", budget - 1)
    elif not isinstance(value, (str, bool, int, float, type(None))):
        raise ValueError(f"attribute {path!r} has type {type(value).__name__}; use JSON values")


def _short_path(path: str) -> str:
    return path if len(path) <= 60 else f"{path[:40]}…{path[-12:]}"


class Span(BaseModel):
    """One traced operation of an agent run.

    ``sequence_id`` orders the spans of one attempt as they were *started*
    (1, 2, 3, …); stores return spans in that order.
    """

    model_config = ConfigDict(extra="forbid")

    rollout_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    attempt_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    sequence_id: int = Field(ge=0, le=MAX_INT)
    trace_id: str
    span_id: str
    parent_id: str | None = None
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
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
            _check_json_finite(item, key, MAX_JSON_DEPTH - 1)  # the attributes object is the first level
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


class SpanCursor(BaseModel):
    """Where a page of ``query_spans`` ended; pass it (or the page's last span) as ``after=`` for the next.

    Stores order a rollout's spans by ``(attempt, sequence_id, start_time, span_id)``: the attempt
    first (sequence ids start again in each attempt), ``span_id`` last so the order is total. A
    cursor names a position in that order, so pages neither skip nor repeat a span across attempts.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    attempt_id: str = Field(min_length=1)
    sequence_id: int
    start_time: float
    span_id: str

    @classmethod
    def after(cls, span: Span | SpanCursor) -> SpanCursor:
        """The cursor just past ``span``."""
        if isinstance(span, SpanCursor):
            return span
        if not isinstance(span, Span):
            raise TypeError(f"after= takes a Span or a SpanCursor, not a {type(span).__name__}")
        return cls(
            attempt_id=span.attempt_id, sequence_id=span.sequence_id, start_time=span.start_time, span_id=span.span_id
        )

    def key(self, attempt_sequence: int) -> tuple[int, int, float, str]:
        """The cursor's sort key, given the sequence number of its attempt."""
        return (attempt_sequence, self.sequence_id, self.start_time, self.span_id)


# --------------------------------------------------------------------------- fast paths for stores
# Stores check every span they are given again (one built with ``model_construct`` skipped validation)
# and copy it, so the caller's objects never alias what they hold. Pydantic's validation plus a deep copy
# costs about 100 us a span; the checks below cost a few. They accept only exact types (``float``, not a
# subclass or an ``int``), so they are never more lenient than the model; anything else is handed to
# pydantic, which either coerces it the way the model does or raises its own error.
_SPAN_FIELDS = frozenset(Span.model_fields)
_KINDS = frozenset(get_args(SpanKind))
_STATUS_CODES = frozenset(get_args(StatusCode))
_STATUS_FIELDS = frozenset(SpanStatus.model_fields)
_setattr = object.__setattr__


class _Unusual(Exception):
    """A value the fast path does not decide; pydantic does."""


def _json_copy(value: Any, budget: int = MAX_JSON_DEPTH) -> Any:
    """A deep copy of a JSON value built of exact ``dict``/``list``/``str``/``int``/``float``/``bool``/``None``.

    Tuples become lists. Raises :class:`_Unusual` for anything else, a non-finite float, a non-string key
    or containers nested more than ``budget`` deep.
    """
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is float:
        if value - value == 0.0:  # false for inf and nan
            return value
        raise _Unusual
    if budget <= 0:
        raise _Unusual
    if kind is list or kind is tuple:
        kinds = set(map(type, value))
        if kinds <= _PLAIN or (kinds <= _NUMBERS and all(map(math.isfinite, value))):
            return list(value)
        return [_json_copy(item, budget - 1) for item in value]
    if kind is dict:
        if not set(map(type, value)) <= _STR:
            raise _Unusual
        return {key: item if type(item) in _PLAIN else _json_copy(item, budget - 1) for key, item in value.items()}
    raise _Unusual


_STR = frozenset({str})


def _hex(value: Any, length: int) -> bool:
    return type(value) is str and len(value) == length and _HEX.issuperset(value)


def _finite(value: Any) -> bool:
    return type(value) is float and value - value == 0.0


def _new_span(fields: dict[str, Any], fields_set: set[str] | None = None) -> Span:
    span = Span.__new__(Span)
    _setattr(span, "__dict__", fields)
    _setattr(span, "__pydantic_fields_set__", set(_SPAN_FIELDS) if fields_set is None else fields_set)
    _setattr(span, "__pydantic_extra__", None)
    _setattr(span, "__pydantic_private__", None)
    return span


def _fields_ok(fields: dict[str, Any]) -> bool:
    """Whether a span's fields other than ``attributes`` pass the model's rules with exact types."""
    if fields.keys() != _SPAN_FIELDS:
        return False
    span_id = fields["span_id"]
    parent_id = fields["parent_id"]
    start = fields["start_time"]
    end = fields["end_time"]
    status = fields["status"]
    return bool(
        type(fields["rollout_id"]) is str
        and 0 < len(fields["rollout_id"]) <= MAX_ID_LENGTH
        and type(fields["attempt_id"]) is str
        and 0 < len(fields["attempt_id"]) <= MAX_ID_LENGTH
        and type(fields["name"]) is str
        and 0 < len(fields["name"]) <= MAX_NAME_LENGTH
        and type(fields["sequence_id"]) is int
        and 0 <= fields["sequence_id"] <= MAX_INT
        and _hex(fields["trace_id"], 32)
        and _hex(span_id, 16)
        and (parent_id is None or (_hex(parent_id, 16) and parent_id != span_id))
        and type(fields["kind"]) is str
        and fields["kind"] in _KINDS
        and _finite(start)
        and (end is None or (_finite(end) and end >= start))
        and type(status) is SpanStatus
        and status.__dict__.keys() == _STATUS_FIELDS
        and type(status.code) is str
        and status.code in _STATUS_CODES
        and (status.message is None or (type(status.message) is str and len(status.message) <= MAX_TEXT_LENGTH))
        and type(fields["attributes"]) is dict
    )


def _json_check(value: Any, budget: int = MAX_JSON_DEPTH) -> None:
    """:func:`_json_copy`'s checks without the copy."""
    kind = type(value)
    if kind in _PLAIN:
        return
    if kind is float:
        if value - value == 0.0:
            return
        raise _Unusual
    if budget <= 0:
        raise _Unusual
    if kind is list or kind is tuple:
        kinds = set(map(type, value))
        if kinds <= _PLAIN or (kinds <= _NUMBERS and all(map(math.isfinite, value))):
            return
        for item in value:
            _json_check(item, budget - 1)
        return
    if kind is dict:
        if not set(map(type, value)) <= _STR:
            raise _Unusual
        for item in value.values():
            if type(item) not in _PLAIN:
                _json_check(item, budget - 1)
        return
    raise _Unusual


def _validated(span: Span) -> Span:
    """Pydantic's validation of a span's fields (``ValueError`` naming the field if one is invalid)."""
    unchecked = dict(span.__dict__)
    if isinstance(unchecked.get("status"), SpanStatus):  # pydantic would take an instance as it is
        unchecked["status"] = dict(unchecked["status"].__dict__)
    return Span.model_validate(unchecked)


def checked(span: Span) -> Span:
    """``span`` itself if it passes every rule of :class:`Span`'s validation, checked again.

    Raises ``ValueError`` (pydantic's, naming the field) for a span that would not validate; a span
    whose fields pydantic would coerce (an ``int`` time, a ``str`` subclass) comes back as a new,
    coerced span. Nothing is copied: a store encodes or copies the result before keeping it.
    """
    fields = span.__dict__
    try:
        if not _fields_ok(fields):
            raise _Unusual
        _json_check(fields["attributes"])
    except _Unusual:
        return _validated(span)
    return span


def span_from_fields(fields: dict[str, Any]) -> Span:
    """``Span(**fields)``, with the same checks and errors, much cheaper for well-typed fields.

    The dict becomes the span's own (pass a fresh one).
    """
    return checked(_new_span(fields, set(fields)))


def checked_copy(span: Span) -> Span:
    """A deep copy of ``span`` after the checks of :func:`checked` (the same errors)."""
    fields = span.__dict__
    try:
        if not _fields_ok(fields):
            raise _Unusual
        attributes = _json_copy(fields["attributes"])
    except _Unusual:
        return _validated(span).model_copy(deep=True)
    return _new_span({**fields, "attributes": attributes}, set(span.__pydantic_fields_set__))


def copy_span(span: Span) -> Span:
    """A deep copy of a span that passed :func:`checked_copy` (a store returning what it holds)."""
    fields = span.__dict__
    try:
        attributes = _json_copy(fields["attributes"])
    except _Unusual:
        return span.model_copy(deep=True)
    return _new_span({**fields, "attributes": attributes}, set(span.__pydantic_fields_set__))


def trusted_span(fields: dict[str, Any]) -> Span:
    """A span from fields a store wrote after checking them (every field given), without validating again.

    ``fields["status"]`` may be a :class:`SpanStatus` or its ``{"code", "message"}`` dict. Much cheaper than
    ``Span.model_construct``; the dict becomes the span's own.
    """
    status = fields["status"]
    if type(status) is not SpanStatus:
        fields["status"] = trusted_status(status.get("code", "unset"), status.get("message"))
    return _new_span(fields)


def trusted_status(code: str, message: str | None) -> SpanStatus:
    """A :class:`SpanStatus` from a stored code and message, without validating again."""
    status = SpanStatus.__new__(SpanStatus)
    _setattr(status, "__dict__", {"code": code, "message": message})
    _setattr(status, "__pydantic_fields_set__", {"code", "message"})
    _setattr(status, "__pydantic_extra__", None)
    _setattr(status, "__pydantic_private__", None)
    return status


def span_fields_json(span: Span) -> dict[str, Any]:
    """A span's fields as JSON values (``status`` as a dict), for stores that write it as one document."""
    fields = dict(span.__dict__)
    status = fields["status"]
    fields["status"] = {"code": status.code, "message": status.message}
    return fields
