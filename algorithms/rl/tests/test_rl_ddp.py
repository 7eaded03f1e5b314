"""Data-parallel training: two CPU processes under torchrun (gloo) end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from toy import save_tiny_policy
from transformers import PreTrainedTokenizerFast


def test_two_ranks_train_different_shards_and_end_identical(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    model_dir = save_tiny_policy(tokenizer, tmp_path / "model")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(Path(__file__).parent / "ddp_worker.py"), model_dir, str(out),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]

    rank0, rank1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    initial = load_file(str(Path(model_dir) / "model.safetensors"))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between ranks"
    assert not torch.equal(rank0["lm_head.weight"], initial["lm_head.weight"])  # it did train

    seen0 = json.loads((out / "rank0.json").read_text())
    seen1 = json.loads((out / "rank1.json").read_text())
    assert seen0["iterations"] == seen1["iterations"] == 3
    assert len(seen0["rollouts"]) == len(seen1["rollouts"]) == 12  # 3 iterations x 4 samples each
    assert set(seen0["rollouts"]).isdisjoint(seen1["rollouts"][:4])  # different shards of the same batch
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-000003"]  # written once, by rank 0
