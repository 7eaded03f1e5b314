"""The rulebook: what every store accepts, the same on every backend and over HTTP.

Every backend applies these rules at the entry of each write method, before anything is
stored (through :mod:`agent_lightning.store.transitions` and the data model's validators),
and the store server applies them again while it parses a request. A value that breaks a rule
is refused with a ``ValueError`` naming the field (a 422 over HTTP), and nothing is stored.

=====================================  ==========================================================
What                                   Rule
=====================================  ==========================================================
Ids: rollout, attempt, span,           At most :data:`MAX_ID_LENGTH` (256) characters. Span,
resources, task type, worker,          trace and parent ids are fixed-length hex (OpenTelemetry).
subscription group and consumer
Span names                             1 to :data:`MAX_NAME_LENGTH` (1,024) characters.
Free text: ``error`` of an attempt,    At most :data:`MAX_TEXT_LENGTH` (1 MiB) characters.
a span's status message
JSON values: rollout ``input`` and     Nested at most :data:`MAX_JSON_DEPTH` (100) containers deep;
``metadata``, span attributes,         objects have string keys; floats are finite (no NaN or
resources, snapshot metadata           infinity); only ``dict``/``list``/``str``/``int``/``float``/
                                       ``bool``/``None``.
Durations: ``lease_seconds``,          Finite, positive, at most :data:`MAX_SECONDS` (1e9 s, about
``timeout_seconds``,                   31 years). Wait timeouts (``timeout`` of ``wait_for_rollouts``
``visibility_timeout``                 and ``pull_completed``) are finite and not negative.
Times: span start/end, ``now``         Finite.
Integers: ``limit``, ``offset``,       Within the signed 64-bit range (at most :data:`MAX_INT`).
``after_sequence_id``, span
``sequence_id``, ``max_count``
Batches: ``limit`` of                  At most :data:`MAX_BATCH` (1,000) rollouts claimed or
``claim_rollouts``, the items of       attempts completed in one call.
``complete_attempts``
Request bodies (HTTP)                  At most the server's ``max_body_bytes`` (64 MiB by default;
                                       413 above), which also bounds the size of one JSON value
                                       sent over HTTP. In process, sizes are bounded by the backend
                                       (PostgreSQL: 1 GB a value; Redis: 512 MB).
=====================================  ==========================================================

Times are the store's own clock: leases and reaping use the time of the process running the
store (the store server's, over HTTP). ``reap_expired(now=...)`` takes another time only in
process, for tests; the store server refuses a ``now``.

Readers never fail on a row an older release stored before a rule existed (a value nested
deeper than the limit, a lease that is not a finite number): :func:`repair_rollout_fields` and
:func:`repair_span_fields` replace what breaks the rules and log a warning naming the rollout.
"""

from __future__ import annotations

import logging
import math
from typing import Any

logger = logging.getLogger("agent_lightning.limits")

MAX_ID_LENGTH = 256
"""Longest id (rollout, attempt, resources, task type, worker, group, consumer), in characters."""
MAX_NAME_LENGTH = 1024
"""Longest span name, in characters."""
MAX_TEXT_LENGTH = 1 << 20
"""Longest free text (an attempt's ``error``, a span's status message), in characters."""
MAX_JSON_DEPTH = 100
"""Deepest nesting of containers (objects, arrays) in a stored JSON value."""
MAX_INT = 2**63 - 1
"""Largest integer a store takes for counts, offsets and sequence ids (signed 64-bit)."""
MAX_SECONDS = 1e9
"""Longest duration (``lease_seconds``, ``timeout_seconds``, ``visibility_timeout``), in seconds."""
MAX_BATCH = 1000
"""Most rollouts one ``claim_rollouts`` call claims, and most attempts one ``complete_attempts`` call completes."""

_SCALARS = (str, bool, int, type(None))


def check_id(value: object, field: str, *, optional: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a non-empty id of at most :data:`MAX_ID_LENGTH` characters."""
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string, got {_short(value)}")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{field} is {len(value)} characters long; ids are limited to {MAX_ID_LENGTH} characters")


def check_text(value: object, field: str, limit: int = MAX_TEXT_LENGTH) -> None:
    """Raise ``ValueError`` unless ``value`` is ``None`` or a string of at most ``limit`` characters."""
    if value is None:
        return
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"{field} is {len(value)} characters long; the limit is {limit}")


def check_int(value: object, field: str, *, minimum: int = 0, optional: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer from ``minimum`` to :data:`MAX_INT`."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field} must be an integer, got {_short(value)}")
    if not minimum <= value <= MAX_INT:
        raise ValueError(f"{field} must be between {minimum} and {MAX_INT} (signed 64-bit), got {value}")


def check_time(value: object, field: str, *, optional: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number (a UNIX time)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {_short(value)}")


def check_seconds(value: object, field: str, *, optional: bool = False, positive: bool = True) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite duration up to :data:`MAX_SECONDS` (over 0 if ``positive``)."""
    if value is None and optional:
        return
    check_time(value, field)
    assert isinstance(value, (int, float))
    if (value <= 0 if positive else value < 0) or value > MAX_SECONDS:
        low = "above 0" if positive else "at least 0"
        raise ValueError(f"{field} must be {low} and at most {MAX_SECONDS:g} seconds, got {value!r}")


def check_json(value: Any, field: str) -> None:
    """Raise ``ValueError`` naming the place in ``value`` that is not a storable JSON value.

    Storable: nested at most :data:`MAX_JSON_DEPTH` containers deep, string keys, finite floats,
    and only ``dict``/``list``/``tuple``/``str``/``int``/``float``/``bool``/``None``.
    """
    if not _json_ok(value, MAX_JSON_DEPTH):  # the usual case is checked without building paths
        _check_json(value, field, MAX_JSON_DEPTH)


_PLAIN_SCALARS = frozenset({str, int, bool, type(None)})


def _json_ok(value: Any, budget: int) -> bool:
    """Whether ``value`` is storable, for plain types only (anything else goes to :func:`_check_json`)."""
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is dict:
        return budget > 0 and all(type(k) is str and _json_ok(v, budget - 1) for k, v in value.items())
    if kind is list or kind is tuple:
        return budget > 0 and all(_json_ok(v, budget - 1) for v in value)
    return False


def _check_json(value: Any, path: str, budget: int) -> None:
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path} is {value!r}; only finite numbers can be stored")
        return
    if isinstance(value, (dict, list, tuple)):
        if budget <= 0:
            shown = path if len(path) <= 60 else f"{path[:40]}…{path[-12:]}"
            raise ValueError(f"{shown} is nested too deep: JSON values may nest at most {MAX_JSON_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ValueError(f"{path} has a non-string key {_short(key)}; JSON objects need string keys")
                _check_json(item, f"{path}.{key}", budget - 1)
        else:
            for index, item in enumerate(value):
                _check_json(item, f"{path}[{index}]", budget - 1)
        return
    raise ValueError(f"{path} has type {type(value).__name__}; use JSON values")


def too_deep(value: Any, budget: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` nests more than ``budget`` containers (a cheap check for reading)."""
    kind = type(value)
    if kind is dict:
        if budget <= 0:
            return True
        return any(type(v) in (dict, list) and too_deep(v, budget - 1) for v in value.values())
    if kind is list:
        if budget <= 0:
            return True
        return any(type(v) in (dict, list) and too_deep(v, budget - 1) for v in value)
    return False


def _storable(value: Any, budget: int = MAX_JSON_DEPTH) -> bool:
    try:
        _check_json(value, "value", budget)
    except ValueError:
        return False
    return True


def repair_rollout_fields(data: dict[str, Any], default_lease: float = 60.0) -> dict[str, Any]:
    """A rollout's fields as read from a backend, with what breaks the rules replaced (and logged).

    An ``input`` that is not a storable JSON value becomes ``None``; a ``metadata`` key whose value is
    not one is dropped; a lease or timeout that is not a finite positive number becomes the default.
    For rows an older release stored before a rule existed: reading them must not fail.
    """
    rollout_id = data.get("rollout_id")
    fixed: list[str] = []
    if data.get("input") is not None and not _storable(data["input"]):
        data["input"] = None
        fixed.append("input (not a storable JSON value) replaced by null")
    metadata = data.get("metadata")
    if isinstance(metadata, dict):
        bad = [
            key for key, item in metadata.items() if not isinstance(key, str) or not _storable(item, MAX_JSON_DEPTH - 1)
        ]
        if bad:
            data["metadata"] = {k: v for k, v in metadata.items() if k not in bad}
            fixed.append(f"metadata keys {bad!r} (not storable JSON values) dropped")
    elif metadata is not None:
        data["metadata"] = {}
        fixed.append("metadata (not an object) replaced by {}")
    config = data.get("config")
    if isinstance(config, dict):
        lease = config.get("lease_seconds")
        if not _is_duration(lease):
            config["lease_seconds"] = default_lease
            fixed.append(f"lease_seconds {lease!r} replaced by {default_lease}")
        timeout = config.get("timeout_seconds")
        if timeout is not None and not _is_duration(timeout):
            config["timeout_seconds"] = None
            fixed.append(f"timeout_seconds {timeout!r} replaced by null")
    if fixed:
        logger.warning("rollout %r as stored breaks the store's limits; read with: %s", rollout_id, "; ".join(fixed))
    return data


def repair_span_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """A span's fields as read from a backend, with attributes nested too deep dropped (and logged)."""
    attributes = fields.get("attributes")
    if type(attributes) is dict and too_deep(attributes):
        bad = [key for key, item in attributes.items() if too_deep(item, MAX_JSON_DEPTH - 1)]
        fields["attributes"] = {k: v for k, v in attributes.items() if k not in bad}
        logger.warning(
            "span %r of rollout %r as stored has attributes %r nested more than %d levels deep; read without them",
            fields.get("span_id"),
            fields.get("rollout_id"),
            bad,
            MAX_JSON_DEPTH,
        )
    return fields


def _is_duration(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}… ({len(text)} characters)"
