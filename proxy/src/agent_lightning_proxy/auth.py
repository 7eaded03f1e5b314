"""The LLM proxy's credentials: its own API key, and attempt tokens to attribute a call.

:class:`ProxyAuth` wraps the proxy's ASGI app. A request is let in with

* the proxy's **API key** (``Authorization: Bearer KEY`` or ``x-api-key: KEY``): any call, attributed
  to any rollout (the trainer, tools, tests);
* an **attempt token** signed by the store server (see :mod:`agent_lightning_http.auth`), as a
  path prefix ``/token/TOKEN`` (what :meth:`LLM.base_url <agent_lightning.types.LLM.base_url>`
  builds), the ``x-agl-token`` header, or ``Authorization: Bearer TOKEN``: calls attributed to that
  attempt only (a call that names no rollout is attributed to it).

Without a key, a call that names no rollout needs no credential; with a token secret, a call that
names one needs a token (or the key). The credential the proxy consumed is not forwarded upstream.
``GET /health`` answers ``{"status": "ok"}`` to anyone.
"""

from __future__ import annotations

import hmac
import re
from typing import Any

import orjson

from agent_lightning_proxy.protocol import ATTEMPT_HEADER, ROLLOUT_HEADER
from agent_lightning_proxy.tokens import AttemptScope, TokenSigner, is_token

TOKEN_REQUEST_HEADER = "x-agl-token"
AUTHORIZED = "agl.proxy_authorized"
"""ASGI scope entry: ``True`` when the request carried the proxy's API key."""
_TOKEN_PREFIX = re.compile(r"^/token/(?P<token>[^/]+)(?P<rest>/.*)$")
_ROLLOUT = re.compile(r"^/rollout/(?P<rollout>[^/]+)(?:/attempt/(?P<attempt>[^/]+))?(?P<rest>/v1/.*)$")


def _refuse(status: int, message: str, code: str) -> tuple[int, bytes]:
    kind = "authentication_error" if status == 401 else "permission_error"
    return status, orjson.dumps({"error": {"message": message, "type": kind, "code": code}})


class ProxyAuth:
    """ASGI middleware checking the proxy's key and attempt tokens (see the module docstring)."""

    def __init__(self, app: Any, api_key: str | None = None, signer: TokenSigner | None = None) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.signer = signer

    @property
    def enabled(self) -> bool:
        return self.key is not None or self.signer is not None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.enabled or scope["path"] == "/health":
            if scope["type"] == "http":
                scope[AUTHORIZED] = not self.enabled or self._has_key(scope)
            await self.app(scope, receive, send)
            return
        outcome = self._check(scope)
        if outcome is not None:
            status, body = outcome
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            if status == 401:
                headers.append((b"www-authenticate", b"Bearer"))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    def _has_key(self, scope: dict[str, Any]) -> bool:
        if self.key is None:
            return False
        for name, value in scope["headers"]:
            presented = None
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:].strip()
            elif name == b"x-api-key":
                presented = value.strip()
            if presented is not None and hmac.compare_digest(presented, self.key):
                return True
        return False

    def _check(self, scope: dict[str, Any]) -> tuple[int, bytes] | None:
        """Refuse (status, body), or let in (``None``, with ``scope`` rewritten to the attributed path)."""
        path: str = scope["path"]
        token: bytes | None = None
        match = _TOKEN_PREFIX.match(path)
        if match is not None:
            token, path = match["token"].encode(), match["rest"]
        headers: list[tuple[bytes, bytes]] = []
        has_key = False
        rollout_header = attempt_header = None
        for name, value in scope["headers"]:
            credential = None
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                credential = value[7:].strip()
            elif name in (b"x-api-key", TOKEN_REQUEST_HEADER.encode()):
                credential = value.strip()
            if credential is not None:
                if self.key is not None and hmac.compare_digest(credential, self.key):
                    has_key = True
                    continue  # consumed: not forwarded upstream
                if is_token(credential):
                    token = token or credential
                    continue
            if name == ROLLOUT_HEADER.encode():
                rollout_header = value.decode(errors="replace")
            elif name == ATTEMPT_HEADER.encode():
                attempt_header = value.decode(errors="replace")
            headers.append((name, value))
        attempt: AttemptScope | None = None
        if token is not None and not has_key:
            attempt = self.signer.verify(token) if self.signer is not None else None
            if attempt is None:
                return _refuse(401, "invalid or expired attempt token", "invalid_token")
        if self.key is not None and not has_key and attempt is None:
            return _refuse(
                401, "missing API key: send 'Authorization: Bearer KEY' or use an attempt token", "missing_api_key"
            )
        routed = _ROLLOUT.match(path)
        rollout_id = routed["rollout"] if routed is not None else rollout_header
        attempt_id = routed["attempt"] if routed is not None else attempt_header
        if attempt is not None:
            if rollout_id is None:
                path = f"/rollout/{attempt.rollout_id}/attempt/{attempt.attempt_id}{path}"
            elif rollout_id != attempt.rollout_id or (attempt_id is not None and attempt_id != attempt.attempt_id):
                return _refuse(
                    403,
                    f"this token attributes calls to attempt {attempt.attempt_id} of rollout {attempt.rollout_id} only",
                    "token_scope",
                )
            elif attempt_id is None:
                if routed is not None:
                    path = f"/rollout/{attempt.rollout_id}/attempt/{attempt.attempt_id}{routed['rest']}"
                else:
                    headers.append((ATTEMPT_HEADER.encode(), attempt.attempt_id.encode()))
        elif rollout_id is not None and not has_key and self.signer is not None:
            return _refuse(
                401,
                f"attributing a call to rollout {rollout_id!r} needs its attempt token (or the proxy's API key)",
                "missing_token",
            )
        scope["path"] = path
        scope["raw_path"] = path.encode()
        scope["headers"] = headers
        scope[AUTHORIZED] = has_key
        return None


__all__ = ["AUTHORIZED", "TOKEN_REQUEST_HEADER", "ProxyAuth"]
