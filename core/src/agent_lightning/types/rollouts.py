"""Rollouts (tasks) and attempts, and the one state machine that governs them.

State machine
=============

A **rollout** is one task to be solved by an agent (the article's "task"). Each
try at solving it is an **attempt**, run by one worker holding a lease.

Rollout status::

    queuing ───claim───▶ running ──attempt succeeded──────────────────────────────────▶ succeeded
                          ▲   │
    requeuing ───claim────┘   ├──attempt failed | timeout | lost, attempts < max_attempts ──▶ requeuing
                              │
                              └──attempt failed | timeout | lost, attempts = max_attempts ──▶ failed

    queuing | requeuing | running ──cancel──▶ cancelled

Attempt status::

    running ──▶ succeeded | failed | timeout | lost

* ``timeout``: the attempt ran longer than ``RolloutConfig.timeout_seconds``.
* ``lost``: the worker stopped heart-beating and its lease expired.
* An attempt that times out or is lost counts like a failed one: the rollout is
  requeued while attempts remain, and its last attempt ending ``failed``,
  ``timeout`` or ``lost`` makes the rollout ``failed`` (``rollout.error`` reads
  e.g. ``attempt 3/3 lost: worker stopped heart-beating; …``).

``succeeded``, ``failed`` and ``cancelled`` are terminal for a rollout; every
attempt status but ``running`` is terminal for an attempt. A finished attempt
never changes again: a late ``complete_attempt`` for an attempt that was already
marked ``lost`` is rejected with :class:`~agent_lightning.errors.InvalidTransition`.
Stores enforce these transitions through :func:`check_rollout_transition` and
:func:`check_attempt_transition`, so every backend behaves the same.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent_lightning import limits
from agent_lightning.errors import InvalidTransition

RolloutStatus = Literal["queuing", "running", "requeuing", "succeeded", "failed", "cancelled"]
AttemptStatus = Literal["running", "succeeded", "failed", "timeout", "lost"]
RolloutMode = Literal["train", "val", "test"]

TERMINAL_ROLLOUT_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
TERMINAL_ATTEMPT_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "timeout", "lost"})
CLAIMABLE_ROLLOUT_STATUSES: frozenset[str] = frozenset({"queuing", "requeuing"})

_ROLLOUT_TRANSITIONS: dict[str, frozenset[str]] = {
    "queuing": frozenset({"running", "cancelled"}),
    "requeuing": frozenset({"running", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "requeuing", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
_ATTEMPT_TRANSITIONS: dict[str, frozenset[str]] = {
    "running": frozenset({"succeeded", "failed", "timeout", "lost"}),
    **{status: frozenset() for status in TERMINAL_ATTEMPT_STATUSES},
}


def check_rollout_transition(rollout_id: str, old: str, new: str) -> None:
    """Raise :class:`InvalidTransition` unless ``old → new`` is a legal rollout transition."""
    if new not in _ROLLOUT_TRANSITIONS.get(old, frozenset()):
        raise InvalidTransition(f"rollout {rollout_id!r}: cannot go from {old!r} to {new!r}")


def check_attempt_transition(attempt_id: str, old: str, new: str) -> None:
    """Raise :class:`InvalidTransition` unless ``old → new`` is a legal attempt transition."""
    if new not in _ATTEMPT_TRANSITIONS.get(old, frozenset()):
        raise InvalidTransition(f"attempt {attempt_id!r}: cannot go from {old!r} to {new!r}")


def new_id(prefix: str) -> str:
    """A unique, sortable-enough identifier such as ``ro-3f2a…``."""
    return f"{prefix}-{uuid.uuid4().hex}"


class RolloutConfig(BaseModel):
    """Retry and timeout policy of one rollout."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=3, ge=1, le=100)
    """How many attempts a rollout gets before it is marked ``failed``."""
    lease_seconds: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    """A worker that has not heart-beaten for this long loses its attempt (``lost``)."""
    timeout_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Wall-clock limit of one attempt; ``None`` means no limit."""


class Rollout(BaseModel):
    """One task for an agent to solve, and where it stands."""

    model_config = ConfigDict(extra="forbid")

    rollout_id: str
    task_type: str = "default"
    """What kind of task this is; trainers subscribe by task type."""
    input: Any = None
    """The task payload handed to the agent (any JSON value)."""
    mode: RolloutMode = "train"
    status: RolloutStatus = "queuing"
    resources_id: str | None = None
    """The resources snapshot the rollout must run with; ``None`` means the latest."""
    config: RolloutConfig = Field(default_factory=RolloutConfig)
    attempt_count: int = 0
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    """Why the rollout failed, when it did."""
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        """Whether the rollout will never change status again."""
        return self.status in TERMINAL_ROLLOUT_STATUSES


class RolloutRequest(BaseModel):
    """What to enqueue: everything about a rollout that the caller chooses."""

    model_config = ConfigDict(extra="forbid")

    input: Any = None
    task_type: str = "default"
    mode: RolloutMode = "train"
    resources_id: str | None = None
    config: RolloutConfig = Field(default_factory=RolloutConfig)
    metadata: dict[str, Any] = Field(default_factory=dict)
    rollout_id: str | None = None
    """Leave empty to get a generated id; a duplicate id is rejected."""

    @field_validator("task_type")
    @classmethod
    def _task_type_not_empty(cls, value: str) -> str:
        if not value or not value.strip():
            raise ValueError("task_type must be a non-empty string")
        return value

    @model_validator(mode="after")
    def _within_limits(self) -> RolloutRequest:
        check_request(self)
        return self


def check_request(request: RolloutRequest) -> None:
    """Raise ``ValueError`` naming the field of a request that breaks :mod:`agent_lightning.limits`.

    Stores call it on every request they are given (one built with ``model_construct``, or changed
    after it was made, skipped the model's validation).
    """
    if not isinstance(request.task_type, str) or not request.task_type.strip():
        raise ValueError("task_type must be a non-empty string")
    limits.check_id(request.task_type, "task_type")
    if request.rollout_id:  # empty: the store makes one
        limits.check_id(request.rollout_id, "rollout_id")
    limits.check_id(request.resources_id, "resources_id", optional=True)
    if request.mode not in ("train", "val", "test"):
        raise ValueError(f"mode must be 'train', 'val' or 'test', got {request.mode!r}")
    limits.check_json(request.input, "input")
    if not isinstance(request.metadata, dict):
        raise ValueError(f"metadata must be an object, got {type(request.metadata).__name__}")
    limits.check_json(request.metadata, "metadata")
    config = request.config
    if not isinstance(config, RolloutConfig):
        raise ValueError(f"config must be a RolloutConfig, got {type(config).__name__}")
    limits.check_int(config.max_attempts, "config.max_attempts", minimum=1)
    limits.check_seconds(config.lease_seconds, "config.lease_seconds")
    limits.check_seconds(config.timeout_seconds, "config.timeout_seconds", optional=True)


class Attempt(BaseModel):
    """One try at a rollout by one worker."""

    model_config = ConfigDict(extra="forbid")

    rollout_id: str
    attempt_id: str
    sequence: int
    """1 for the first attempt of a rollout, 2 for the first retry, …"""
    worker_id: str | None = None
    status: AttemptStatus = "running"
    started_at: float = Field(default_factory=time.time)
    ended_at: float | None = None
    last_heartbeat_at: float = Field(default_factory=time.time)
    lease_expires_at: float = 0.0
    error: str | None = None


class Subscription(BaseModel):
    """A subscription group and its backlog (``LightningStore.list_subscriptions``)."""

    model_config = ConfigDict(extra="forbid")

    group: str
    task_types: list[str] | None = None
    """The task types it receives (sorted), or ``None`` for every one."""
    pending: int = 0
    """Finished rollouts waiting to be pulled (a delivery whose visibility timeout passed included)."""
    delivered: int = 0
    """Rollouts pulled and not yet acknowledged, within their visibility timeout."""


class AttemptCompletion(BaseModel):
    """One item of ``LightningStore.complete_attempts``: what one ``complete_attempt`` call takes."""

    model_config = ConfigDict(extra="forbid")

    rollout_id: str
    attempt_id: str
    status: Literal["succeeded", "failed"]
    error: str | None = None


class AttemptedRollout(BaseModel):
    """A claimed rollout together with the attempt the claimer now owns."""

    model_config = ConfigDict(extra="forbid")

    rollout: Rollout
    attempt: Attempt

    @property
    def rollout_id(self) -> str:
        return self.rollout.rollout_id

    @property
    def attempt_id(self) -> str:
        return self.attempt.attempt_id
