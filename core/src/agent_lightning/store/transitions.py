"""State-machine steps shared by every backend, as pure functions on the data model.

Backends load the records, call these, and write the results back inside one
transaction, so the retry/lease rules live in exactly one place. The ``check_*``
functions apply :mod:`agent_lightning.limits` at the entry of a backend's methods.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from agent_lightning import limits
from agent_lightning.errors import InvalidTransition, LeaseLost
from agent_lightning.types import Attempt, AttemptCompletion, Rollout, RolloutRequest, Span
from agent_lightning.types.resources import LLM, ToolConfig
from agent_lightning.types.rollouts import (
    CLAIMABLE_ROLLOUT_STATUSES,
    check_attempt_transition,
    check_request,
    check_rollout_transition,
    new_id,
)
from agent_lightning.types.spans import checked

MAX_ID_LENGTH = 128
"""The longest attempt id a client may choose."""
_ID_FORMAT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")


def check_attempt_id(attempt_id: str | None) -> None:
    """Refuse a client-chosen attempt id that is not 1-128 letters, digits and ``._:-`` (``None`` is fine)."""
    if attempt_id is None:
        return
    if not isinstance(attempt_id, str) or len(attempt_id) > MAX_ID_LENGTH or _ID_FORMAT.fullmatch(attempt_id) is None:
        raise ValueError(
            f"attempt_id must be 1-{MAX_ID_LENGTH} letters, digits and '._:-', starting with a letter or digit; "
            f"got {attempt_id!r:.80}"
        )


def as_request(value: Any) -> RolloutRequest:
    """``value`` as a request: a ``RolloutRequest`` as it is (:func:`new_rollout` checks it), else validated."""
    return value if type(value) is RolloutRequest else RolloutRequest.model_validate(value)


def new_rollout(request: RolloutRequest, now: float) -> Rollout:
    """The queued rollout a request describes; ``ValueError`` if the request breaks :mod:`agent_lightning.limits`."""
    if not isinstance(request, RolloutRequest):
        raise TypeError(f"expected a RolloutRequest, got {type(request).__name__}")
    check_request(request)
    return Rollout(
        rollout_id=request.rollout_id or new_id("ro"),
        task_type=request.task_type,
        input=request.input,
        mode=request.mode,
        resources_id=request.resources_id,
        config=request.config,
        metadata=dict(request.metadata),
        created_at=now,
    )


def start_attempt(
    rollout: Rollout, worker_id: str | None, now: float, attempt_id: str | None = None
) -> tuple[Rollout, Attempt]:
    """Move a claimable rollout to ``running`` with a new attempt leased to ``worker_id``.

    ``attempt_id`` is the id the caller chose (checked by :func:`check_attempt_id`); a new one by default.
    """
    check_attempt_id(attempt_id)
    limits.check_id(worker_id, "worker_id", optional=True)
    if rollout.status not in CLAIMABLE_ROLLOUT_STATUSES:
        raise InvalidTransition(f"rollout {rollout.rollout_id!r} is {rollout.status}, not claimable")
    check_rollout_transition(rollout.rollout_id, rollout.status, "running")
    sequence = rollout.attempt_count + 1
    attempt = Attempt(
        rollout_id=rollout.rollout_id,
        attempt_id=attempt_id or new_id("at"),
        sequence=sequence,
        worker_id=worker_id,
        status="running",
        started_at=now,
        last_heartbeat_at=now,
        lease_expires_at=now + rollout.config.lease_seconds,
    )
    updated = rollout.model_copy(
        update={
            "status": "running",
            "attempt_count": sequence,
            "started_at": rollout.started_at or now,
        }
    )
    return updated, attempt


def require_running(attempt: Attempt) -> None:
    """Raise :class:`LeaseLost` unless the attempt is still running."""
    if attempt.status != "running":
        raise LeaseLost(
            f"attempt {attempt.attempt_id!r} of rollout {attempt.rollout_id!r} is {attempt.status}; "
            "its worker no longer owns it"
        )


def heartbeat(rollout: Rollout, attempt: Attempt, now: float) -> Attempt:
    """The attempt with its lease extended."""
    require_running(attempt)
    return attempt.model_copy(update={"last_heartbeat_at": now, "lease_expires_at": now + rollout.config.lease_seconds})


def finish_attempt(
    rollout: Rollout, attempt: Attempt, status: str, error: str | None, now: float
) -> tuple[Rollout, Attempt]:
    """End an attempt and move the rollout accordingly (succeed, requeue, or fail for good)."""
    if status not in ("succeeded", "failed", "timeout", "lost"):
        raise ValueError(f"an attempt cannot finish as {status!r}; use 'succeeded' or 'failed'")
    limits.check_text(error, "error")
    require_running(attempt)
    if rollout.status != "running":
        raise InvalidTransition(f"rollout {rollout.rollout_id!r} is {rollout.status}; its attempt cannot finish")
    check_attempt_transition(attempt.attempt_id, attempt.status, status)
    ended = attempt.model_copy(update={"status": status, "ended_at": now, "error": error})
    if status == "succeeded":
        target, rollout_error = "succeeded", None
    elif rollout.attempt_count < rollout.config.max_attempts:
        target, rollout_error = "requeuing", None
    else:
        target = "failed"
        rollout_error = f"attempt {attempt.sequence}/{rollout.config.max_attempts} {status}" + (
            f": {error}" if error else ""
        )
    check_rollout_transition(rollout.rollout_id, rollout.status, target)
    terminal = target in ("succeeded", "failed")
    updated = rollout.model_copy(
        update={"status": target, "ended_at": now if terminal else None, "error": rollout_error}
    )
    return updated, ended


def expiry_status(rollout: Rollout, attempt: Attempt, now: float) -> str | None:
    """``'timeout'`` or ``'lost'`` when a running attempt has overrun, else ``None``."""
    if attempt.status != "running":
        return None
    timeout = rollout.config.timeout_seconds
    if timeout is not None and now - attempt.started_at > timeout:
        return "timeout"
    if now > attempt.lease_expires_at:
        return "lost"
    return None


def expiry_error(status: str, rollout: Rollout) -> str:
    if status == "timeout":
        return f"attempt exceeded timeout_seconds={rollout.config.timeout_seconds}"
    return f"worker stopped heart-beating; lease of {rollout.config.lease_seconds}s expired"


def cancel(rollout: Rollout, attempt: Attempt | None, now: float) -> tuple[Rollout, Attempt | None]:
    """Cancel a rollout and fail its running attempt, if any."""
    check_rollout_transition(rollout.rollout_id, rollout.status, "cancelled")
    ended = None
    if attempt is not None and attempt.status == "running":
        ended = attempt.model_copy(update={"status": "failed", "ended_at": now, "error": "rollout cancelled"})
    return rollout.model_copy(update={"status": "cancelled", "ended_at": now, "error": "cancelled"}), ended


IMMUTABLE_ATTEMPT_STATUSES: frozenset[str] = frozenset({"succeeded", "failed"})
"""Attempt statuses whose spans are final: see :func:`finished_span_refusal`."""


def finished_span_refusal(span: Span, stored: object | None, unchanged: bool) -> InvalidTransition | None:
    """Why ``span`` may not be written to its finished (succeeded or failed) attempt, or ``None``.

    ``stored`` is what the attempt holds under the span's id (``None``: nothing), ``unchanged`` whether
    ``span`` equals it. Sending a stored span again unchanged, and a new span that is no reward (an LLM
    call the proxy recorded late), are allowed; a new reward and any change to a stored span are not.
    """
    where = f"attempt {span.attempt_id} of rollout {span.rollout_id} has finished"
    if stored is not None:
        return None if unchanged else InvalidTransition(f"{where}: its span {span.span_id} cannot be changed")
    if span.kind == "reward":
        return InvalidTransition(f"{where}: its reward cannot be changed (reward span {span.span_id} refused)")
    return None


def check_spans_batch(spans: Sequence[Span]) -> list[Span]:
    """Reject a batch with an invalid span or one id twice, before any span of it is stored.

    Each span is checked again, so one built with ``model_construct`` (or changed after it
    was made) cannot slip a NaN or a malformed id into a store. Returns the spans as validated:
    the same objects where they were valid as they are (nothing is copied; a store encodes or
    copies them before keeping them), pydantic's coerced copies where the model converts a value.
    """
    seen: set[tuple[str, str, str]] = set()
    valid: list[Span] = []
    for index, span in enumerate(spans):
        if not isinstance(span, Span):
            raise TypeError(f"spans[{index}] is a {type(span).__name__}, not a Span")
        try:
            span = checked(span)
        except ValueError as exc:
            raise ValueError(f"spans[{index}] (span {span.__dict__.get('span_id')!r}) is invalid: {exc}") from exc
        key = (span.rollout_id, span.attempt_id, span.span_id)
        if key in seen:
            raise ValueError(f"span {span.span_id} appears twice in one batch")
        seen.add(key)
        valid.append(span)
    return valid


def check_pagination(limit: int | None, offset: int = 0, after_sequence_id: int | None = None) -> None:
    """``limit`` and ``offset`` are integers from 0 to 2**63 - 1; ``after_sequence_id`` a signed 64-bit one."""
    limits.check_int(limit, "limit", optional=True)
    limits.check_int(offset, "offset")
    limits.check_int(after_sequence_id, "after_sequence_id", minimum=-limits.MAX_INT - 1, optional=True)


def check_timeout(name: str, value: float | None) -> None:
    """A wait's timeout: ``None`` or a finite number of seconds, not negative."""
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
    ):
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")


def check_worker_id(worker_id: object) -> None:
    """``claim_rollout``'s ``worker_id``: a non-empty id."""
    limits.check_id(worker_id, "worker_id")


def check_claim_limit(limit: object) -> None:
    """``claim_rollouts``' ``limit``: an integer from 0 to :data:`~agent_lightning.limits.MAX_BATCH`."""
    limits.check_int(limit, "limit")
    assert isinstance(limit, int)
    if limit > limits.MAX_BATCH:
        raise ValueError(f"limit must be at most {limits.MAX_BATCH} rollouts per claim_rollouts call, got {limit}")


def check_completions(completions: Sequence[AttemptCompletion]) -> list[AttemptCompletion]:
    """Refuse a ``complete_attempts`` batch with an invalid item or one attempt twice, before anything is stored.

    Each item is validated again (one built with ``model_construct`` cannot slip a bad status through);
    returns the items as validated.
    """
    if len(completions) > limits.MAX_BATCH:
        raise ValueError(
            f"complete_attempts takes at most {limits.MAX_BATCH} attempts per call, got {len(completions)}"
        )
    seen: set[tuple[str, str]] = set()
    valid: list[AttemptCompletion] = []
    for index, item in enumerate(completions):
        if not isinstance(item, AttemptCompletion):
            raise TypeError(f"completions[{index}] is a {type(item).__name__}, not an AttemptCompletion")
        try:
            item = AttemptCompletion.model_validate(item.__dict__)
            limits.check_text(item.error, "error")
        except ValueError as exc:
            raise ValueError(f"completions[{index}] is invalid: {exc}") from exc
        key = (item.rollout_id, item.attempt_id)
        if key in seen:
            raise ValueError(f"attempt {item.attempt_id!r} of rollout {item.rollout_id!r} appears twice in one batch")
        seen.add(key)
        valid.append(item)
    return valid


def check_now(now: float | None) -> None:
    """``reap_expired``'s clock: ``None`` (the store's own) or a finite UNIX time (in-process tests only)."""
    limits.check_time(now, "now", optional=True)


def check_subscription(group: object, consumer: object = "default", visibility_timeout: object = None) -> None:
    """A subscription group, a consumer name and a visibility timeout within the limits."""
    limits.check_id(group, "subscription group")
    limits.check_id(consumer, "consumer")
    limits.check_seconds(visibility_timeout, "visibility_timeout", optional=True, positive=False)


def check_max_count(max_count: object) -> None:
    limits.check_int(max_count, "max_count", minimum=1)


def check_resources(resources: Mapping[str, Any], metadata: Mapping[str, Any] | None) -> None:
    """Resource names are ids; free-form resource values and the snapshot metadata are storable JSON."""
    for name, resource in resources.items():
        limits.check_id(name, "resource name")
        if isinstance(resource, LLM):
            limits.check_json(resource.sampling_parameters, f"resources.{name}.sampling_parameters")
        elif isinstance(resource, ToolConfig):
            limits.check_json(resource.config, f"resources.{name}.config")
    if metadata is not None:
        limits.check_json(dict(metadata), "metadata")
