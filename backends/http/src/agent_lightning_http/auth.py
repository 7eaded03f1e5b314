"""Credentials of the store server and the LLM proxy: the admin key, runner tokens and attempt tokens.

* The **admin key** (``agl store serve --api-key-file``/``$AGL_STORE_API_KEY``) may call everything.
* A **runner token** is signed by the server (HMAC-SHA256) and names an expiry, an optional label
  and optionally the task types it may claim. It may claim rollouts and read resources
  (:data:`RUNNER_ENDPOINTS`); nothing else. The admin issues one with ``POST /v1/issue_runner_token``
  (``agl store token --runner``).
* An **attempt token** is signed by the server (like a pre-signed URL) and names one rollout
  attempt and an expiry. It may write spans (and so rewards) to that attempt, heartbeat and complete
  it, and read that rollout, its spans and the resources; nothing else (:data:`SCOPED_ENDPOINTS`).
  The server hands one out with every claimed or started attempt (response header
  ``x-agl-attempt-token``) and on ``POST /v1/issue_token`` (admin only). A runner holding a runner
  token does its attempt's calls with it; the LLM proxy accepts the same tokens to attribute a call.

No credential changes a finished attempt: the store refuses a second completion and a reward or a
changed span on a finished attempt (409), whoever sends it.

The signing secret is derived from the admin key unless given (``$AGL_TOKEN_SECRET``), so a proxy
that writes to the server with the admin key verifies the server's tokens without more setup.

The tokens themselves are :mod:`agent_lightning_proxy.tokens`.
"""

from __future__ import annotations

import orjson
from agent_lightning_proxy.tokens import (
    DEFAULT_RUNNER_TOKEN_TTL,
    DEFAULT_TOKEN_TTL,
    RUNNER_TOKEN_PREFIX,
    TOKEN_HEADER,
    TOKEN_PREFIX,
    TOKEN_SECRET_ENV,
    AttemptScope,
    RunnerScope,
    TokenSigner,
    derive_token_secret,
    is_runner_token,
    is_token,
    token_attempt,
)

SCOPED_ENDPOINTS: dict[str, str] = {
    "add_spans": "spans",
    "heartbeat": "attempt",
    "complete_attempt": "attempt",
    "get_rollout": "rollout",
    "get_attempts": "rollout",
    "query_spans": "rollout",
    "get_resources": "any",
    "get_latest_resources": "any",
}
"""What an attempt token may call (``/v1/<method>``) and what its body must name: ``spans`` (every
span of the array belongs to the attempt), ``attempt`` (its ``rollout_id`` and ``attempt_id``),
``rollout`` (its ``rollout_id``; an ``attempt_id``, if given, is any of that rollout's) or ``any``."""

RUNNER_ENDPOINTS: dict[str, str] = {
    "claim_rollout": "claim",
    "claim_rollouts": "claim",
    "get_resources": "any",
    "get_latest_resources": "any",
}
"""What a runner token may call (``/v1/<method>``) and what its body must name: ``claim`` (its
``task_types`` within the token's when the token names some; none given means the token's) or
``any``. A claim's answer carries the attempt token for the attempt's own calls (a batch claim's,
one per attempt, comma-separated)."""


class Refused(Exception):
    """A request its credential may not send (HTTP 403, with this message)."""


def scope_refusal(scope: AttemptScope, method: str, body: bytes) -> str | None:
    """Why a token with ``scope`` may not send ``body`` to ``/v1/<method>``; ``None`` when it may."""
    rule = SCOPED_ENDPOINTS.get(method)
    where = f"attempt {scope.attempt_id} of rollout {scope.rollout_id}"
    if rule is None:
        return f"an attempt token may not call {method} (it may only write to, complete and read {where})"
    if rule == "any":
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None  # the endpoint refuses it as invalid JSON
    if rule == "spans":
        items = data if isinstance(data, list) else []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            if item.get("rollout_id") != scope.rollout_id or item.get("attempt_id") != scope.attempt_id:
                return f"span {index} does not belong to {where}, the only attempt this token may write to"
        return None
    if not isinstance(data, dict):
        return None
    if data.get("rollout_id") != scope.rollout_id:
        return f"this token is for {where} only"
    if rule == "attempt" and data.get("attempt_id") != scope.attempt_id:
        return f"this token is for {where} only"
    return None


def _runner_methods() -> str:
    return ", ".join(RUNNER_ENDPOINTS)


def admit_runner(scope: RunnerScope, method: str, body: bytes) -> bytes:
    """The body to serve for a runner token's request to ``/v1/<method>``; raises :class:`Refused` if it may not.

    A claim that names no task types gets the token's, when the token is restricted to some.
    """
    rule = RUNNER_ENDPOINTS.get(method)
    if rule is None:
        raise Refused(
            f"a runner token may not call {method}: it may call {_runner_methods()} only; the calls about a "
            f"claimed attempt (heartbeat, add_spans, complete_attempt, get_rollout, get_attempts, query_spans) "
            f"take the attempt token the claim answered with (header {TOKEN_HEADER}); everything else needs "
            "the admin key"
        )
    if rule == "any" or scope.task_types is None:
        return body
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body  # the endpoint refuses it as invalid JSON
    if not isinstance(data, dict):
        return body
    allowed = list(scope.task_types)
    asked = data.get("task_types")
    if asked is None:
        data["task_types"] = allowed
        return orjson.dumps(data)
    outside = [t for t in asked if t not in allowed] if isinstance(asked, list) else [asked]
    if outside:
        raise Refused(f"this runner token may claim rollouts of task types {allowed} only, not {outside}")
    return body


__all__ = [
    "DEFAULT_RUNNER_TOKEN_TTL",
    "DEFAULT_TOKEN_TTL",
    "RUNNER_ENDPOINTS",
    "RUNNER_TOKEN_PREFIX",
    "SCOPED_ENDPOINTS",
    "TOKEN_HEADER",
    "TOKEN_PREFIX",
    "TOKEN_SECRET_ENV",
    "AttemptScope",
    "Refused",
    "RunnerScope",
    "TokenSigner",
    "admit_runner",
    "derive_token_secret",
    "is_runner_token",
    "is_token",
    "scope_refusal",
    "token_attempt",
]
