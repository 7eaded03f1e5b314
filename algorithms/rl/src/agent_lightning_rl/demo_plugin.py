"""Entry-point plugin: adds ``agl demo`` (imports nothing heavy; the demo loads on use)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from agent_lightning.hookspecs import hookimpl


def _run(args: argparse.Namespace) -> int:
    # before torch loads: idle OpenMP threads sleep instead of spinning, which on 2 cores shared with the runner,
    # proxy and store threads made generation up to 3x slower (measured)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from agent_lightning_rl.demo import main

    return main(args)


@hookimpl
def agl_register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``agl demo``: train the calculator agent on the offline default model, on CPU."""
    from agent_lightning_rl.demo import add_arguments

    parser = subparsers.add_parser(
        "demo",
        help="train the calculator agent (examples/calc_agent) with GRPO on CPU, offline, and compare before/after",
        description="Evaluate, train and re-evaluate the calculator agent on the bundled SmolLM2-135M-Instruct.",
    )
    add_arguments(parser)
    parser.set_defaults(func=_run)
