"""Credentials of the store server and the LLM proxy: the admin key and signed attempt tokens.

* The **admin key** (``agl store serve --api-key-file``/``$AGL_STORE_API_KEY``) may call everything.
* An **attempt token** is signed by the server (HMAC-SHA256, like a pre-signed URL) and names one
  rollout attempt and an expiry. It may write spans (and so rewards) to that attempt, heartbeat it,
  and read that rollout, its spans and the resources; nothing else. The server hands one out with
  every claimed or started attempt (response header ``x-agl-attempt-token``) and on
  ``POST /v1/issue_token`` (admin only). The LLM proxy accepts the same tokens to attribute a call.

The signing secret is derived from the admin key unless given (``$AGL_TOKEN_SECRET``), so a proxy
that writes to the server with the admin key verifies the server's tokens without more setup.

The tokens themselves are :mod:`agent_lightning_proxy.tokens`.
"""

from __future__ import annotations

import orjson
from agent_lightning_proxy.tokens import (
    DEFAULT_TOKEN_TTL,
    TOKEN_HEADER,
    TOKEN_PREFIX,
    TOKEN_SECRET_ENV,
    AttemptScope,
    TokenSigner,
    derive_token_secret,
    is_token,
)

SCOPED_ENDPOINTS: dict[str, str] = {
    "add_spans": "spans",
    "heartbeat": "attempt",
    "get_rollout": "rollout",
    "get_attempts": "rollout",
    "query_spans": "rollout",
    "get_resources": "any",
    "get_latest_resources": "any",
}
"""What an attempt token may call (``/v1/<method>``) and what its body must name: ``spans`` (every
span of the array belongs to the attempt), ``attempt`` (its ``rollout_id`` and ``attempt_id``),
``rollout`` (its ``rollout_id``; an ``attempt_id``, if given, is any of that rollout's) or ``any``."""


def scope_refusal(scope: AttemptScope, method: str, body: bytes) -> str | None:
    """Why a token with ``scope`` may not send ``body`` to ``/v1/<method>``; ``None`` when it may."""
    rule = SCOPED_ENDPOINTS.get(method)
    where = f"attempt {scope.attempt_id} of rollout {scope.rollout_id}"
    if rule is None:
        return f"an attempt token may not call {method} (it may only write to and read {where})"
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


__all__ = [
    "DEFAULT_TOKEN_TTL",
    "SCOPED_ENDPOINTS",
    "TOKEN_HEADER",
    "TOKEN_PREFIX",
    "TOKEN_SECRET_ENV",
    "AttemptScope",
    "TokenSigner",
    "derive_token_secret",
    "is_token",
    "scope_refusal",
]
