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


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``12h`` or ``30d``."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    value = text.strip().lower()
    scale = units.get(value[-1:])
    try:
        seconds = float(value[:-1] if scale else value) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a duration looks like 3600, 90m, 12h or 30d, not {text!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"a duration must be positive, not {text!r}")
    return seconds


def _write_private(path: str, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only."""
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(text + "\n")


def _token(args: argparse.Namespace) -> int:
    import asyncio
    import sys
    import time

    from agent_lightning_http.auth import DEFAULT_RUNNER_TOKEN_TTL, DEFAULT_TOKEN_TTL
    from agent_lightning_http.client import HttpLightningStore

    if not args.runner and (args.name is not None or args.task_type):
        raise ValueError("--name and --task-type go with --runner")
    client = HttpLightningStore(args.store, api_key_file=args.api_key_file, ca_file=args.ca_file)

    async def issue() -> tuple[str, float]:
        try:
            if args.runner:
                ttl = args.ttl or DEFAULT_RUNNER_TOKEN_TTL
                return await client.issue_runner_token(args.name, ttl, args.task_type or None)
            ttl = args.ttl or DEFAULT_TOKEN_TTL
            rollout_id, attempt_id = args.attempt
            token = await client.issue_token(rollout_id, attempt_id, ttl=ttl)
            return token, float(int(time.time() + ttl))
        finally:
            await client.close()

    token, expires = asyncio.run(issue())
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(expires))
    kind = "runner token" if args.runner else "attempt token"
    if args.output:
        _write_private(args.output, token)
        print(f"agl store token: wrote a {kind} to {args.output} (expires {when})", file=sys.stderr)
    else:
        print(token)
        print(f"agl store token: {kind}, expires {when}", file=sys.stderr)
    return 0


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``agl store token``."""
    from agent_lightning_http.protocol import API_KEY_ENV

    parser.add_argument("--store", required=True, help="the store server: http(s)://HOST:PORT")
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument(
        "--runner", action="store_true", help="a runner token: claims rollouts and reads resources, nothing else"
    )
    kind.add_argument(
        "--attempt", nargs=2, metavar=("ROLLOUT_ID", "ATTEMPT_ID"), help="an attempt token for an existing attempt"
    )
    parser.add_argument("--name", help="a label for the runner token (a machine, a person)")
    parser.add_argument(
        "--task-type", action="append", help="the runner token claims only this task type (repeat for more)"
    )
    parser.add_argument(
        "--ttl", type=parse_duration, help="how long the token is valid: 3600, 90m, 12h, 30d (runner 30d, attempt 7d)"
    )
    parser.add_argument("--output", "-o", help="write the token to this file (mode 600) instead of printing it")
    parser.add_argument(
        "--api-key-file", help=f"the admin key: a file whose first line it is (default: ${API_KEY_ENV})"
    )
    parser.add_argument("--ca-file", help="PEM file an https:// server's certificate must chain to")
    parser.set_defaults(func=_token)


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
    token = commands.add_parser(
        "token", help="issue a runner token (--runner) or an attempt token from a store server (needs the admin key)"
    )
    add_token_arguments(token)
