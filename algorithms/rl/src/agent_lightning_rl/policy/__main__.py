"""Run the policy server as its own process: ``python -m agent_lightning_rl.policy [--model NAME] [--port N]``.

Prints ``serving <model> at <base_url>`` once it accepts connections; a trainer in another process publishes new
weights with ``POST <root>/agl/weights {"path": ..., "version": ...}`` (loopback only).
"""

from __future__ import annotations

import argparse
import signal
import threading

from ..models import DEFAULT_MODEL, load_policy
from .server import PolicyServer


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, load the model, serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m agent_lightning_rl.policy", description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="bundled alias, checkpoint folder, .gguf or hub id")
    parser.add_argument("--served-name", default=None, help="model name clients use (default: --model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--version", default="v0", help="the version reported until new weights arrive")
    parser.add_argument("--logprobs-mode", choices=["raw", "processed"], default="raw")
    args = parser.parse_args(argv)

    model, tokenizer = load_policy(args.model, dtype=args.dtype, device=args.device)
    server = PolicyServer(
        model,
        tokenizer,
        model_name=args.served_name or args.model,
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        version=args.version,
        logprobs_mode=args.logprobs_mode,
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with server:
        print(f"serving {server.model_name} at {server.url}", flush=True)
        done.wait()


if __name__ == "__main__":
    main()
