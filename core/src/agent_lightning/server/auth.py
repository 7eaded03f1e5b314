"""Credentials of the store server and the LLM proxy: the admin key and signed attempt tokens.

* The **admin key** (``agl store serve --api-key-file``/``$AGL_STORE_API_KEY``) may call everything.
* An **attempt token** is signed by the server (HMAC-SHA256, like a pre-signed URL) and names one
  rollout attempt and an expiry. It may write spans (and so rewards) to that attempt, heartbeat it,
  and read that rollout, its spans and the resources; nothing else. The server hands one out with
  every claimed or started attempt (response header ``x-agl-attempt-token``) and on
  ``POST /v1/issue_token`` (admin only). The LLM proxy accepts the same tokens to attribute a call.

The signing secret is derived from the admin key unless given (``$AGL_TOKEN_SECRET``), so a proxy
that writes to the server with the admin key verifies the server's tokens without more setup.

Stdlib only: importing this module loads no web stack.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass

import orjson

TOKEN_PREFIX = "aglt1"
TOKEN_HEADER = "x-agl-attempt-token"
"""Response header of ``claim_rollout``/``start_rollout`` with the new attempt's token."""
TOKEN_SECRET_ENV = "AGL_TOKEN_SECRET"
DEFAULT_TOKEN_TTL = 7 * 24 * 3600.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def derive_token_secret(admin_key: str) -> bytes:
    """The token signing secret that goes with an admin key."""
    return hmac.new(admin_key.encode(), b"agent-lightning attempt tokens v1", hashlib.sha256).digest()


@dataclass(frozen=True)
class AttemptScope:
    """What an attempt token allows: one rollout attempt, until ``expires`` (Unix time)."""

    rollout_id: str
    attempt_id: str
    expires: float


class TokenSigner:
    """Issues and checks attempt tokens (``aglt1.<payload>.<signature>``)."""

    def __init__(self, secret: bytes | str) -> None:
        self._secret = secret.encode() if isinstance(secret, str) else secret
        if not self._secret:
            raise ValueError("the token secret must not be empty")

    @classmethod
    def for_admin_key(cls, admin_key: str) -> TokenSigner:
        return cls(derive_token_secret(admin_key))

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, f"{TOKEN_PREFIX}.{payload}".encode(), hashlib.sha256).digest())

    def issue(self, rollout_id: str, attempt_id: str, ttl: float = DEFAULT_TOKEN_TTL) -> str:
        """A token for one attempt, valid ``ttl`` seconds."""
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, got {ttl!r}")
        payload = _b64(orjson.dumps([rollout_id, attempt_id, round(time.time() + ttl)]))
        return f"{TOKEN_PREFIX}.{payload}.{self._sign(payload)}"

    def verify(self, token: str | bytes) -> AttemptScope | None:
        """The scope of a well-signed, unexpired token; ``None`` otherwise (compared in constant time)."""
        text = token.decode(errors="replace") if isinstance(token, bytes) else token
        parts = text.split(".")
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            return None
        if not hmac.compare_digest(self._sign(parts[1]).encode(), parts[2].encode()):
            return None
        try:
            rollout_id, attempt_id, expires = orjson.loads(_unb64(parts[1]))
        except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
            return None
        if not (isinstance(rollout_id, str) and isinstance(attempt_id, str) and isinstance(expires, int)):
            return None
        if expires < time.time():
            return None
        return AttemptScope(rollout_id, attempt_id, float(expires))


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


def is_token(value: str | bytes) -> bool:
    """Whether ``value`` looks like an attempt token (not whether it is valid)."""
    prefix = TOKEN_PREFIX + "."
    return value.startswith(prefix.encode() if isinstance(value, bytes) else prefix)  # type: ignore[arg-type]


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
