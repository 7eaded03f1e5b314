"""The store server's ASGI app: every LightningStore method as a JSON endpoint (FastAPI, OpenAPI at /openapi.json)."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
from agent_lightning.errors import AgentLightningError, NotFound
from agent_lightning.store.base import LightningStore
from agent_lightning.types import (
    Attempt,
    AttemptedRollout,
    ResourcesSnapshot,
    Rollout,
    Span,
    SpanStatus,
    Subscription,
)
from agent_lightning.types.spans import trusted_span, trusted_status
from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from pydantic import TypeAdapter

from agent_lightning_http import otlp
from agent_lightning_http.auth import (
    TOKEN_HEADER,
    AttemptScope,
    Refused,
    RunnerScope,
    TokenSigner,
    admit_runner,
    is_runner_token,
    is_token,
    scope_refusal,
)
from agent_lightning_http.idempotency import Outcome, ReplayCache, ScopedKey
from agent_lightning_http.protocol import (
    API_KEY_HEADER,
    API_PREFIX,
    DEFAULT_MAX_BODY_BYTES,
    ERROR_STATUS,
    IDEMPOTENCY_HEADER,
    MAX_WAIT_SECONDS,
    AckCompletedRequest,
    AddResourcesRequest,
    AttemptRef,
    ClaimRolloutRequest,
    ClaimRolloutsRequest,
    CompleteAttemptRequest,
    CompleteAttemptsRequest,
    CountResponse,
    CountRolloutsRequest,
    EnqueueRolloutsRequest,
    ErrorResponse,
    IssueRunnerTokenRequest,
    IssueTokenRequest,
    PullCompletedRequest,
    QueryRolloutsRequest,
    QuerySpansRequest,
    ReapExpiredRequest,
    ResourcesRef,
    RolloutRef,
    StartRolloutRequest,
    SubscribeRequest,
    TokenResponse,
    WaitForRolloutsRequest,
    error_type,
)

logger = logging.getLogger("agent_lightning_http")

OPEN_PATHS = frozenset({"/health"})
"""Paths served without an API key (liveness checks; they reveal nothing about the store)."""
DASHBOARD_PATH = "/dashboard"
"""Where ``agl store serve`` mounts the dashboard when ``agent-lightning-dashboard`` is installed."""

_SPANS = TypeAdapter(list[Span])
_ROLLOUTS = TypeAdapter(list[Rollout])
_ATTEMPTS = TypeAdapter(list[Attempt])
_CLAIMED = TypeAdapter(list[AttemptedRollout])
_COUNTS = TypeAdapter(dict[str, dict[str, int]])
_SUBSCRIPTIONS = TypeAdapter(list[Subscription])
_JSON = "application/json"
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        401: "missing or wrong API key, or an invalid or expired attempt or runner token",
        403: "an attempt token used outside its attempt, or a runner token used for more than claims and resources",
        404: "an id is unknown (NotFound)",
        409: "a duplicate id (DuplicateId), a forbidden status change (InvalidTransition, LeaseLost), "
        "or a change to a finished attempt's spans",
        413: "request body over the server's limit",
        422: "invalid input (ValueError): nothing was stored",
        503: "the backend store is unavailable",
    }.items()
}

CREDENTIAL = "agl.credential"
"""ASGI scope entry: the credential the request was let in with (the admin key or a token)."""
ATTEMPT_SCOPE = "agl.attempt_scope"
"""ASGI scope entry: the :class:`AttemptScope` of a request authorized by an attempt token."""
RUNNER_SCOPE = "agl.runner_scope"
"""ASGI scope entry: the :class:`RunnerScope` of a request authorized by a runner token."""


async def _idempotency_key(
    request: Request,
    key: Annotated[
        str | None, Header(alias=IDEMPOTENCY_HEADER, description="replays the first answer on a retry")
    ] = None,
) -> ScopedKey | None:
    """The request's ``Idempotency-Key``, scoped by the client's credential, the endpoint and the body."""
    if key is None:
        return None
    return ScopedKey.of(key, request.scope.get(CREDENTIAL), request.url.path, await request.body())


Key = Annotated[ScopedKey | None, Depends(_idempotency_key)]


def _error_body(kind: str, message: str) -> bytes:
    return orjson.dumps({"error": {"type": kind, "message": message}})


def _failure(exc: BaseException) -> Outcome:
    """The status code and JSON body an exception raised by the store maps to."""
    kind = error_type(exc)
    status = ERROR_STATUS.get(kind, 500)
    if status == 500:
        logger.exception("store server: unexpected %s", kind, exc_info=exc)
    return status, _error_body(kind, str(exc) or kind)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{location or 'body'}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


class _TooLarge(Exception):
    pass


FastPath = Callable[[bytes], Awaitable[Outcome]]


class _Guard:
    """ASGI wrapper: credentials (401/403) and the request body limit (413, by header and by bytes read).

    The admin key may call everything. An attempt token (see :mod:`agent_lightning_http.auth`)
    may call what :data:`~agent_lightning_http.auth.SCOPED_ENDPOINTS` allows, for its attempt, and a
    runner token what :data:`~agent_lightning_http.auth.RUNNER_ENDPOINTS` allows: their request
    bodies are read here and checked before the endpoint sees them.
    ``fast_paths`` maps ``POST`` paths to handlers of the raw body served here, past FastAPI's
    routing and middleware (the span write path); FastAPI still documents them.
    Paths under ``own_auth_prefix`` (the mounted dashboard) go through unchecked: that app checks the
    same key itself, from the header or its cookie (a browser cannot add a header to a page load).
    """

    def __init__(
        self,
        app: Any,
        api_key: str | None,
        max_body_bytes: int,
        fast_paths: dict[str, FastPath] | None = None,
        signer: TokenSigner | None = None,
        own_auth_prefix: str | None = None,
    ) -> None:
        self.app = app
        self.own_auth_prefix = own_auth_prefix
        self.key = api_key.encode() if api_key else None
        self.signer = signer
        self.max_body_bytes = max_body_bytes
        self.fast_paths = fast_paths or {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        prefix = self.own_auth_prefix
        if scope["type"] != "http" or (
            prefix is not None and (scope["path"] == prefix or scope["path"].startswith(prefix + "/"))
        ):
            await self.app(scope, receive, send)
            return
        length: bytes | None = None
        presented: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:].strip()
            elif name == API_KEY_HEADER.encode() and presented is None:
                presented = value.strip()
        attempt: AttemptScope | None = None
        runner: RunnerScope | None = None
        if presented is not None:
            scope[CREDENTIAL] = presented
        authorized = presented is not None and self.key is not None and hmac.compare_digest(presented, self.key)
        if not authorized and presented is not None and self.signer is not None and is_token(presented):
            attempt = self.signer.verify(presented)
            if attempt is None:
                await _send(send, 401, "invalid or expired attempt token")
                return
            scope[ATTEMPT_SCOPE] = attempt
        elif not authorized and presented is not None and self.signer is not None and is_runner_token(presented):
            runner = self.signer.verify_runner(presented)
            if runner is None:
                await _send(send, 401, "invalid or expired runner token", scope)
                return
            scope[RUNNER_SCOPE] = runner
        elif self.key is not None and not authorized and scope["path"] not in OPEN_PATHS:
            reason = "missing API key" if presented is None else "wrong API key"
            await _send(send, 401, f"{reason}: send 'Authorization: Bearer KEY' or '{API_KEY_HEADER}: KEY'", scope)
            return
        limit = self.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            await _send(send, 413, f"request body of {int(length)} bytes is over the server's limit of {limit}", scope)
            return
        received = 0
        started = False

        async def counting_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def read_body() -> bytes | None:
            chunks = []
            while True:
                message = await counting_receive()
                if message["type"] == "http.disconnect":
                    return None
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    return b"".join(chunks)

        try:
            fast = self.fast_paths.get(scope["path"]) if scope["method"] == "POST" else None
            if fast is None and attempt is None and runner is None:
                await self.app(scope, counting_receive, tracking_send)
                return
            body = await read_body()
            if body is None:
                return
            path = scope["path"]
            method = path[len(API_PREFIX) + 1 :] if path.startswith(API_PREFIX + "/") else path
            refusal = None
            if path in OPEN_PATHS:
                pass
            elif attempt is not None:
                refusal = scope_refusal(attempt, method, body)
            elif runner is not None:
                try:
                    body = admit_runner(runner, method, body)
                except Refused as exc:
                    refusal = str(exc)
            if refusal is not None:
                started = True
                await _send(send, 403, refusal, scope)
                return
            if fast is None:
                await self.app(scope, _replay_body(body), tracking_send)
                return
            status, answer = await fast(body)
            started = True
            await _respond(send, status, answer)
        except _TooLarge:
            if not started:
                await _send(send, 413, f"request body is over the server's limit of {limit} bytes", scope)


def _replay_body(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    """An ASGI ``receive`` that gives ``body`` once, then waits (as a client that sent it all would)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    return receive


async def _send(send: Any, status: int, message: str, scope: dict[str, Any] | None = None) -> None:
    kind = {401: "Unauthorized", 403: "Forbidden", 413: "PayloadTooLarge"}.get(status, "Error")
    extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
    otlp_error = otlp.guard_error(scope, status, message) if scope is not None else None
    if otlp_error is not None:  # OTLP clients get a google.rpc.Status in their own encoding
        await _respond(send, status, otlp_error[0], extra, otlp_error[1])
        return
    await _respond(send, status, _error_body(kind, message), extra)


async def _respond(
    send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None, media_type: str = _JSON
) -> None:
    headers = [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_SPAN_KEYS = frozenset(Span.model_fields)
_STATUS_KEYS = frozenset(SpanStatus.model_fields)


def _parse_spans(body: bytes) -> list[Span]:
    """The spans of an ``add_spans`` body (a JSON array of span objects).

    Every store checks the spans it is given again, value by value (see ``check_spans_batch``), so
    an object with exactly the span's fields becomes a :class:`Span` here without a first round of
    the same checks; anything else (a missing or unknown field, not an object) gets pydantic's.
    """
    items = orjson.loads(body)
    if type(items) is not list:
        raise ValueError("add_spans takes a JSON array of span objects")
    spans: list[Span] = []
    for item in items:
        status = item.get("status") if type(item) is dict else None
        if type(item) is dict and item.keys() == _SPAN_KEYS and type(status) is dict and status.keys() == _STATUS_KEYS:
            item["status"] = trusted_status(status["code"], status["message"])
            spans.append(trusted_span(item))
        else:
            spans.append(Span.model_validate(item))
    return spans


def _with_token(response: Response, token: Callable[[bytes], dict[str, str] | None]) -> Response:
    if response.status_code == 200:
        headers = token(bytes(response.body))
        if headers:
            response.headers.update(headers)
    return response


def _mount_dashboard(
    app: FastAPI, store: LightningStore, api_key: str | None, path: str, metrics_dirs: Sequence[str | Path]
) -> str | None:
    """Mount the dashboard at ``path`` if its package is installed; returns the path, or ``None``."""
    path = "/" + path.strip("/")
    if path == "/" or path.split("/")[1] in (API_PREFIX.strip("/"), "health", "docs", "redoc", "openapi.json"):
        raise ValueError(f"the dashboard cannot be served at {path!r}: the store server uses that path")
    try:
        from agent_lightning_dashboard import create_app as create_dashboard
        from agent_lightning_dashboard.plugin import default_metrics_dirs
    except ImportError:
        logger.info("agent-lightning-dashboard is not installed: no dashboard at %s", path)
        return None
    folders = list(metrics_dirs) or default_metrics_dirs(store.url)
    # The mounted app's lifespan does not run: it never closes the store (the server does, if asked).
    app.mount(path, create_dashboard(store, metrics_dirs=folders, api_key=api_key), name="dashboard")

    async def add_slash(_: Request) -> Response:
        return RedirectResponse(path + "/", 308)

    app.add_api_route(path, add_slash, methods=["GET", "HEAD"], include_in_schema=False)
    app.state.dashboard_path = path
    return path


class _StoreApp(FastAPI):
    """The FastAPI app, with the API key check, the body limit and the span write path in front of
    Starlette's middleware stack (they cost more than the span write itself)."""

    guard: _Guard | None = None

    async def route_request(self, scope: Any, receive: Any, send: Any) -> None:
        await super().__call__(scope, receive, send)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.guard is None:
            await super().__call__(scope, receive, send)
        else:
            await self.guard(scope, receive, send)


def create_app(
    store: LightningStore,
    api_key: str | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_wait: float = MAX_WAIT_SECONDS,
    close_store: bool = False,
    token_secret: str | bytes | None = None,
    dashboard_path: str | None = None,
    metrics_dirs: Sequence[str | Path] = (),
) -> FastAPI:
    """A FastAPI app serving ``store`` under ``/v1`` (see :mod:`agent_lightning_http.protocol`).

    :param api_key: the admin key: when set, every request (but ``GET /health``) must send it, or an
        attempt token, as ``Authorization: Bearer KEY`` or ``x-api-key: KEY``, or it gets 401.
    :param token_secret: signs attempt tokens (default: derived from ``api_key``; no tokens without either).
    :param max_body_bytes: larger request bodies get 413 and store nothing.
    :param max_wait: the longest a long-poll (``wait_for_rollouts``, ``pull_completed``) is held, in seconds.
    :param close_store: close ``store`` when the app shuts down.
    :param dashboard_path: serve the dashboard there (``/dashboard``) when ``agent-lightning-dashboard`` is
        installed, with the same API key; ``metrics_dirs`` are its run folders.
    """
    if max_body_bytes <= 0:
        raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
    replay = ReplayCache()
    signer: TokenSigner | None = None
    if token_secret:
        signer = TokenSigner(token_secret)
    elif api_key:
        signer = TokenSigner.for_admin_key(api_key)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        replay.clear()  # answers pending on a previous event loop cannot be awaited on this one
        try:
            yield
        finally:
            if close_store:
                await store.close()

    app = _StoreApp(
        title="Agent Lightning store server",
        summary="Any LightningStore backend over HTTP: rollouts, attempts, spans, resources, subscriptions.",
        description=(
            "Every LightningStore method is `POST /v1/<method>` with its arguments as a JSON object "
            "(`add_spans` takes the JSON array of spans). Errors: "
            '`{"error": {"type": "NotFound", "message": "..."}}`. Send `Idempotency-Key` on calls that '
            "change state to make their retries safe."
        ),
        version="1",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.state.store = store

    async def write_spans(body: bytes) -> Outcome:
        try:
            return 200, b'{"count":%d}' % await store.add_spans(_parse_spans(body))
        except (AgentLightningError, ValueError, TypeError, KeyError) as exc:
            return _failure(exc)

    fast_paths: dict[str, FastPath] = {f"{API_PREFIX}/add_spans": write_spans}
    dashboard = _mount_dashboard(app, store, api_key, dashboard_path, metrics_dirs) if dashboard_path else None
    app.guard = _Guard(
        app.route_request,
        api_key=api_key,
        max_body_bytes=max_body_bytes,
        fast_paths=fast_paths,
        signer=signer,
        own_auth_prefix=dashboard,
    )

    def wait_time(timeout: float | None) -> float:
        return max_wait if timeout is None else min(max(timeout, 0.0), max_wait)

    async def answer(
        call: Callable[[], Awaitable[bytes]], key: ScopedKey | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        async def compute() -> Outcome:
            try:
                return 200, await call()
            except (AgentLightningError, ValueError, TypeError, KeyError) as exc:
                return _failure(exc)

        status, body = await (compute() if key is None else replay.run(key, compute))
        return Response(body, status, media_type=_JSON, headers=headers if status == 200 else None)

    def attempt_token(body: bytes) -> dict[str, str] | None:
        """The response header with the token of the attempt an answer carries (when tokens are on)."""
        if signer is None or body == b"null":
            return None
        data = orjson.loads(body)
        return {TOKEN_HEADER: signer.issue(data["rollout"]["rollout_id"], data["attempt"]["attempt_id"])}

    def attempt_tokens(body: bytes) -> dict[str, str] | None:
        """The response header with the tokens of the attempts a batch answer carries, comma-separated, in order."""
        if signer is None or body == b"[]":
            return None
        tokens = [signer.issue(d["rollout"]["rollout_id"], d["attempt"]["attempt_id"]) for d in orjson.loads(body)]
        return {TOKEN_HEADER: ",".join(tokens)}

    async def on_validation_error(_: Request, exc: Exception) -> Response:
        message = _validation_message(exc) if isinstance(exc, RequestValidationError) else str(exc)
        return Response(_error_body("ValueError", message), 422, media_type=_JSON)

    app.add_exception_handler(RequestValidationError, on_validation_error)

    v1 = API_PREFIX
    otlp.add_route(app, store, max_body_bytes)

    @app.get("/health", tags=["server"])
    async def health() -> dict[str, str]:
        """Liveness check (no API key needed)."""
        return {"status": "ok"}

    @app.post(f"{v1}/issue_token", response_model=TokenResponse, tags=["server"])
    async def issue_token(body: IssueTokenRequest) -> Response:
        """An attempt token for an existing attempt (admin key only; see the README's Security section)."""

        async def call() -> bytes:
            if signer is None:
                raise ValueError("this server issues no attempt tokens: it runs without an API key or token secret")
            attempts = await store.get_attempts(body.rollout_id)
            if body.attempt_id not in {a.attempt_id for a in attempts}:
                raise NotFound(f"rollout {body.rollout_id!r} has no attempt {body.attempt_id!r}")
            token = signer.issue(body.rollout_id, body.attempt_id, body.ttl)
            scope = signer.verify(token)
            assert scope is not None
            return orjson.dumps({"token": token, "expires": scope.expires})

        return await answer(call)

    @app.post(f"{v1}/issue_runner_token", response_model=TokenResponse, tags=["server"])
    async def issue_runner_token(body: IssueRunnerTokenRequest) -> Response:
        """A runner token: claims rollouts and reads resources (admin key only; see the README's Security section)."""

        async def call() -> bytes:
            if signer is None:
                raise ValueError("this server issues no tokens: it runs without an API key or token secret")
            token = signer.issue_runner(body.name, body.ttl, body.task_types)
            scope = signer.verify_runner(token)
            assert scope is not None
            return orjson.dumps({"token": token, "expires": scope.expires})

        return await answer(call)

    # ------------------------------------------------------------------ rollouts
    @app.post(f"{v1}/enqueue_rollouts", response_model=list[Rollout], tags=["rollouts"])
    async def enqueue_rollouts(body: EnqueueRolloutsRequest, key: Key = None) -> Response:
        """Queue rollouts atomically; returns them in request order."""

        async def call() -> bytes:
            return _ROLLOUTS.dump_json(await store.enqueue_rollouts(body.requests))

        return await answer(call, key)

    @app.post(f"{v1}/start_rollout", response_model=AttemptedRollout, tags=["rollouts"])
    async def start_rollout(body: StartRolloutRequest, key: Key = None) -> Response:
        """Create a running rollout with its first attempt."""

        async def call() -> bytes:
            started = await store.start_rollout(body.request, worker_id=body.worker_id, attempt_id=body.attempt_id)
            return started.model_dump_json().encode()

        response = await answer(call, key)
        return _with_token(response, attempt_token)

    @app.post(f"{v1}/claim_rollout", response_model=AttemptedRollout | None, tags=["rollouts"])
    async def claim_rollout(body: ClaimRolloutRequest, key: Key = None) -> Response:
        """Claim the oldest claimable rollout; `null` when none is claimable."""

        async def call() -> bytes:
            item = await store.claim_rollout(body.worker_id, task_types=body.task_types, modes=body.modes)
            return b"null" if item is None else item.model_dump_json().encode()

        response = await answer(call, key)
        return _with_token(response, attempt_token)

    @app.post(f"{v1}/claim_rollouts", response_model=list[AttemptedRollout], tags=["rollouts"])
    async def claim_rollouts(body: ClaimRolloutsRequest, key: Key = None) -> Response:
        """Claim up to `limit` of the oldest claimable rollouts in one call; `[]` when none is claimable."""

        async def call() -> bytes:
            items = await store.claim_rollouts(body.worker_id, body.limit, task_types=body.task_types, modes=body.modes)
            return _CLAIMED.dump_json(items)

        response = await answer(call, key)
        return _with_token(response, attempt_tokens)

    @app.post(f"{v1}/heartbeat", response_model=Attempt, tags=["rollouts"])
    async def heartbeat(body: AttemptRef) -> Response:
        """Extend an attempt's lease (409 LeaseLost when it is over)."""

        async def call() -> bytes:
            return (await store.heartbeat(body.rollout_id, body.attempt_id)).model_dump_json().encode()

        return await answer(call)

    @app.post(f"{v1}/complete_attempt", response_model=Rollout, tags=["rollouts"])
    async def complete_attempt(body: CompleteAttemptRequest, key: Key = None) -> Response:
        """Finish an attempt as succeeded or failed."""

        async def call() -> bytes:
            rollout = await store.complete_attempt(body.rollout_id, body.attempt_id, body.status, body.error)
            return rollout.model_dump_json().encode()

        return await answer(call, key)

    @app.post(f"{v1}/complete_attempts", response_model=list[Rollout], tags=["rollouts"])
    async def complete_attempts(body: CompleteAttemptsRequest, key: Key = None) -> Response:
        """Finish several attempts in one call, all or nothing; returns their rollouts in order."""

        async def call() -> bytes:
            return _ROLLOUTS.dump_json(await store.complete_attempts(body.completions))

        return await answer(call, key)

    @app.post(f"{v1}/cancel_rollout", response_model=Rollout, tags=["rollouts"])
    async def cancel_rollout(body: RolloutRef, key: Key = None) -> Response:
        """Cancel a rollout that has not finished."""

        async def call() -> bytes:
            return (await store.cancel_rollout(body.rollout_id)).model_dump_json().encode()

        return await answer(call, key)

    @app.post(f"{v1}/reap_expired", response_model=list[Attempt], tags=["rollouts"])
    async def reap_expired(body: ReapExpiredRequest, key: Key = None) -> Response:
        """Mark attempts overrun by the server's clock lost or timed out; returns them."""

        async def call() -> bytes:
            return _ATTEMPTS.dump_json(await store.reap_expired())

        return await answer(call, key)

    @app.post(f"{v1}/get_rollout", response_model=Rollout, tags=["rollouts"])
    async def get_rollout(body: RolloutRef) -> Response:
        """One rollout by id."""

        async def call() -> bytes:
            return (await store.get_rollout(body.rollout_id)).model_dump_json().encode()

        return await answer(call)

    @app.post(f"{v1}/query_rollouts", response_model=list[Rollout], tags=["rollouts"])
    async def query_rollouts(body: QueryRolloutsRequest) -> Response:
        """Rollouts matching every given filter, oldest first."""

        async def call() -> bytes:
            found = await store.query_rollouts(
                status=body.status,
                task_types=body.task_types,
                mode=body.mode,
                rollout_ids=body.rollout_ids,
                limit=body.limit,
                offset=body.offset,
            )
            return _ROLLOUTS.dump_json(found)

        return await answer(call)

    @app.post(f"{v1}/count_rollouts", response_model=dict[str, dict[str, int]], tags=["rollouts"])
    async def count_rollouts(body: CountRolloutsRequest) -> Response:
        """How many rollouts match every given filter, by task type then status."""

        async def call() -> bytes:
            counts = await store.count_rollouts(status=body.status, task_types=body.task_types, mode=body.mode)
            return _COUNTS.dump_json(counts)

        return await answer(call)

    @app.post(f"{v1}/get_attempts", response_model=list[Attempt], tags=["rollouts"])
    async def get_attempts(body: RolloutRef) -> Response:
        """The attempts of a rollout, first first."""

        async def call() -> bytes:
            return _ATTEMPTS.dump_json(await store.get_attempts(body.rollout_id))

        return await answer(call)

    @app.post(f"{v1}/wait_for_rollouts", response_model=list[Rollout], tags=["rollouts"])
    async def wait_for_rollouts(body: WaitForRolloutsRequest) -> Response:
        """Long poll: the rollouts that are terminal once all are, or when the (capped) timeout passes."""

        async def call() -> bytes:
            done = await store.wait_for_rollouts(body.rollout_ids, timeout=wait_time(body.timeout))
            return _ROLLOUTS.dump_json(done)

        return await answer(call)

    # ------------------------------------------------------------------ spans
    @app.post(
        f"{v1}/add_spans",
        response_model=CountResponse,
        tags=["spans"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {_JSON: {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Span"}}}},
            }
        },
    )
    async def add_spans(request: Request) -> Response:
        """Store a JSON array of spans atomically (idempotent on rollout, attempt and span id).

        Served by the middleware's fast path; this route documents it (and serves it if that is off).
        """
        status, body = await write_spans(await request.body())
        return Response(body, status, media_type=_JSON)

    @app.post(f"{v1}/query_spans", response_model=list[Span], tags=["spans"])
    async def query_spans(body: QuerySpansRequest) -> Response:
        """Spans of a rollout ordered by (attempt, sequence_id)."""

        async def call() -> bytes:
            spans = await store.query_spans(
                body.rollout_id,
                body.attempt_id,
                kinds=body.kinds,
                names=body.names,
                after_sequence_id=body.after_sequence_id,
                limit=body.limit,
                after=body.after,
            )
            return _SPANS.dump_json(spans)

        return await answer(call)

    # ------------------------------------------------------------------ resources
    @app.post(f"{v1}/add_resources", response_model=ResourcesSnapshot, tags=["resources"])
    async def add_resources(body: AddResourcesRequest, key: Key = None) -> Response:
        """Store a new snapshot; it becomes the latest."""

        async def call() -> bytes:
            return (await store.add_resources(body.resources, body.metadata)).model_dump_json().encode()

        return await answer(call, key)

    @app.post(f"{v1}/get_resources", response_model=ResourcesSnapshot, tags=["resources"])
    async def get_resources(body: ResourcesRef) -> Response:
        """One snapshot by id."""

        async def call() -> bytes:
            return (await store.get_resources(body.resources_id)).model_dump_json().encode()

        return await answer(call)

    @app.post(f"{v1}/get_latest_resources", response_model=ResourcesSnapshot | None, tags=["resources"])
    async def get_latest_resources() -> Response:
        """The newest snapshot, or `null`."""

        async def call() -> bytes:
            latest = await store.get_latest_resources()
            return b"null" if latest is None else latest.model_dump_json().encode()

        return await answer(call)

    # ------------------------------------------------------------------ publish–subscribe
    @app.post(f"{v1}/subscribe", response_model=None, tags=["subscriptions"])
    async def subscribe(body: SubscribeRequest) -> Response:
        """Create (idempotently) a subscription group to finished rollouts."""

        async def call() -> bytes:
            await store.subscribe(body.group, task_types=body.task_types, from_beginning=body.from_beginning)
            return b"null"

        return await answer(call)

    @app.post(f"{v1}/pull_completed", response_model=list[Rollout], tags=["subscriptions"])
    async def pull_completed(body: PullCompletedRequest, key: Key = None) -> Response:
        """Long poll: take undelivered finished rollouts for a group."""

        async def call() -> bytes:
            got = await store.pull_completed(
                body.group,
                consumer=body.consumer,
                max_count=body.max_count,
                timeout=wait_time(body.timeout),
                visibility_timeout=body.visibility_timeout,
            )
            return _ROLLOUTS.dump_json(got)

        return await answer(call, key)

    @app.post(f"{v1}/ack_completed", response_model=CountResponse, tags=["subscriptions"])
    async def ack_completed(body: AckCompletedRequest, key: Key = None) -> Response:
        """Acknowledge deliveries; returns how many were pending."""

        async def call() -> bytes:
            return b'{"count":%d}' % await store.ack_completed(body.group, body.rollout_ids)

        return await answer(call, key)

    @app.post(f"{v1}/list_subscriptions", response_model=list[Subscription], tags=["subscriptions"])
    async def list_subscriptions() -> Response:
        """Every subscription group with its backlog (pending and delivered counts)."""

        async def call() -> bytes:
            return _SUBSCRIPTIONS.dump_json(await store.list_subscriptions())

        return await answer(call)

    return app
