"""Checkpoints in Hugging Face format (``model.safetensors`` + tokenizer), plus the trainer state to resume from.

``{checkpoint_dir}/checkpoint-{iteration:06d}/`` loads with ``AutoModelForCausalLM.from_pretrained``; with LoRA
the weights are merged and the adapter is also saved under ``adapter/``. ``trainer_state.pt`` holds the iteration,
optimizer state, value head and RNG state.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .learner import PolicyLearner, _base_model, is_peft, merged_weights

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.pt"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    iteration: int

    @property
    def has_adapter(self) -> bool:
        return (self.path / "adapter").is_dir()


def list_checkpoints(directory: Path | str | None) -> list[Checkpoint]:
    """Complete checkpoints in ``directory``, oldest first."""
    if directory is None or not Path(directory).is_dir():
        return []
    found = []
    for child in Path(directory).iterdir():
        match = _NAME.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append(Checkpoint(child, int(match.group(1))))
    return sorted(found, key=lambda c: c.iteration)


def latest_checkpoint(directory: Path | str | None) -> Checkpoint | None:
    """The newest complete checkpoint, or ``None``."""
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(
    directory: Path | str,
    iteration: int,
    learner: PolicyLearner,
    tokenizer: Any,
    *,
    keep: int = 2,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``checkpoint-{iteration}`` atomically and keep only the newest ``keep`` checkpoints."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"checkpoint-{iteration:06d}"
    tmp = directory / f".tmp-checkpoint-{iteration:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    model = learner.model
    base = _base_model(model)
    if is_peft(model):
        with merged_weights(model) as state:
            base.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        model.save_pretrained(tmp / "adapter")  # type: ignore[operator]
    else:
        base.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    value_head = learner.module.value_head
    torch.save(
        {
            "iteration": iteration,
            "steps": learner.steps,
            "optimizer": learner.optimizer.state_dict(),
            "value_head": value_head.state_dict() if value_head is not None else None,
            "torch_rng": torch.get_rng_state(),
            "config": learner.config.model_dump(),
            **(extra or {}),
        },
        tmp / STATE_FILE,
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)
    logger.info("saved checkpoint %s", final)
    return final


def load_trainer_state(checkpoint: Checkpoint, learner: PolicyLearner) -> dict[str, Any]:
    """Restore the optimizer, value head and RNG of ``checkpoint`` into ``learner``; returns the saved state."""
    state: dict[str, Any] = torch.load(checkpoint.path / STATE_FILE, map_location=learner.device, weights_only=False)
    learner.optimizer.load_state_dict(state["optimizer"])
    if state.get("value_head") is not None and learner.module.value_head is not None:
        learner.module.value_head.load_state_dict(state["value_head"])
    learner.steps = int(state.get("steps", 0))
    if isinstance(state.get("torch_rng"), torch.Tensor):
        torch.set_rng_state(state["torch_rng"].cpu())
    return state
