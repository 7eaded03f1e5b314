"""``agl dashboard``: registered through the ``agl_register_commands`` hook. Imports the web stack only when run."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from agent_lightning.hookspecs import hookimpl

API_KEY_ENV = "AGL_STORE_API_KEY"
"""The store server's variable (``agent_lightning_http.protocol.API_KEY_ENV``)."""
DEFAULT_PORT = 4748
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
logger = logging.getLogger("agent_lightning.dashboard")


def default_metrics_dirs(store_url: str) -> list[Path]:
    """For a ``sqlite:///…/store.db`` store, the folder of the database (``agl demo``'s run folder)."""
    if store_url.startswith("sqlite:///") and store_url not in ("sqlite:///:memory:",):
        path = Path(store_url[len("sqlite:///") :]).expanduser()
        return [path.parent if str(path.parent) else Path(".")]
    return []


def _run(args: argparse.Namespace) -> int:
    import uvicorn
    from agent_lightning.store import open_store

    from agent_lightning_dashboard.app import create_app

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if args.host not in LOOPBACK and not api_key:
        logger.warning(
            "the dashboard listens on %s without an API key: anyone who can reach it can read the store; "
            "pass --api-key or set %s",
            args.host,
            API_KEY_ENV,
        )
    metrics = [Path(m) for m in args.metrics] if args.metrics else default_metrics_dirs(args.store)
    store = open_store(args.store)
    app = create_app(store, metrics_dirs=metrics, api_key=api_key, tokenizer=args.tokenizer, close_store=True)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"agl dashboard: http://{host}:{args.port}/  (store {args.store})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``agl dashboard``."""
    parser.add_argument("--store", required=True, help="the store to show: sqlite:///runs/…/store.db, http://…, …")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    parser.add_argument(
        "--metrics",
        action="append",
        metavar="DIR",
        help="a run folder with metrics.jsonl, or a folder of run folders (repeatable; default: the "
        "folder of a sqlite:/// store's file)",
    )
    parser.add_argument(
        "--tokenizer", metavar="PATH", help="the policy's model folder, to decode token ids (needs transformers)"
    )
    parser.add_argument("--api-key", help=f"require this key (default: ${API_KEY_ENV}; none means no check)")
    parser.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(func=_run)


@hookimpl
def agl_register_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("dashboard", help="browse a store's rollouts, traces, training data and metrics")
    add_arguments(parser)
