"""``python -m agent_lightning_http --store URL [--host H] [--port N] [--api-key KEY]``: ``agl store serve``."""

from __future__ import annotations

import argparse
import logging

from agent_lightning_http.plugin import add_serve_arguments


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m agent_lightning_http", description="Serve a store over HTTP.")
    add_serve_arguments(parser)
    args = parser.parse_args()
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
