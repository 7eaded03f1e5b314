"""A training rank that rank 0 started itself: ``python -m agent_lightning_rl.follower SPEC.json RANK``.

``Trainer(num_gpus=N)`` outside torchrun runs rank 0 in the calling process and ``N - 1`` of these. Each loads the
same policy, joins rank 0's process group and trains on the shards rank 0 broadcasts; rank 0 alone reads the store,
runs the rollouts, publishes weights and writes checkpoints. Ctrl-C is rank 0's to handle: it tells these to stop.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m agent_lightning_rl.follower SPEC.json RANK", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C reaches every rank; rank 0 decides
    logging.basicConfig(level=logging.WARNING, format=f"[rank {args[1]}] %(levelname)s %(name)s: %(message)s")
    from agent_lightning.registry import import_object

    from .base import RLAlgorithm

    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    algorithm_class = import_object(spec["algorithm"])
    if not (isinstance(algorithm_class, type) and issubclass(algorithm_class, RLAlgorithm)):
        print(f"{spec['algorithm']} is not an RL algorithm", file=sys.stderr)
        return 2
    config = algorithm_class.config_class.model_validate(spec["config"])
    algorithm_class(config=config).follow(spec, int(args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
