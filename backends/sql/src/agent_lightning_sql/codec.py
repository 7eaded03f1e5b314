"""Converting the data model to table rows and back.

Writing checks what a model built without validation (``model_construct``)
could carry into the database: non-JSON values, NaN, malformed ids. Reading
builds spans without validating them again; they were checked on the way in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, get_args

from agent_lightning.types import Attempt, ResourcesSnapshot, Rollout, Span, SpanKind, SpanStatus

_HEX = frozenset("0123456789abcdef")
_KINDS = frozenset(get_args(SpanKind))
_STATUS_CODES = frozenset({"unset", "ok", "error"})
_encode = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode


def dumps(value: Any, what: str) -> str:
    """``value`` as compact JSON text; ``ValueError`` naming ``what`` if it is not JSON (NaN included)."""
    try:
        return _encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{what} cannot be stored: it must be JSON (finite numbers, str keys): {exc}") from None


# --------------------------------------------------------------------------- rollouts and attempts
def rollout_values(rollout: Rollout) -> dict[str, Any]:
    """The columns of a new rollout row (``queue_seq`` is the caller's)."""
    return {
        "rollout_id": rollout.rollout_id,
        "task_type": rollout.task_type,
        "mode": rollout.mode,
        "status": rollout.status,
        "resources_id": rollout.resources_id,
        "config_json": dumps(rollout.config.model_dump(mode="json"), f"rollout {rollout.rollout_id!r} config"),
        "attempt_count": rollout.attempt_count,
        "created_at": rollout.created_at,
        "started_at": rollout.started_at,
        "ended_at": rollout.ended_at,
        "error": rollout.error,
        "input_json": None if rollout.input is None else dumps(rollout.input, f"rollout {rollout.rollout_id!r} input"),
        "metadata_json": dumps(rollout.metadata, f"rollout {rollout.rollout_id!r} metadata"),
    }


def rollout_from_row(row: Any) -> Rollout:
    return Rollout.model_validate(
        {
            "rollout_id": row.rollout_id,
            "task_type": row.task_type,
            "input": row.input_json,
            "mode": row.mode,
            "status": row.status,
            "resources_id": row.resources_id,
            "config": row.config_json,
            "attempt_count": row.attempt_count,
            "created_at": row.created_at,
            "started_at": row.started_at,
            "ended_at": row.ended_at,
            "error": row.error,
            "metadata": row.metadata_json,
        }
    )


def attempt_values(attempt: Attempt, timeout_seconds: float | None) -> dict[str, Any]:
    return {
        "attempt_id": attempt.attempt_id,
        "rollout_id": attempt.rollout_id,
        "sequence": attempt.sequence,
        "worker_id": attempt.worker_id,
        "status": attempt.status,
        "started_at": attempt.started_at,
        "ended_at": attempt.ended_at,
        "last_heartbeat_at": attempt.last_heartbeat_at,
        "lease_expires_at": attempt.lease_expires_at,
        "deadline_at": None if timeout_seconds is None else attempt.started_at + timeout_seconds,
        "error": attempt.error,
    }


def attempt_from_row(row: Any) -> Attempt:
    return Attempt.model_validate(
        {
            "rollout_id": row.rollout_id,
            "attempt_id": row.attempt_id,
            "sequence": row.sequence,
            "worker_id": row.worker_id,
            "status": row.status,
            "started_at": row.started_at,
            "ended_at": row.ended_at,
            "last_heartbeat_at": row.last_heartbeat_at,
            "lease_expires_at": row.lease_expires_at,
            "error": row.error,
        }
    )


# --------------------------------------------------------------------------- spans
def _check_hex(span_id: str, field: str, value: Any, length: int) -> None:
    if not isinstance(value, str) or len(value) != length or not _HEX.issuperset(value):
        raise ValueError(f"span {span_id!r}: {field} must be {length} lowercase hex digits, got {value!r}")


def _check_time(span_id: str, field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"span {span_id!r}: {field} must be a finite number, got {value!r}")


def span_values(span: Span) -> dict[str, Any]:
    """The columns of a span row (``attempt_seq`` is the caller's), after checking what validation guarantees."""
    span_id = span.span_id
    _check_hex(span_id, "span_id", span_id, 16)
    _check_hex(span_id, "trace_id", span.trace_id, 32)
    if span.parent_id is not None:
        _check_hex(span_id, "parent_id", span.parent_id, 16)
    for field in ("rollout_id", "attempt_id", "name"):
        value = getattr(span, field)
        if not isinstance(value, str) or not value:
            raise ValueError(f"span {span_id!r}: {field} must be a non-empty string, got {value!r}")
    sequence_id = span.sequence_id
    if isinstance(sequence_id, bool) or not isinstance(sequence_id, int) or sequence_id < 0:
        raise ValueError(f"span {span_id!r}: sequence_id must be a non-negative integer, got {sequence_id!r}")
    if span.kind not in _KINDS:
        raise ValueError(f"span {span_id!r}: kind must be one of {sorted(_KINDS)}, got {span.kind!r}")
    _check_time(span_id, "start_time", span.start_time)
    if span.end_time is not None:
        _check_time(span_id, "end_time", span.end_time)
        if span.end_time < span.start_time:
            raise ValueError(f"span {span_id!r}: end_time {span.end_time} is before start_time {span.start_time}")
    status = span.status
    if not isinstance(status, SpanStatus) or status.code not in _STATUS_CODES:
        raise ValueError(f"span {span_id!r}: status must be a SpanStatus, got {status!r}")
    if not isinstance(span.attributes, dict):
        raise ValueError(f"span {span_id!r}: attributes must be a dict, got {type(span.attributes).__name__}")
    return {
        "rollout_id": span.rollout_id,
        "attempt_id": span.attempt_id,
        "span_id": span_id,
        "sequence_id": sequence_id,
        "trace_id": span.trace_id,
        "parent_id": span.parent_id,
        "name": span.name,
        "kind": span.kind,
        "attributes_json": dumps(span.attributes, f"span {span_id!r} attributes"),
        "start_time": span.start_time,
        "end_time": span.end_time,
        "status_code": status.code,
        "status_message": status.message,
    }


def span_batch_values(spans: Sequence[Span]) -> list[dict[str, Any]]:
    """Rows of a whole ``add_spans`` batch; rejects non-spans, invalid spans and one id twice.

    Equivalent to :func:`agent_lightning.store.transitions.check_spans_batch` for what
    reaches the database, at a fraction of the cost of validating every span again.
    """
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()
    for index, span in enumerate(spans):
        if not isinstance(span, Span):
            raise TypeError(f"spans[{index}] is a {type(span).__name__}, not a Span")
        row = span_values(span)
        key = (span.rollout_id, span.attempt_id, span.span_id)
        if key in seen:
            raise ValueError(f"span {span.span_id} appears twice in one batch")
        seen.add(key)
        rows.append(row)
    return rows


def span_from_row(row: Any) -> Span:
    return Span.model_construct(
        rollout_id=row.rollout_id,
        attempt_id=row.attempt_id,
        sequence_id=row.sequence_id,
        trace_id=row.trace_id,
        span_id=row.span_id,
        parent_id=row.parent_id,
        name=row.name,
        kind=row.kind,
        attributes=row.attributes_json,
        start_time=row.start_time,
        end_time=row.end_time,
        status=SpanStatus.model_construct(code=row.status_code, message=row.status_message),
    )


# --------------------------------------------------------------------------- resources
def resources_values(snapshot: ResourcesSnapshot) -> dict[str, Any]:
    resources = {name: resource.model_dump(mode="json") for name, resource in snapshot.resources.items()}
    return {
        "resources_id": snapshot.resources_id,
        "version": snapshot.version,
        "resources_json": dumps(resources, "resources"),
        "metadata_json": dumps(snapshot.metadata, "resources metadata"),
        "created_at": snapshot.created_at,
    }


def resources_from_row(row: Any) -> ResourcesSnapshot:
    return ResourcesSnapshot.model_validate(
        {
            "resources_id": row.resources_id,
            "version": row.version,
            "resources": row.resources_json,
            "metadata": row.metadata_json,
            "created_at": row.created_at,
        }
    )


def task_types_match(task_types: list[str] | None, rollout: Rollout) -> bool:
    """Whether a subscription with ``task_types`` (``None``: all) wants ``rollout``."""
    return task_types is None or rollout.task_type in task_types
