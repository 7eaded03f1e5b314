"""Plugin: ``http://`` / ``https://`` store URLs (the client) and ``agl store serve`` (the server).

Imports nothing of the web stack until a store is opened or the server runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from agent_lightning.hookspecs import hookimpl
from agent_lightning.store import RegisterStore
from agent_lightning.store.base import LightningStore

SCHEMES = ("http", "https")


def open_http_store(url: str, options: Mapping[str, Any], *, create: bool) -> LightningStore:
    """A client of the store server at ``url`` (the server's store exists; ``create`` changes nothing)."""
    from agent_lightning_http.client import OPTIONS, HttpLightningStore

    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise ValueError(f"http:// stores take the options {sorted(OPTIONS)}, not {unknown}")
    return HttpLightningStore(url, **options)


@hookimpl
def agl_register_stores(register: RegisterStore) -> None:
    register(schemes=SCHEMES, opener=open_http_store)


def _serve(args: argparse.Namespace) -> int:
    from agent_lightning.secrets import read_secret

    from agent_lightning_http.auth import TOKEN_SECRET_ENV
    from agent_lightning_http.protocol import API_KEY_ENV
    from agent_lightning_http.serve import serve

    if args.ssl_keyfile and not args.ssl_certfile:
        raise ValueError("--ssl-keyfile needs --ssl-certfile")
    serve(
        args.store,
        args.host,
        args.port,
        api_key=read_secret(value=args.api_key, file=args.api_key_file, env=API_KEY_ENV),
        max_body_bytes=args.max_body_bytes,
        log_level=args.log_level,
        token_secret=read_secret(file=args.token_secret_file, env=TOKEN_SECRET_ENV),
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        dashboard_path=None if args.no_dashboard else args.dashboard_path,
    )
    return 0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``agl store serve`` (also ``python -m agent_lightning_http``)."""
    from agent_lightning_http.protocol import API_KEY_ENV, DEFAULT_MAX_BODY_BYTES

    parser.add_argument("--store", required=True, help="the backend to serve: memory://, sqlite:///runs.db, …")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=4747, help="0 picks a free port (printed on start)")
    parser.add_argument(
        "--api-key-file",
        help=f"the admin key: a file whose first line it is (default: ${API_KEY_ENV}; none means no check)",
    )
    parser.add_argument(
        "--api-key", help="the admin key itself (visible in ps and shell history: prefer --api-key-file)"
    )
    parser.add_argument(
        "--token-secret-file", help="signs attempt tokens (default: $AGL_TOKEN_SECRET, else derived from the key)"
    )
    parser.add_argument("--ssl-certfile", help="serve HTTPS with this PEM certificate (chain)")
    parser.add_argument("--ssl-keyfile", help="the certificate's PEM private key")
    parser.add_argument(
        "--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="larger requests get HTTP 413"
    )
    parser.add_argument(
        "--dashboard-path",
        default="/dashboard",
        help="where the dashboard is served when agent-lightning-dashboard is installed (same API key)",
    )
    parser.add_argument("--no-dashboard", action="store_true", help="serve no dashboard")
    parser.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(func=_serve)


@hookimpl
def agl_register_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    store = subparsers.add_parser("store", help="store utilities")
    commands = store.add_subparsers(dest="store_command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="serve a store over HTTP (clients open http://HOST:PORT; API docs at /docs)"
    )
    add_serve_arguments(serve)
