"""``HttpLightningStore``: the LightningStore contract over HTTP, against ``agl store serve``.

Batching
--------
``add_spans`` sends the spans of one call in one request, all-or-nothing; batching spans across
calls is the instrumentation emitter's job, upstream of any store.

Retries
-------
Connection failures, timeouts and 502/503/504 answers are retried with exponential
backoff for up to ``retry_timeout`` seconds, then :class:`~agent_lightning.errors.StoreUnavailable`
is raised naming the server. Reads, ``add_spans`` (idempotent by contract), ``heartbeat``,
``subscribe`` and ``ack_completed`` are safe to send twice. Calls that change state otherwise
carry an ``Idempotency-Key``: while the server process lives, a retry gets the first answer
replayed, so a lost response never claims, completes or enqueues twice. If the server *restarted*
in between (its replay memory is gone):

* ``enqueue_rollouts`` / ``start_rollout`` send client-generated rollout ids; a retry answered with
  ``DuplicateId`` is accepted when the stored rollouts are the ones this call asked for.
* ``complete_attempt`` / ``complete_attempts`` / ``cancel_rollout``: a retry answered ``LeaseLost`` /
  ``InvalidTransition`` is accepted when the attempts/rollout already have the status this call asked for.
* ``claim_rollout`` / ``claim_rollouts`` cannot be repaired: a claim whose answer was lost in a
  restart leaves its attempts to no worker, and they are reaped (``lost``) when their lease runs out,
  then retried; the retry of the call itself may claim other rollouts. Nothing is lost, those
  rollouts are delayed by a lease.
* ``add_resources`` may, in that case, create the snapshot twice (two versions, same content).

Credentials
-----------
With the admin key every call sends it. With a runner token (``agl store token --runner``) the
client claims (``claim_rollout``, ``claim_rollouts``) and reads resources with it, and makes the calls
about a claimed attempt (``heartbeat``, ``add_spans``, ``complete_attempt``, ``get_rollout``,
``get_attempts``, ``query_spans``) with the attempt token the claim answered with; ``add_spans`` and
``complete_attempts`` then send one request per attempt (each all-or-nothing; a retry after a partial
failure is safe: ``add_spans`` is idempotent and a completion's retry is checked as above). A child
process started for an attempt (``ScriptAgent``) gets that attempt's token in ``$AGL_ATTEMPT_TOKEN``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import ssl
import threading
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson
from agent_lightning.errors import DuplicateId, InvalidTransition, StoreError, StoreUnavailable
from agent_lightning.retry import Backoff, async_retrying
from agent_lightning.secrets import read_secret
from agent_lightning.store.base import LightningStore, RolloutQuery, SpanQuery
from agent_lightning.types import (
    Attempt,
    AttemptCompletion,
    AttemptedRollout,
    Resource,
    ResourcesSnapshot,
    Rollout,
    RolloutMode,
    RolloutRequest,
    Span,
    Subscription,
)
from agent_lightning.types.rollouts import check_request, new_id
from pydantic import TypeAdapter
from pydantic_core import PydanticSerializationError, to_json
from yarl import URL

from agent_lightning_http.auth import (
    DEFAULT_RUNNER_TOKEN_TTL,
    DEFAULT_TOKEN_TTL,
    TOKEN_HEADER,
    is_runner_token,
    token_attempt,
)
from agent_lightning_http.protocol import (
    API_KEY_ENV,
    API_KEY_FILE_ENV,
    API_PREFIX,
    ATTEMPT_TOKEN_ENV,
    ERROR_TYPES,
    IDEMPOTENCY_HEADER,
    MAX_WAIT_SECONDS,
)

_T = TypeVar("_T")
_ROLLOUTS = TypeAdapter(list[Rollout])
_ATTEMPTS = TypeAdapter(list[Attempt])
_CLAIMED = TypeAdapter(list[AttemptedRollout])
_SPANS = TypeAdapter(list[Span])
_COUNTS = TypeAdapter(dict[str, dict[str, int]])
_SUBSCRIPTIONS = TypeAdapter(list[Subscription])
_RETRY_STATUSES = frozenset({502, 503, 504})
_NOT_SENT: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    *((aiohttp.ConnectionTimeoutError,) if hasattr(aiohttp, "ConnectionTimeoutError") else ()),
)
"""Transport errors raised before the request reached the server."""
_TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
_MAX_TOKENS = 10_000
"""Attempt tokens a client keeps (the oldest are dropped first)."""

OPTIONS = frozenset(
    {
        "api_key",
        "api_key_file",
        "ca_file",
        "timeout",
        "connect_timeout",
        "retry_timeout",
        "max_connections",
        "long_poll",
    }
)


class StoreAuthError(StoreError, PermissionError):
    """The store server refused the API key (HTTP 401) or the request for this credential (403)."""


class StoreForbidden(StoreAuthError, ValueError):
    """The store server refused a request this credential may not send (HTTP 403).

    A ``ValueError``, so a retry loop treats it as permanent: the span emitter sets the refused
    spans aside instead of retrying a batch that can never be accepted.
    """


def _dumps(value: Any) -> bytes:
    try:
        return to_json(value, inf_nan_mode="constants")
    except PydanticSerializationError as exc:
        raise ValueError(f"cannot send this value to the store as JSON: {exc}") from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "TimeoutError: no answer in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _message(content: bytes, reason: str) -> str:
    try:
        return str(orjson.loads(content)["error"]["message"])
    except Exception:
        return content[:500].decode(errors="replace") or reason


def _forget(session: aiohttp.ClientSession) -> None:
    """Drop a session whose event loop is gone (or going): nothing can be awaited there any more.

    Marks its connector closed, so aiohttp does not report the session as left unclosed.
    """
    connector = session.connector
    if connector is not None and not connector.closed:
        with contextlib.suppress(Exception):
            connector._close()  # the synchronous part of close(); the loop's sockets went with it


_OPEN: weakref.WeakSet[HttpLightningStore] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    """Close the pools of stores nobody closed (their loops may still run in daemon threads), so that
    aiohttp does not report them as left open while the interpreter shuts down."""
    for store in list(_OPEN):
        store._close_now()


class _Unanswered(Exception):
    """A try that got no usable answer (connection refused, timed out, 502/503/504): retried."""


def _resent(exc: BaseException) -> bool:
    """Whether the call that raised ``exc`` was sent more than once (so a first try may have done it)."""
    return bool(getattr(exc, "agl_resent", False))


def _same_request(rollout: Rollout, request: RolloutRequest) -> bool:
    return (
        rollout.input == request.input
        and rollout.task_type == request.task_type
        and rollout.mode == request.mode
        and rollout.resources_id == request.resources_id
        and rollout.config == request.config
        and rollout.metadata == request.metadata
    )


class HttpLightningStore(LightningStore):
    """A store served by ``agl store serve`` at ``url`` (``http://host:port``).

    The object can be used from any thread and event loop: each loop gets its own
    connection pool. Error responses raise the same exceptions the backend raised
    (:class:`~agent_lightning.errors.NotFound`, ``DuplicateId``, ``InvalidTransition``,
    ``LeaseLost``, ``ValueError``).

    :param api_key: the admin key, a runner token or an attempt token, sent as ``Authorization: Bearer …``
        (default: the first line of ``api_key_file``, else ``$AGL_STORE_API_KEY``, else the first line of
        the file ``$AGL_STORE_API_KEY_FILE`` names). With a runner token, the calls about a claimed
        attempt go with that attempt's token (see the module docstring).
    :param api_key_file: a file holding the key (keeps it out of ``ps`` and shell history).
    :param ca_file: a PEM file of the certificate authority (or self-signed certificate) that an
        ``https://`` server's certificate must chain to (default: the system's).
    :param timeout: seconds to wait for one answer (long polls get their wait on top); a call,
        retries included, never takes longer than ``retry_timeout`` (if positive) plus its long-poll wait.
    :param connect_timeout: seconds to wait for a connection.
    :param retry_timeout: how long to keep retrying an unreachable server before raising ``StoreUnavailable``.
    :param max_connections: connections per event loop.
    :param long_poll: the longest one long-poll request waits; longer waits are split.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        api_key_file: str | None = None,
        ca_file: str | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        retry_timeout: float = 15.0,
        max_connections: int = 64,
        long_poll: float = MAX_WAIT_SECONDS - 5.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"a store server URL looks like 'http://HOST:PORT', got {url!r}")
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout), ("long_poll", long_poll)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if retry_timeout < 0:
            raise ValueError(f"retry_timeout must be >= 0, got {retry_timeout!r}")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.retry_timeout = float(retry_timeout)
        self.max_connections = int(max_connections)
        self.long_poll = float(long_poll)
        key = read_secret(value=api_key, file=api_key_file, env=API_KEY_ENV)
        if not key and os.environ.get(API_KEY_FILE_ENV):
            key = read_secret(file=os.environ[API_KEY_FILE_ENV])
        self._ssl: ssl.SSLContext | bool = True
        if ca_file is not None:
            self._ssl = ssl.create_default_context(cafile=ca_file)
        self._tokens: dict[tuple[str, str], str] = {}
        self._rollout_tokens: dict[str, str] = {}
        self._runner = bool(key) and is_runner_token(key or "")
        """Whether the key is a runner token: the calls about an attempt then go with that attempt's token."""
        if self._runner:
            inherited = read_secret(env=ATTEMPT_TOKEN_ENV)
            owner = token_attempt(inherited) if inherited else None
            if inherited and owner is not None:
                self._tokens[owner], self._rollout_tokens[owner[0]] = inherited, inherited
        self._headers = {"content-type": "application/json", "user-agent": "agent-lightning-store-client"}
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self._trust_env = parts.hostname not in ("127.0.0.1", "localhost", "::1")
        self._lock = threading.Lock()
        self._clients: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self._urls: dict[str, URL] = {}
        _OPEN.add(self)

    def __repr__(self) -> str:
        return f"HttpLightningStore({self.url!r})"

    # ------------------------------------------------------------------ transport
    # aiohttp rather than httpx: its C-accelerated client costs well under half of httpx's per call.
    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._clients.get(loop)
        if session is not None:
            return session
        with self._lock:
            for other in [lp for lp in self._clients if lp.is_closed()]:
                _forget(self._clients.pop(other))  # its loop is gone, and its sockets with it
            session = self._clients.get(loop)
            if session is None:
                session = self._clients[loop] = aiohttp.ClientSession(
                    headers=self._headers,
                    connector=aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=30, ssl=self._ssl),
                    trust_env=self._trust_env,
                    auto_decompress=False,
                )
            return session

    def _url(self, method: str) -> URL:
        url = self._urls.get(method)
        if url is None:
            url = self._urls[method] = URL(f"{self.url}{API_PREFIX}/{method}")
        return url

    async def _post(
        self,
        method: str,
        payload: bytes,
        *,
        key: bool = False,
        wait: float = 0.0,
        raw: bool = False,
        credential: str | None = None,
    ) -> Any:
        """POST to ``/v1/<method>`` with retries; returns the decoded JSON answer (its bytes with ``raw``)
        or raises the error it names. ``credential`` is sent instead of the client's key.

        Every try waits at most what is left of the ``retry_timeout`` window (plus ``wait``), so a
        server that accepts connections but never answers holds a call no longer than the window.
        """
        client = self._client()
        headers = {IDEMPOTENCY_HEADER: uuid.uuid4().hex} if key else None
        if credential is not None:
            headers = {**(headers or {}), "authorization": f"Bearer {credential}"}
        url = self._url(method)
        began = time.monotonic()
        tries, resent = 0, False
        policy = Backoff(first=0.05, cap=1.0, deadline=self.retry_timeout)
        try:
            async for attempt in async_retrying(policy, retry_if=lambda exc: isinstance(exc, _Unanswered)):
                with attempt:
                    tries += 1
                    answer_in = self.timeout
                    if self.retry_timeout > 0:
                        answer_in = max(0.05, min(answer_in, self.retry_timeout - (time.monotonic() - began)))
                    timeout = aiohttp.ClientTimeout(answer_in + wait, connect=min(self.connect_timeout, answer_in))
                    try:
                        async with client.post(url, data=payload, headers=headers, timeout=timeout) as response:
                            status, content = response.status, await response.read()
                            reason = response.reason or ""
                            token = response.headers.get(TOKEN_HEADER)
                            if token is not None and status == 200:
                                self._remember_token(content, token)
                    except _NOT_SENT as exc:
                        raise _Unanswered(_describe(exc)) from exc
                    except _TRANSPORT_ERRORS as exc:
                        resent = True
                        raise _Unanswered(_describe(exc)) from exc
                    if status == 200:
                        return content if raw else orjson.loads(content)
                    if status not in _RETRY_STATUSES:
                        error = self._error(status, content, reason)
                        error.agl_resent = resent  # type: ignore[attr-defined]
                        raise error
                    resent = True
                    raise _Unanswered(f"HTTP {status}: {_message(content, reason)}")
        except _Unanswered as exc:
            raise StoreUnavailable(
                f"store server at {self.url} is not reachable: {exc} "
                f"(gave up {method} after {tries} tries in {time.monotonic() - began:.1f}s)"
            ) from None
        raise AssertionError("unreachable: the retry loop returns or raises")

    def _error(self, status: int, content: bytes, reason: str) -> Exception:
        try:
            error = orjson.loads(content)["error"]
            kind, message = str(error["type"]), str(error["message"])
        except Exception:
            kind, message = "", content[:500].decode(errors="replace") or reason
        if status == 401:
            return StoreAuthError(
                f"store server at {self.url} refused the request ({message}); "
                f"pass api_key= or api_key_file= to open_store or set {API_KEY_ENV}"
            )
        if status == 403:
            return StoreForbidden(f"store server at {self.url} refused the request: {message}")
        if status == 413:
            return ValueError(f"store server at {self.url} refused a request as too large: {message}")
        cls = ERROR_TYPES.get(kind)
        if cls is not None and cls is not StoreError:
            return cls(message)
        if status == 422:
            return ValueError(message)
        return StoreError(f"store server at {self.url} answered HTTP {status} ({kind or 'error'}): {message}")

    def _remember_token(self, content: bytes, token: str) -> None:
        """Keep the token(s) of a claim or start: one attempt's, or a batch's comma-separated in answer order."""
        try:
            data = orjson.loads(content)
            items = data if isinstance(data, list) else [data]
            owners = [(str(d["rollout"]["rollout_id"]), str(d["attempt"]["attempt_id"])) for d in items]
        except (ValueError, TypeError, KeyError):
            return
        tokens = token.split(",")
        if len(tokens) != len(owners):
            return
        with self._lock:
            for owner, attempt_token in zip(owners, tokens, strict=True):
                while len(self._tokens) >= _MAX_TOKENS:
                    rollout_id, _ = oldest = next(iter(self._tokens))
                    if self._rollout_tokens.get(rollout_id) == self._tokens.pop(oldest):
                        del self._rollout_tokens[rollout_id]
                self._tokens[owner] = self._rollout_tokens[owner[0]] = attempt_token

    def _for_attempt(self, rollout_id: str, attempt_id: str) -> str | None:
        """The credential for a call about one attempt: its token when this client holds a runner token."""
        if not self._runner:
            return None
        with self._lock:
            return self._tokens.get((rollout_id, attempt_id))

    def _for_rollout(self, rollout_id: str) -> str | None:
        """The credential for reading one rollout: a token of one of its attempts when this client holds a
        runner token."""
        if not self._runner:
            return None
        with self._lock:
            return self._rollout_tokens.get(rollout_id)

    def attempt_token(self, rollout_id: str, attempt_id: str) -> str | None:
        """The token the server handed out with this attempt, when this client claimed or started it.

        It lets an agent (through the LLM proxy, or as ``api_key`` of its own store client) write
        spans and rewards to that attempt only; see :mod:`agent_lightning_http.auth`.
        """
        with self._lock:
            return self._tokens.get((rollout_id, attempt_id))

    async def issue_token(self, rollout_id: str, attempt_id: str, ttl: float = DEFAULT_TOKEN_TTL) -> str:
        """A new attempt token from the server (needs the admin key)."""
        payload = _dumps({"rollout_id": rollout_id, "attempt_id": attempt_id, "ttl": ttl})
        return str((await self._post("issue_token", payload))["token"])

    async def issue_runner_token(
        self, name: str | None = None, ttl: float = DEFAULT_RUNNER_TOKEN_TTL, task_types: Sequence[str] | None = None
    ) -> tuple[str, float]:
        """A new runner token from the server and its expiry (Unix time); needs the admin key.

        It claims rollouts (of ``task_types`` only, if given) and reads resources; ``name`` labels it.
        """
        payload = _dumps({"name": name, "ttl": ttl, "task_types": None if task_types is None else list(task_types)})
        data = await self._post("issue_runner_token", payload)
        return str(data["token"]), float(data["expires"])

    async def close(self) -> None:
        """Close the connection pools (the store can still be used afterwards; it reconnects)."""
        with self._lock:
            clients, self._clients = self._clients, {}
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, client in clients.items():
            if loop is current:
                await client.close()
            elif loop.is_running():
                closing = asyncio.run_coroutine_threadsafe(client.close(), loop)
                try:
                    await asyncio.wait_for(asyncio.wrap_future(closing), 2.0)
                except Exception:  # that loop is stopping or stuck: drop its connections with it
                    _forget(client)
            else:
                _forget(client)

    def _close_now(self) -> None:
        """Close every connection pool from outside any event loop (at interpreter exit)."""
        with self._lock:
            clients, self._clients = self._clients, {}
        for loop, client in clients.items():
            if loop.is_running() and not loop.is_closed():
                try:
                    asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout=1.0)
                except Exception:
                    _forget(client)
            else:
                _forget(client)

    def __del__(self) -> None:
        for loop, client in list(getattr(self, "_clients", {}).items()):
            if loop.is_closed() or not loop.is_running():
                _forget(client)

    # ------------------------------------------------------------------ rollouts
    async def enqueue_rollouts(self, requests: Sequence[RolloutRequest]) -> list[Rollout]:
        for request in requests:  # JSON cannot carry a NaN inside a value: refuse it here, as the server would
            check_request(request)
        requests = [r if r.rollout_id else r.model_copy(update={"rollout_id": new_id("ro")}) for r in requests]
        if not requests:
            return []
        try:
            data = await self._post("enqueue_rollouts", _dumps({"requests": requests}), key=True)
        except DuplicateId as exc:
            # A retry after a restart: accept the rollouts if they are exactly the ones asked for.
            ids = [r.rollout_id or "" for r in requests]
            if _resent(exc) and len(set(ids)) == len(ids):
                found = {r.rollout_id: r for r in await self.query_rollouts(rollout_ids=ids, limit=len(ids))}
                same = all(i in found and _same_request(found[i], r) for i, r in zip(ids, requests, strict=True))
                if same:
                    return [found[i] for i in ids]
            raise
        return _ROLLOUTS.validate_python(data)

    async def start_rollout(
        self, request: RolloutRequest, worker_id: str | None = None, *, attempt_id: str | None = None
    ) -> AttemptedRollout:
        check_request(request)
        if not request.rollout_id:
            request = request.model_copy(update={"rollout_id": new_id("ro")})
        if attempt_id is None:  # chosen here too, so a retry can recognise its own attempt
            attempt_id = new_id("at")
        payload = _dumps({"request": request, "worker_id": worker_id, "attempt_id": attempt_id})
        try:
            data = await self._post("start_rollout", payload, key=True)
        except DuplicateId as exc:
            if not _resent(exc):
                raise
            rollout = await self.get_rollout(request.rollout_id or "")
            attempts = await self.get_attempts(rollout.rollout_id)
            if _same_request(rollout, request) and len(attempts) == 1 and attempts[0].attempt_id == attempt_id:
                return AttemptedRollout(rollout=rollout, attempt=attempts[0])
            raise
        return AttemptedRollout.model_validate(data)

    async def _claim_rollout(
        self, worker_id: str, task_types: Sequence[str] | None, modes: Sequence[RolloutMode] | None
    ) -> AttemptedRollout | None:
        payload = _dumps({"worker_id": worker_id, "task_types": task_types, "modes": modes})
        data = await self._post("claim_rollout", payload, key=True)
        return None if data is None else AttemptedRollout.model_validate(data)

    async def _claim_rollouts(
        self, worker_id: str, limit: int, task_types: Sequence[str] | None, modes: Sequence[RolloutMode] | None
    ) -> list[AttemptedRollout]:
        payload = _dumps({"worker_id": worker_id, "limit": limit, "task_types": task_types, "modes": modes})
        return _CLAIMED.validate_python(await self._post("claim_rollouts", payload, key=True))

    async def heartbeat(self, rollout_id: str, attempt_id: str) -> Attempt:
        payload = _dumps({"rollout_id": rollout_id, "attempt_id": attempt_id})
        data = await self._post("heartbeat", payload, credential=self._for_attempt(rollout_id, attempt_id))
        return Attempt.model_validate(data)

    async def _complete_attempt(
        self, rollout_id: str, attempt_id: str, status: Literal["succeeded", "failed"], error: str | None
    ) -> Rollout:
        payload = _dumps({"rollout_id": rollout_id, "attempt_id": attempt_id, "status": status, "error": error})
        try:
            data = await self._post(
                "complete_attempt", payload, key=True, credential=self._for_attempt(rollout_id, attempt_id)
            )
        except InvalidTransition as exc:  # LeaseLost too: after a restart, the first try may have done it
            if not _resent(exc):
                raise
            attempts = {a.attempt_id: a for a in await self.get_attempts(rollout_id)}
            done = attempts.get(attempt_id)
            if done is not None and done.status == status and done.error == error:
                return await self.get_rollout(rollout_id)
            raise
        return Rollout.model_validate(data)

    async def _complete_attempts(self, completions: list[AttemptCompletion]) -> list[Rollout]:
        if self._runner:  # each attempt's own token completes it: one request per attempt, each all-or-nothing
            return [await self._complete_attempt(c.rollout_id, c.attempt_id, c.status, c.error) for c in completions]
        try:
            data = await self._post("complete_attempts", _dumps({"completions": completions}), key=True)
        except InvalidTransition as exc:  # LeaseLost too: after a restart, the first try may have done it
            if not _resent(exc):
                raise
            for item in completions:
                attempts = {a.attempt_id: a for a in await self.get_attempts(item.rollout_id)}
                done = attempts.get(item.attempt_id)
                if done is None or done.status != item.status or done.error != item.error:
                    raise
            return [await self.get_rollout(item.rollout_id) for item in completions]
        return _ROLLOUTS.validate_python(data)

    async def cancel_rollout(self, rollout_id: str) -> Rollout:
        try:
            data = await self._post("cancel_rollout", _dumps({"rollout_id": rollout_id}), key=True)
        except InvalidTransition as exc:
            if not _resent(exc):
                raise
            rollout = await self.get_rollout(rollout_id)
            if rollout.status == "cancelled":
                return rollout
            raise
        return Rollout.model_validate(data)

    async def reap_expired(self, now: float | None = None) -> list[Attempt]:
        """Reap by the server's clock; ``now`` is refused (the server does not trust a client's clock)."""
        if now is not None:
            raise ValueError("a store server reaps by its own clock; reap_expired(now=...) works in process only")
        data = await self._post("reap_expired", b"{}", key=True)
        return _ATTEMPTS.validate_python(data)

    async def get_rollout(self, rollout_id: str) -> Rollout:
        payload = _dumps({"rollout_id": rollout_id})
        data = await self._post("get_rollout", payload, credential=self._for_rollout(rollout_id))
        return Rollout.model_validate(data)

    async def _query_rollouts(self, query: RolloutQuery) -> list[Rollout]:
        data = await self._post("query_rollouts", _dumps(vars(query)))
        return _ROLLOUTS.validate_python(data)

    async def _count_rollouts(self, query: RolloutQuery) -> dict[str, dict[str, int]]:
        payload = _dumps({"status": query.status, "task_types": query.task_types, "mode": query.mode})
        return _COUNTS.validate_python(await self._post("count_rollouts", payload))

    async def get_attempts(self, rollout_id: str) -> list[Attempt]:
        data = await self._post(
            "get_attempts", _dumps({"rollout_id": rollout_id}), credential=self._for_rollout(rollout_id)
        )
        return _ATTEMPTS.validate_python(data)

    async def wait_for_rollouts(
        self, rollout_ids: Sequence[str], timeout: float | None = None, poll_interval: float = 0.05
    ) -> list[Rollout]:
        """Long-polls the server (each request waits at most ``long_poll`` seconds) until done or ``timeout``."""
        ids = list(rollout_ids)
        wanted = set(ids)
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            remaining = self.long_poll if deadline is None else max(0.0, deadline - time.monotonic())
            wait = min(remaining, self.long_poll)
            payload = _dumps({"rollout_ids": ids, "timeout": wait})
            data = await self._post("wait_for_rollouts", payload, wait=wait)
            done = _ROLLOUTS.validate_python(data)
            if {r.rollout_id for r in done} >= wanted or (deadline is not None and time.monotonic() >= deadline):
                return done

    # ------------------------------------------------------------------ spans
    async def add_spans(self, spans: Sequence[Span]) -> int:
        spans = list(spans)
        for index, span in enumerate(spans):
            if not isinstance(span, Span):
                raise TypeError(f"spans[{index}] is a {type(span).__name__}, not a Span")
        if not spans:
            return 0
        if self._runner:
            return await self._add_spans_by_attempt(spans)
        return await self._send_spans(spans)

    async def _send_spans(self, spans: list[Span], credential: str | None = None) -> int:
        # Field by field, so a non-finite float travels as NaN/Infinity and is refused by the
        # server, instead of arriving as null.
        data = await self._post("add_spans", _dumps([span.__dict__ for span in spans]), credential=credential)
        return int(data["count"])

    async def _add_spans_by_attempt(self, spans: list[Span]) -> int:
        """One request per attempt, each with that attempt's token (see the module docstring)."""
        groups: dict[tuple[str, str], list[Span]] = {}
        for span in spans:
            groups.setdefault((span.rollout_id, span.attempt_id), []).append(span)
        if len(groups) == 1:
            ((rollout_id, attempt_id),) = groups
            return await self._send_spans(spans, self._for_attempt(rollout_id, attempt_id))
        sent = await asyncio.gather(
            *(self._send_spans(group, self._for_attempt(*owner)) for owner, group in groups.items()),
            return_exceptions=True,
        )
        total = 0
        for outcome in sent:
            if isinstance(outcome, BaseException):
                raise outcome
            total += outcome
        return total

    async def _query_spans(self, query: SpanQuery) -> list[Span]:
        credential = self._for_rollout(query.rollout_id)
        return _SPANS.validate_json(
            await self._post("query_spans", _dumps(vars(query)), raw=True, credential=credential)
        )

    # ------------------------------------------------------------------ resources
    async def add_resources(
        self, resources: Mapping[str, Resource], metadata: Mapping[str, Any] | None = None
    ) -> ResourcesSnapshot:
        payload = _dumps({"resources": dict(resources), "metadata": metadata})
        data = await self._post("add_resources", payload, key=True)
        return ResourcesSnapshot.model_validate(data)

    async def get_resources(self, resources_id: str) -> ResourcesSnapshot:
        data = await self._post("get_resources", _dumps({"resources_id": resources_id}))
        return ResourcesSnapshot.model_validate(data)

    async def get_latest_resources(self) -> ResourcesSnapshot | None:
        data = await self._post("get_latest_resources", b"")
        return None if data is None else ResourcesSnapshot.model_validate(data)

    # ------------------------------------------------------------------ publish–subscribe
    async def subscribe(
        self, group: str, *, task_types: Sequence[str] | None = None, from_beginning: bool = False
    ) -> None:
        payload = _dumps({"group": group, "task_types": task_types, "from_beginning": from_beginning})
        await self._post("subscribe", payload)

    async def _pull_completed(
        self, group: str, consumer: str, max_count: int, timeout: float, visibility_timeout: float
    ) -> list[Rollout]:
        """Long-polls the server (each request waits at most ``long_poll`` seconds) for up to ``timeout``."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            wait = min(max(0.0, deadline - time.monotonic()), self.long_poll)
            payload = _dumps(
                {
                    "group": group,
                    "consumer": consumer,
                    "max_count": max_count,
                    "timeout": wait,
                    "visibility_timeout": visibility_timeout,
                }
            )
            data = await self._post("pull_completed", payload, key=True, wait=wait)
            got = _ROLLOUTS.validate_python(data)
            if got or time.monotonic() >= deadline:
                return got

    async def ack_completed(self, group: str, rollout_ids: Sequence[str]) -> int:
        data = await self._post("ack_completed", _dumps({"group": group, "rollout_ids": rollout_ids}))
        return int(data["count"])

    async def list_subscriptions(self) -> list[Subscription]:
        return _SUBSCRIPTIONS.validate_python(await self._post("list_subscriptions", b""))


__all__ = ["OPTIONS", "HttpLightningStore", "StoreAuthError", "StoreForbidden"]
