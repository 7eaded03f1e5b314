"""``agl proxy``: serve the LLM proxy from the command line (the web stack loads only when it runs)."""

from __future__ import annotations

import argparse
import json
import logging

from agent_lightning.hookspecs import hookimpl

logger = logging.getLogger(__name__)


PROXY_API_KEY_ENV = "AGL_PROXY_API_KEY"
UPSTREAM_API_KEY_ENV = "AGL_UPSTREAM_API_KEY"


def _proxy(args: argparse.Namespace) -> int:
    from agent_lightning.secrets import mask, read_secret, redact_url
    from agent_lightning.store import open_store

    from agent_lightning_proxy import LLMProxy
    from agent_lightning_proxy.tokens import TOKEN_SECRET_ENV, derive_token_secret

    model_map: dict[str, str] = {}
    for item in args.model_map or []:
        requested, sep, served = item.partition("=")
        if not sep or not requested or not served:
            raise ValueError(f"--model-map takes REQUESTED=SERVED (or *=SERVED), got {item!r}")
        model_map[requested] = served
    api_key = read_secret(file=args.api_key_file, env=PROXY_API_KEY_ENV)
    upstream_key = read_secret(value=args.upstream_api_key, file=args.upstream_api_key_file, env=UPSTREAM_API_KEY_ENV)
    token_secret: str | bytes | None = read_secret(file=args.token_secret_file, env=TOKEN_SECRET_ENV)
    store_key = read_secret(env="AGL_STORE_API_KEY")
    if token_secret is None and store_key:
        token_secret = derive_token_secret(store_key)
    store = open_store(args.store)
    proxy = LLMProxy(
        store,
        args.upstream,
        host=args.host,
        port=args.port,
        model_map=model_map or None,
        upstream_api_key=upstream_key,
        timeout=args.timeout,
        request_token_ids=not args.no_token_ids,
        store_timeout=args.store_timeout,
        api_key=api_key,
        token_secret=token_secret,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        logger.warning(
            "the proxy listens on %s without an API key: anyone who reaches it spends the upstream's key; "
            "set %s or pass --api-key-file",
            args.host,
            PROXY_API_KEY_ENV,
        )
    proxy.start()
    line = {
        "url": proxy.url,
        "upstream": redact_url(proxy.upstream),
        "store": redact_url(store.url or args.store),
        "api_key": api_key is not None,
        "tokens": token_secret is not None,
    }
    print(mask(json.dumps(line)), flush=True)
    print(
        mask(
            f"agl proxy: serving {proxy.url} -> {redact_url(proxy.upstream)}; agents use {proxy.base_url('ROLLOUT_ID')}"
        ),
        flush=True,
    )
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
    p.add_argument(
        "--upstream-api-key-file",
        help=f"a file with the API key sent upstream (default: ${UPSTREAM_API_KEY_ENV}, else the agent's own)",
    )
    p.add_argument("--upstream-api-key", help="the upstream key itself (visible in ps: prefer the file)")
    p.add_argument(
        "--api-key-file", help=f"the proxy's own key, required from every caller (default: ${PROXY_API_KEY_ENV})"
    )
    p.add_argument(
        "--token-secret-file",
        help="verifies attempt tokens (default: $AGL_TOKEN_SECRET, else derived from $AGL_STORE_API_KEY)",
    )
    p.add_argument("--ssl-certfile", help="serve HTTPS with this PEM certificate (chain)")
    p.add_argument("--ssl-keyfile", help="the certificate's PEM private key")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the upstream")
    p.add_argument(
        "--store-timeout", type=float, default=5.0, help="seconds an answer waits for its record to be stored"
    )
    p.add_argument("--no-token-ids", action="store_true", help="do not ask the upstream for token ids")
    p.set_defaults(func=_proxy)
