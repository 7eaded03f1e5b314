"""Run under ``torchrun --nproc_per_node 2``: offline GRPO through the Trainer with DDP (gloo); dumps each rank's
final weights and the rollouts it trained on into OUT_DIR."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from agent_lightning import InMemoryLightningStore, Trainer
from agent_lightning.store.sync import SyncStore
from agent_lightning_rl import learner as learner_module
from agent_lightning_rl.config import GRPOConfig
from agent_lightning_rl.grpo import GroupRelativePolicyOptimization
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from traces import add_rollout


def main() -> None:
    model_dir, out = sys.argv[1], Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    store = InMemoryLightningStore()
    sync = SyncStore(store)
    gen = torch.Generator().manual_seed(0)  # every rank fills the same data; rank 0's is broadcast anyway
    for task in range(4):
        prompt = torch.randint(3, 400, (5,), generator=gen).tolist()
        for _ in range(4):
            completion = torch.randint(3, 400, (3,), generator=gen).tolist()
            add_rollout(sync, {"task": task}, [(prompt, completion)], float(completion[0] % 2))

    seen: list[str] = []
    original = learner_module.PolicyLearner.update

    def recording_update(self, samples, advantages, **kw):  # type: ignore[no-untyped-def]
        seen.extend(s.rollout_id for s in samples)
        return original(self, samples, advantages, **kw)

    learner_module.PolicyLearner.update = recording_update  # type: ignore[method-assign]
    config = GRPOConfig(model=model_dir, learning_rate=1e-2, batch_size=8, micro_batch_size=2)
    algorithm = GroupRelativePolicyOptimization(config=config)
    result = Trainer(algorithm=algorithm, store=store, run_dir=out / f"run{rank}").train(
        num_iterations=3, checkpoint_dir=out / "checkpoints"
    )
    assert algorithm.learner is not None
    state = {k: v.detach().contiguous() for k, v in algorithm.learner.model.state_dict().items()}
    save_file(state, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps({"iterations": result.iterations, "rollouts": seen}))


if __name__ == "__main__":
    main()
