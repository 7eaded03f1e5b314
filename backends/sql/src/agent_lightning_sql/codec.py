"""Converting the data model to table rows and back.

Writing checks what a model built without validation (``model_construct``)
could carry into the database: non-JSON values, NaN, malformed ids (spans with
:func:`agent_lightning.types.spans.checked`, the rules of the model). Reading
builds spans without validating them again; they were checked on the way in.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from agent_lightning.limits import repair_rollout_fields, repair_span_fields
from agent_lightning.types import Attempt, ResourcesSnapshot, Rollout, Span
from agent_lightning.types.spans import checked, trusted_span, trusted_status

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency; plain json still works
    _orjson = None  # type: ignore[assignment]

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
    """A rollout from its row; what an older release stored against today's limits is repaired (and logged)."""
    return Rollout.model_validate(
        repair_rollout_fields(
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
SPAN_COLUMNS: tuple[str, ...] = (
    "rollout_id",
    "attempt_id",
    "span_id",
    "attempt_seq",
    "sequence_id",
    "trace_id",
    "parent_id",
    "name",
    "kind",
    "attributes_json",
    "start_time",
    "end_time",
    "status_code",
    "status_message",
)
"""The columns of a span row, in the order :func:`span_row` gives them."""


def dumps_attributes(attributes: dict[str, Any], span_id: str) -> str:
    """Span attributes (already checked: JSON values, finite numbers) as JSON text."""
    if _orjson is not None:
        try:
            return _orjson.dumps(attributes).decode()
        except (TypeError, _orjson.JSONEncodeError):  # an int over 64 bits, a subclass pydantic let through
            pass
    return dumps(attributes, f"span {span_id!r} attributes")


def span_row(span: Span) -> list[Any]:
    """A span's row in :data:`SPAN_COLUMNS` order (``attempt_seq`` is ``None``: the caller's), after
    checking it again exactly like :class:`Span`'s validation does (``ValueError`` naming the field)."""
    fields = checked(span).__dict__
    status = fields["status"]
    return [
        fields["rollout_id"],
        fields["attempt_id"],
        fields["span_id"],
        None,
        fields["sequence_id"],
        fields["trace_id"],
        fields["parent_id"],
        fields["name"],
        fields["kind"],
        dumps_attributes(fields["attributes"], fields["span_id"]),
        fields["start_time"],
        fields["end_time"],
        status.code,
        status.message,
    ]


def span_values(span: Span) -> dict[str, Any]:
    """The columns of a span row by name (``attempt_seq`` is the caller's); see :func:`span_row`."""
    values = dict(zip(SPAN_COLUMNS, span_row(span), strict=True))
    del values["attempt_seq"]
    return values


def span_batch_rows(spans: Sequence[Span]) -> list[list[Any]]:
    """Rows of a whole ``add_spans`` batch; rejects non-spans, invalid spans and one id twice."""
    rows: list[list[Any]] = []
    seen: set[tuple[str, str, str]] = set()
    for index, span in enumerate(spans):
        if not isinstance(span, Span):
            raise TypeError(f"spans[{index}] is a {type(span).__name__}, not a Span")
        try:
            row = span_row(span)
        except ValueError as exc:
            raise ValueError(f"spans[{index}] (span {span.__dict__.get('span_id')!r}) is invalid: {exc}") from exc
        key = (row[0], row[1], row[2])
        if key in seen:
            raise ValueError(f"span {row[2]} appears twice in one batch")
        seen.add(key)
        rows.append(row)
    return rows


def span_batch_values(spans: Sequence[Span]) -> list[dict[str, Any]]:
    """:func:`span_batch_rows` as dicts by column name (without ``attempt_seq``)."""
    rows = []
    for row in span_batch_rows(spans):
        values = dict(zip(SPAN_COLUMNS, row, strict=True))
        del values["attempt_seq"]
        rows.append(values)
    return rows


def span_from_row(row: Any) -> Span:
    """A span from its row, without validating it again (it was checked on the way in)."""
    return trusted_span(
        repair_span_fields(
            {
                "rollout_id": row.rollout_id,
                "attempt_id": row.attempt_id,
                "sequence_id": row.sequence_id,
                "trace_id": row.trace_id,
                "span_id": row.span_id,
                "parent_id": row.parent_id,
                "name": row.name,
                "kind": row.kind,
                "attributes": row.attributes_json,
                "start_time": row.start_time,
                "end_time": row.end_time,
                "status": trusted_status(row.status_code, row.status_message),
            }
        )
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
