"""Added latency of the LLM proxy: calling a fast fake upstream through the proxy versus directly.

    python benchmarks/proxy_overhead.py [--requests 2000] [--concurrency 1 8 64]

The upstream (a minimal ASGI app answering a fixed chat completion with token ids and logprobs)
and the proxy (recording every call into an in-memory store) each run in their own process; the
clients (``httpx.AsyncClient``, keep-alive) run in this one. For each concurrency level the same
request is sent N times directly and N times through the proxy; the table shows per-call latency
percentiles and the difference (added = proxied − direct, per percentile).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import time
from typing import Any

PAYLOAD = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "system_fingerprint": "bench-v1",
        "prompt_token_ids": list(range(100, 164)),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "The answer is 4. " * 4},
                "finish_reason": "stop",
                "token_ids": list(range(1000, 1032)),
                "logprobs": {
                    "content": [{"token": "x", "logprob": -0.5, "bytes": [120], "top_logprobs": []} for _ in range(32)]
                },
            }
        ],
        "usage": {"prompt_tokens": 64, "completion_tokens": 32, "total_tokens": 96},
    }
).encode()
REQUEST = {
    "model": "bench",
    "messages": [
        {"role": "system", "content": "You are a calculator."},
        {"role": "user", "content": "What is 2 + 2? Think step by step."},
    ],
    "temperature": 0.7,
    "max_tokens": 64,
}


async def fast_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The fastest OpenAI-compatible 'model': a fixed answer."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    headers = [(b"content-type", b"application/json"), (b"x-agl-model-version", b"bench-v1")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": PAYLOAD})


def _serve_upstream(ports: Any) -> None:
    from agent_lightning_proxy.serving import ServerThread

    server = ServerThread(fast_upstream, "127.0.0.1", 0, name="bench-upstream").start()
    ports.put(server.port)
    time.sleep(1e9)


def _serve_proxy(upstream: str, ports: Any) -> None:
    from agent_lightning.store import InMemoryLightningStore
    from agent_lightning.types import RolloutRequest
    from agent_lightning_proxy import LLMProxy

    store = InMemoryLightningStore()
    attempted = asyncio.run(store.start_rollout(RolloutRequest(input=None), worker_id="bench"))
    proxy = LLMProxy(store, upstream).start()
    ports.put((proxy.port, proxy.base_url(attempted.rollout_id, attempted.attempt_id)))
    time.sleep(1e9)


async def _measure(base_url: str, concurrency: int, requests: int) -> list[float]:
    import httpx

    url = f"{base_url}/chat/completions"
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        per_client = max(1, requests // concurrency)

        async def worker() -> None:
            for _ in range(per_client):
                start = time.perf_counter()
                response = await client.post(url, json=REQUEST)
                latencies.append(time.perf_counter() - start)
                assert response.status_code == 200, response.text

        await asyncio.gather(*(worker() for _ in range(concurrency)))  # warm-up: connections, caches
        latencies.clear()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency level and target")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--rounds", type=int, default=3, help="alternate direct/proxied this many times")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    upstream_process = ctx.Process(target=_serve_upstream, args=(ports,), daemon=True)
    upstream_process.start()
    upstream = f"http://127.0.0.1:{ports.get(timeout=60)}/v1"
    proxy_process = ctx.Process(target=_serve_proxy, args=(upstream, ports), daemon=True)
    proxy_process.start()
    _, proxied_url = ports.get(timeout=60)
    try:
        rows = []
        for concurrency in args.concurrency:
            direct: list[float] = []
            proxied: list[float] = []
            for _ in range(args.rounds):  # interleave so drift in machine load hits both sides alike
                direct += asyncio.run(_measure(upstream, concurrency, args.requests // args.rounds))
                proxied += asyncio.run(_measure(proxied_url, concurrency, args.requests // args.rounds))
            rows.append(
                (
                    concurrency,
                    len(proxied),
                    _pct(direct, 0.5),
                    _pct(proxied, 0.5),
                    _pct(proxied, 0.5) - _pct(direct, 0.5),
                    _pct(direct, 0.99),
                    _pct(proxied, 0.99),
                    _pct(proxied, 0.99) - _pct(direct, 0.99),
                    statistics.fmean(proxied) * 1000 - statistics.fmean(direct) * 1000,
                )
            )
        print(
            f"{'clients':>7} {'calls':>6} | {'direct p50':>10} {'proxy p50':>10} {'added p50':>10} | "
            f"{'direct p99':>10} {'proxy p99':>10} {'added p99':>10} | {'added mean':>10}   (ms)"
        )
        for row in rows:
            print(f"{row[0]:>7} {row[1]:>6} | " + " | ".join(
                " ".join(f"{v:>10.3f}" for v in group) for group in (row[2:5], row[5:8], row[8:9])
            ))  # fmt: skip
    finally:
        proxy_process.terminate()
        upstream_process.terminate()


if __name__ == "__main__":
    main()
