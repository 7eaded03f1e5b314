"""How rollouts, attempts, spans and resources are written to and read from Redis values."""

from __future__ import annotations

import json
import math
from typing import Any

from agent_lightning.limits import MAX_SECONDS, repair_rollout_fields, repair_span_fields
from agent_lightning.types import Attempt, ResourcesSnapshot, Rollout, RolloutConfig, Span
from agent_lightning.types.spans import span_fields_json, trusted_span

DEFAULT_LEASE = RolloutConfig.model_fields["lease_seconds"].default

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency; plain json still works
    _orjson = None  # type: ignore[assignment]

_BODY_FIELDS = frozenset(
    {"rollout_id", "task_type", "input", "mode", "resources_id", "config", "created_at", "metadata"}
)
_ATTEMPT_FIELDS = frozenset(
    {
        "rollout_id",
        "attempt_id",
        "sequence",
        "worker_id",
        "status",
        "started_at",
        "ended_at",
        "last_heartbeat_at",
        "error",
    }
)


def num(value: float | None) -> str:
    """A float as a string that reads back exactly (``''`` for ``None``)."""
    return "" if value is None else repr(float(value))


def opt_float(value: str | None) -> float | None:
    return None if value is None or value == "" else float(value)


def lease_seconds(raw: str | None) -> float:
    """A rollout's stored ``lease`` field; one an older release stored as inf, nan or '' reads as the default."""
    try:
        value = float(raw) if raw else math.nan
    except ValueError:
        value = math.nan
    return value if math.isfinite(value) and 0 < value <= MAX_SECONDS else DEFAULT_LEASE


def check_json_value(value: Any, path: str) -> None:
    """Raise ``ValueError`` naming ``path`` if ``value`` holds a NaN/infinite float or a non-string key.

    JSON has no NaN; pydantic would silently write it as ``null``, so it is refused instead.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path} holds {value!r}; only finite numbers can be stored")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path} has a non-string key {key!r}; JSON objects need string keys")
            check_json_value(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_json_value(item, f"{path}[{index}]")


def rollout_body(rollout: Rollout) -> str:
    """JSON of the fields of a rollout that never change."""
    check_json_value(rollout.input, "input")
    check_json_value(rollout.metadata, "metadata")
    try:
        return rollout.model_dump_json(include=set(_BODY_FIELDS))
    except ValueError as exc:
        raise ValueError(f"rollout {rollout.rollout_id!r} cannot be stored as JSON: {exc}") from exc


def decode_rollout(fields: dict[str, str]) -> Rollout:
    """A rollout from its hash."""
    data = repair_rollout_fields(json.loads(fields["body"]), DEFAULT_LEASE)
    data["status"] = fields["status"]
    data["attempt_count"] = int(fields["n"])
    data["started_at"] = opt_float(fields.get("started"))
    data["ended_at"] = opt_float(fields.get("ended"))
    error = fields.get("error")
    data["error"] = None if error is None else error[1:]
    return Rollout.model_validate(data)


def encode_error(error: str | None) -> str:
    return "" if error is None else "=" + error


def encode_attempt(attempt: Attempt) -> str:
    """Attempt JSON without ``lease_expires_at``, which is always ``last_heartbeat_at + lease_seconds``."""
    return attempt.model_dump_json(include=set(_ATTEMPT_FIELDS))


def decode_attempt(raw: str, lease_seconds: float) -> Attempt:
    data = json.loads(raw)
    data["lease_expires_at"] = data["last_heartbeat_at"] + lease_seconds
    return Attempt.model_validate(data)


def decode_attempts(raw: dict[str, str], lease_seconds: float) -> list[Attempt]:
    """Every attempt of a rollout, first first."""
    return sorted((decode_attempt(v, lease_seconds) for v in raw.values()), key=lambda a: a.sequence)


def lease_deadline(rollout: Rollout, attempt: Attempt) -> str:
    """When a running attempt expires: its lease, or its wall-clock limit if sooner."""
    deadline = attempt.lease_expires_at
    if rollout.config.timeout_seconds is not None:
        deadline = min(deadline, attempt.started_at + rollout.config.timeout_seconds)
    return num(deadline)


def encode_resources(snapshot: ResourcesSnapshot) -> str:
    return snapshot.model_dump_json(exclude={"version"})


def decode_resources(body: str, version: str) -> ResourcesSnapshot:
    data = json.loads(body)
    data["version"] = int(version)
    return ResourcesSnapshot.model_validate(data)


def encode_span(span: Span) -> str:
    """A checked span (see ``check_spans_batch``) as one JSON document."""
    fields = span_fields_json(span)
    if _orjson is not None:
        try:
            return _orjson.dumps(fields).decode()
        except (TypeError, _orjson.JSONEncodeError):  # an int over 64 bits
            pass
    return json.dumps(fields, separators=(",", ":"), allow_nan=False)


def decode_span(raw: str) -> Span:
    """A span from the JSON this store wrote after validating it, without validating it again.

    Revalidating attributes on every read costs about twice as much as building the object,
    and the store only ever holds spans that passed ``check_spans_batch``.
    """
    return trusted_span(repair_span_fields(json.loads(raw)))
