"""``agl proxy``: serve the LLM proxy from the command line (the web stack loads only when it runs)."""

from __future__ import annotations

import argparse
import json
import logging

from agent_lightning.hookspecs import hookimpl

logger = logging.getLogger(__name__)


def _proxy(args: argparse.Namespace) -> int:
    from agent_lightning.store import open_store

    from agent_lightning_proxy import LLMProxy

    model_map: dict[str, str] = {}
    for item in args.model_map or []:
        requested, sep, served = item.partition("=")
        if not sep or not requested or not served:
            raise ValueError(f"--model-map takes REQUESTED=SERVED (or *=SERVED), got {item!r}")
        model_map[requested] = served
    store = open_store(args.store)
    proxy = LLMProxy(
        store,
        args.upstream,
        host=args.host,
        port=args.port,
        model_map=model_map or None,
        upstream_api_key=args.upstream_api_key,
        timeout=args.timeout,
        request_token_ids=not args.no_token_ids,
        store_timeout=args.store_timeout,
    )
    proxy.start()
    print(
        json.dumps({"url": proxy.url, "upstream": proxy.upstream, "store": store.url}),
        flush=True,
    )
    print(f"agl proxy: serving {proxy.url} -> {proxy.upstream}; agents use {proxy.base_url('ROLLOUT_ID')}", flush=True)
    try:
        proxy.serve_forever()
    finally:
        stats = proxy.stats()
        print(f"agl proxy: stopped after {stats.requests} requests ({stats.recorded_spans} spans recorded)")
    return 0


@hookimpl
def agl_register_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("proxy", help="serve the OpenAI-compatible LLM proxy that records token ids")
    p.add_argument(
        "--upstream", required=True, help="OpenAI-compatible server to forward to, e.g. http://127.0.0.1:8000/v1"
    )
    p.add_argument("--store", required=True, help="store URL the spans go to (sqlite:///runs.db, http://…)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    p.add_argument("--model-map", action="append", metavar="REQUESTED=SERVED", help="rename a model (repeatable)")
    p.add_argument("--upstream-api-key", help="API key sent upstream (default: the agent's own)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the upstream")
    p.add_argument(
        "--store-timeout", type=float, default=5.0, help="seconds an answer waits for its record to be stored"
    )
    p.add_argument("--no-token-ids", action="store_true", help="do not ask the upstream for token ids")
    p.set_defaults(func=_proxy)
