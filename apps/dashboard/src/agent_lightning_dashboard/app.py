"""The dashboard as an ASGI app: one page (``/``), its assets (``/static``) and a JSON API (``/api``).

Every URL the page uses is relative, so the app can be mounted under a path of another app
(``Mount("/dashboard", create_app(store))``). With an API key, requests must present it as the store
server does (``Authorization: Bearer KEY`` or ``x-api-key: KEY``) or carry the cookie that opening
``/?key=KEY`` sets; the page offers a form for it.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from html import escape
from pathlib import Path
from typing import Any

from agent_lightning.errors import NotFound
from agent_lightning.store import LightningStore
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from agent_lightning_dashboard import queries
from agent_lightning_dashboard.runs import find_runs, read_metrics, run_summary
from agent_lightning_dashboard.tokens import Decoder

API_KEY_HEADER = "x-api-key"
"""The store server's header (``agent_lightning_http.protocol.API_KEY_HEADER``)."""
COOKIE = "agl_dashboard_key"
STATIC = Path(__file__).parent / "static"

Handler = Callable[[Request], Awaitable[Any]]


def _presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return request.headers.get(API_KEY_HEADER) or request.cookies.get(COOKIE)


def _login_page(message: str) -> HTMLResponse:
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>Agent Lightning dashboard</title>
<link rel="stylesheet" href="static/style.css"></head><body class="login"><form method="get" action="./">
<h1>Agent Lightning dashboard</h1><p>{escape(message)}</p>
<label>API key <input type="password" name="key" autofocus></label> <button type="submit">Open</button>
</form></body></html>"""
    return HTMLResponse(body, status_code=401)


def _list_param(request: Request, name: str) -> list[str] | None:
    values = [v for raw in request.query_params.getlist(name) for v in raw.split(",") if v]
    return values or None


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def create_app(
    store: LightningStore,
    *,
    metrics_dirs: Sequence[str | Path] = (),
    api_key: str | None = None,
    tokenizer: str | None = None,
    close_store: bool = False,
) -> Starlette:
    """The dashboard for ``store``.

    :param metrics_dirs: folders holding a run's ``metrics.jsonl``, or holding run folders that do.
    :param api_key: require it (header, or the cookie the page sets); ``None`` checks nothing.
    :param tokenizer: the policy's model folder, to decode token ids (``transformers`` needed).
    :param close_store: close ``store`` when the app shuts down.
    """
    counter = queries.Counter(store)
    resources = queries.Resources(store)
    index = queries.RolloutIndex(store)
    decoder = Decoder(tokenizer)
    key = api_key or None

    def authorized(request: Request) -> bool:
        if key is None:
            return True
        presented = _presented_key(request)
        return presented is not None and hmac.compare_digest(presented.encode(), key.encode())

    def api(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if not authorized(request):
                return JSONResponse({"error": "missing or wrong API key"}, 401, {"www-authenticate": "Bearer"})
            started = time.perf_counter()
            try:
                result = await handler(request)
            except NotFound as exc:
                return JSONResponse({"error": str(exc)}, 404)
            except ValueError as exc:
                return JSONResponse({"error": str(exc)}, 400)
            elapsed = (time.perf_counter() - started) * 1000
            if isinstance(result, dict):
                result["server_ms"] = round(elapsed, 2)
            return JSONResponse(result, headers={"server-timing": f"app;dur={elapsed:.2f}"})

        return endpoint

    async def page(request: Request) -> Response:
        given = request.query_params.get("key")
        if given is not None:
            response = RedirectResponse("./", 303)
            path = request.scope.get("root_path", "") + "/"
            response.set_cookie(COOKIE, given, httponly=True, samesite="strict", path=path)
            return response
        if not authorized(request):
            return _login_page("This dashboard needs the store's API key.")
        return Response((STATIC / "index.html").read_bytes(), media_type="text/html")

    async def info(_: Request) -> dict[str, Any]:
        return {
            "store": store.url or type(store).__name__,
            "tokenizer": tokenizer,
            "runs": sorted(find_runs(metrics_dirs)),
        }

    async def rollouts(request: Request) -> dict[str, Any]:
        result = await queries.rollouts_page(
            store,
            counter,
            resources,
            status=_list_param(request, "status"),
            task_types=_list_param(request, "task_type"),
            mode=request.query_params.get("mode") or None,
            page=_int_param(request, "page", 0),
            size=_int_param(request, "size", 50),
            newest_first=request.query_params.get("order", "newest") != "oldest",
        )
        result["task_types"] = sorted(await counter.counts())
        return result

    async def rollout(request: Request) -> dict[str, Any]:
        return await queries.rollout_detail(
            store, resources, request.path_params["rollout_id"], request.query_params.get("attempt") or None
        )

    async def training(request: Request) -> dict[str, Any]:
        result = await queries.training_view(
            store,
            index,
            decoder,
            request.path_params["rollout_id"],
            aggregation=request.query_params.get("aggregation", "transition"),
        )
        result["tokenizer"] = decoder.name
        result["tokenizer_error"] = decoder.error
        return result

    async def runs(_: Request) -> dict[str, Any]:
        await index.advance()
        for resources_id in list(index.by_resources):
            await resources.get(resources_id)
        snapshots = await resources.all()
        versions = []
        for snapshot in snapshots:
            versions.append(
                {
                    "resources_id": snapshot.resources_id,
                    "version": snapshot.version,
                    "created_at": snapshot.created_at,
                    "metadata": snapshot.metadata,
                    "resources": {
                        name: {k: v for k, v in r.model_dump(mode="json").items() if k != "api_key"}
                        for name, r in snapshot.resources.items()
                    },
                    "rollouts": index.by_resources.get(snapshot.resources_id, {}),
                }
            )
        unversioned = index.by_resources.get("")
        found = find_runs(metrics_dirs)
        return {
            "runs": [run_summary(name, folder) for name, folder in sorted(found.items())],
            "resources": versions,
            "unversioned_rollouts": unversioned or {},
            "indexed_rollouts": index.indexed,
            "index_complete": index.complete,
        }

    async def metrics(request: Request) -> dict[str, Any]:
        found = find_runs(metrics_dirs)
        folder = found.get(request.path_params["name"])
        if folder is None:
            raise NotFound(f"no run named {request.path_params['name']!r}; runs: {sorted(found)}")
        return read_metrics(folder, _int_param(request, "offset", 0))

    async def queue_page(_: Request) -> dict[str, Any]:
        return await queries.queues(store, counter)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if close_store:
                await store.close()

    routes = [
        Route("/", page),
        Route("/api/info", api(info)),
        Route("/api/rollouts", api(rollouts)),
        Route("/api/rollouts/{rollout_id}", api(rollout)),
        Route("/api/rollouts/{rollout_id}/training", api(training)),
        Route("/api/runs", api(runs)),
        Route("/api/runs/{name}/metrics", api(metrics)),
        Route("/api/queues", api(queue_page)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.store = store
    return app
