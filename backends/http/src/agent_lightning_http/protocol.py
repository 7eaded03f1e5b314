"""The store server's wire protocol, shared by the server and the HTTP client (pydantic only).

Every :class:`~agent_lightning.store.base.LightningStore` method is one ``POST /v1/<method>``
endpoint taking a JSON object of its arguments (``add_spans`` takes the JSON array of spans).
Ids travel in bodies, never in paths, so any rollout id works. Errors come back as
``{"error": {"type": "NotFound", "message": "..."}}`` with the status code :data:`ERROR_STATUS` gives.
"""

from __future__ import annotations

from typing import Any, Literal

from agent_lightning.errors import DuplicateId, InvalidTransition, LeaseLost, NotFound, StoreError, StoreUnavailable
from agent_lightning.limits import MAX_BATCH, MAX_INT, MAX_SECONDS
from agent_lightning.types import AttemptCompletion, Resource, RolloutMode, RolloutRequest, RolloutStatus, SpanKind
from agent_lightning.types.spans import SpanCursor
from pydantic import BaseModel, ConfigDict, Field, field_validator

API_PREFIX = "/v1"
API_KEY_ENV = "AGL_STORE_API_KEY"
"""Environment variable holding the API key, read by ``agl store serve`` and by the client."""
API_KEY_FILE_ENV = "AGL_STORE_API_KEY_FILE"
"""Environment variable naming a file whose first line is the client's key (when ``$AGL_STORE_API_KEY`` is unset)."""
ATTEMPT_TOKEN_ENV = "AGL_ATTEMPT_TOKEN"
"""Environment variable with the token of the attempt a child process works for (``ScriptAgent`` sets it;
core's ``agent_lightning.instrumentation.context.ATTEMPT_TOKEN_ENV``)."""
API_KEY_HEADER = "x-api-key"
IDEMPOTENCY_HEADER = "idempotency-key"
"""A client-chosen key; the server replays the first answer to a request sent again with the same key."""
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_WAIT_SECONDS = 30.0
"""The longest a long-poll request (``wait_for_rollouts``, ``pull_completed``) is held open server-side."""

ERROR_TYPES: dict[str, type[Exception]] = {
    "NotFound": NotFound,
    "DuplicateId": DuplicateId,
    "LeaseLost": LeaseLost,
    "InvalidTransition": InvalidTransition,
    "ValueError": ValueError,
    "TypeError": TypeError,
    "StoreUnavailable": StoreUnavailable,
    "StoreError": StoreError,
}
"""Error class names the server reports and the client raises again."""

ERROR_STATUS: dict[str, int] = {
    "NotFound": 404,
    "DuplicateId": 409,
    "LeaseLost": 409,
    "InvalidTransition": 409,
    "ValueError": 422,
    "TypeError": 422,
    "StoreUnavailable": 503,
    "StoreError": 500,
}


def error_type(exc: BaseException) -> str:
    """The protocol name of an exception: the most specific class of :data:`ERROR_TYPES` it is."""
    for name, cls in ERROR_TYPES.items():  # ordered most specific first
        if isinstance(exc, cls):
            return name
    return type(exc).__name__


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Body):
    type: str = Field(description="The error class: NotFound, DuplicateId, LeaseLost, InvalidTransition, ValueError…")
    message: str


class ErrorResponse(_Body):
    error: ErrorDetail


class CountResponse(_Body):
    count: int


class EnqueueRolloutsRequest(_Body):
    requests: list[RolloutRequest]


class StartRolloutRequest(_Body):
    request: RolloutRequest
    worker_id: str | None = None
    attempt_id: str | None = None


class ClaimRolloutRequest(_Body):
    worker_id: str
    task_types: list[str] | None = None
    modes: list[RolloutMode] | None = None


class ClaimRolloutsRequest(_Body):
    worker_id: str
    limit: int = Field(ge=0, le=MAX_BATCH, description="the most rollouts to claim")
    task_types: list[str] | None = None
    modes: list[RolloutMode] | None = None


class AttemptRef(_Body):
    rollout_id: str
    attempt_id: str


class CompleteAttemptRequest(_Body):
    rollout_id: str
    attempt_id: str
    status: Literal["succeeded", "failed"]
    error: str | None = None


class CompleteAttemptsRequest(_Body):
    completions: list[AttemptCompletion] = Field(max_length=MAX_BATCH)


class RolloutRef(_Body):
    rollout_id: str


class ReapExpiredRequest(_Body):
    now: float | None = Field(default=None, description="must be null or absent: the server reaps by its own clock")

    @field_validator("now", mode="before")
    @classmethod
    def _server_clock(cls, value: object) -> None:
        if value is not None:
            raise ValueError("the store server reaps by its own clock; send no 'now'")
        return None


class QueryRolloutsRequest(_Body):
    status: list[RolloutStatus] | None = None
    task_types: list[str] | None = None
    mode: RolloutMode | None = None
    rollout_ids: list[str] | None = None
    limit: int = Field(default=100, ge=0, le=MAX_INT)
    offset: int = Field(default=0, ge=0, le=MAX_INT)


class CountRolloutsRequest(_Body):
    status: list[RolloutStatus] | None = None
    task_types: list[str] | None = None
    mode: RolloutMode | None = None


class WaitForRolloutsRequest(_Body):
    rollout_ids: list[str]
    timeout: float | None = Field(
        default=None, allow_inf_nan=False, description=f"seconds; the server waits at most {MAX_WAIT_SECONDS}"
    )


class QuerySpansRequest(_Body):
    rollout_id: str
    attempt_id: str | None = Field(default=None, description="an attempt id, 'latest', or null for every attempt")
    kinds: list[SpanKind] | None = None
    names: list[str] | None = None
    after_sequence_id: int | None = Field(default=None, ge=-MAX_INT - 1, le=MAX_INT)
    limit: int | None = Field(default=None, ge=0, le=MAX_INT)
    after: SpanCursor | None = Field(default=None, description="the position to continue after (a page's last span)")


class AddResourcesRequest(_Body):
    resources: dict[str, Resource]
    metadata: dict[str, Any] | None = None


class ResourcesRef(_Body):
    resources_id: str


class SubscribeRequest(_Body):
    group: str
    task_types: list[str] | None = None
    from_beginning: bool = False


class PullCompletedRequest(_Body):
    group: str
    consumer: str = "default"
    max_count: int = Field(default=100, ge=1, le=MAX_INT)
    timeout: float = Field(
        default=0.0, allow_inf_nan=False, description=f"seconds; the server waits at most {MAX_WAIT_SECONDS}"
    )
    visibility_timeout: float = Field(default=300.0, ge=0, le=MAX_SECONDS, allow_inf_nan=False)


class IssueTokenRequest(_Body):
    rollout_id: str
    attempt_id: str
    ttl: float = Field(default=7 * 24 * 3600.0, gt=0, le=365 * 24 * 3600.0, description="seconds the token is valid")


class IssueRunnerTokenRequest(_Body):
    name: str | None = Field(default=None, max_length=200, description="a label naming the runner or machine")
    ttl: float = Field(default=30 * 24 * 3600.0, gt=0, le=365 * 24 * 3600.0, description="seconds the token is valid")
    task_types: list[str] | None = Field(
        default=None, min_length=1, description="the only task types it may claim (default: any)"
    )


class TokenResponse(_Body):
    token: str
    expires: float = Field(description="Unix time the token expires")


class AckCompletedRequest(_Body):
    group: str
    rollout_ids: list[str]
