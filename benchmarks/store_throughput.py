"""Store throughput on the paths the product uses, per backend, printed as one table.

    python benchmarks/store_throughput.py [--backends memory,sqlite,postgres,redis,http]
        [--quick] [--runners 2] [--spans 20000] [--batched-spans 50000] [--calls 1000] [--tasks 1000]
        [--compare OTHER_PYTHON [--rounds 1]]

What is measured, on a fresh, empty store for each backend and phase (``http`` is
``agl store serve`` over a fresh SQLite file):

emit      ``agl.span`` emission until stored, opening and closing the contexts included.
          ``--runners`` runners (processes; threads of one process for ``memory``) each open
          ``agl.TrainingContext`` after ``agl.TrainingContext`` (``--spans-per-context`` spans each,
          emitted with ``agl.span``) until they have emitted ``--spans`` spans together. Timed from
          the first span until every span is stored: a context's exit waits for its spans, and a
          second store object then counts them (if any is missing, it polls, and the phase ends when
          it sees the last one). p50: one context, from opening to exit.
proxy     proxy recording until stored. ``--concurrency`` threads, each inside its own
          ``TrainingContext`` with ``ctx.llm().endpoint``, send ``--calls`` chat completions together
          through ``agl proxy`` (a subprocess; in this process for ``memory``) to the scripted
          OpenAI-compatible upstream (its own process). Timed from the first call until a second
          store object sees one LLM span per call (the note says how long after the last answer).
          p50: one call, as the client sees it.
add_spans ``store.add_spans`` batches of ``--batch-size`` spans (durable on return), ``--batched-spans``
          in all, from ``--runners`` runners into rollouts of ``--spans-per-context`` spans. p50: one call.
enqueue   ``store.enqueue_rollouts`` batches of ``--batch-size`` requests, ``--tasks`` rollouts, from one
          process. p50: one call.
claim     ``claim_rollout`` + ``complete_attempt`` by ``--runners`` runners until the queue is empty.
          p50: one claim plus its completion.

A rate is the total count over all runners divided by the wall time from the moment all runners
are released (a barrier) until the last one is done. Every phase runs in its own worker
subprocess. ``--compare PYTHON`` runs every phase under this interpreter ("new") and under PYTHON
("old", e.g. another checkout's venv) back to back, alternating which goes first, and prints both
with the ratio new/old; a worker of either runs this same file, which imports only public names.
Backends that are not installed or whose server is not running are skipped with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from _harness import (
    backend,
    fmt_ms,
    fmt_rate,
    machine_line,
    median_of,
    note_of,
    p50_ms,
    parse_matrix_args,
    proxy_class,
    ratio,
    run_matrix,
    scripted_llm_class,
    serve_proxy,
    spawn,
)

PHASES = ("emit", "proxy", "add_spans", "enqueue", "claim")
UNITS = {
    "emit": "spans/s",
    "proxy": "calls/s",
    "add_spans": "spans/s",
    "enqueue": "rollouts/s",
    "claim": "claims+completes/s",
}
P50 = {
    "emit": "per context",
    "proxy": "per call",
    "add_spans": "per call",
    "enqueue": "per call",
    "claim": "per claim+complete",
}
ATTRIBUTES = {
    "gen_ai.request.model": "policy",
    "gen_ai.usage.prompt_tokens": 120,
    "gen_ai.usage.completion_tokens": 40,
    "agentlightning.prompt_token_ids": list(range(32)),
    "text": "x" * 200,
}
SPAN_NAME = "bench-step"
REQUEST = {
    "model": "scripted",
    "messages": [
        {"role": "system", "content": "You are a calculator."},
        {"role": "user", "content": "What is 2 + 2? Think step by step."},
    ],
    "max_tokens": 64,
}
VISIBLE_TIMEOUT = 120.0


@dataclass
class Sizes:
    runners: int = 2
    spans: int = 20000
    batched_spans: int = 50000
    spans_per_context: int = 50
    batch_size: int = 100
    calls: int = 1000
    concurrency: int = 16
    tasks: int = 1000

    def share(self, total: int, runner: int) -> int:
        return total // self.runners + (1 if runner < total % self.runners else 0)


QUICK = Sizes(spans=4000, batched_spans=20000, calls=240, tasks=300)


# ---------------------------------------------------------------------- helpers
def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _count_spans(store: Any, rollout_ids: list[str], **filters: Any) -> int:
    limit = asyncio.Semaphore(8)  # a backend's connection pool is bounded

    async def count(rollout_id: str) -> int:
        async with limit:
            return len(await store.query_spans(rollout_id, **filters))

    return sum(await asyncio.gather(*(count(r) for r in rollout_ids)))


def _wait_visible(url: str, rollout_ids: list[str], expected: int, **filters: Any) -> tuple[float, bool]:
    """Poll a second store object until it sees ``expected`` spans.

    Returns the time it saw them and whether its first look did.
    """
    from agent_lightning.store import open_store

    async def main() -> tuple[float, bool]:
        store = open_store(url)
        try:
            deadline = time.monotonic() + VISIBLE_TIMEOUT
            first = True
            while True:
                seen = await _count_spans(store, rollout_ids, **filters)
                if seen >= expected:
                    return time.monotonic(), first
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {seen} of {expected} spans visible after {VISIBLE_TIMEOUT:.0f} s")
                first = False
                await asyncio.sleep(0.005)
        finally:
            await store.close()

    result: tuple[float, bool] = _run(main())
    return result


def _in_threads(target: Any, args_of: Any, count: int) -> list[Any]:
    """Run ``target(*args_of(n))`` in ``count`` threads; returns their results in order."""
    out: list[Any] = [None] * count
    failures: list[str] = []

    def run(n: int) -> None:
        try:
            out[n] = target(*args_of(n))
        except BaseException as exc:
            failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError("; ".join(failures))
    return out


def _combine(outcomes: list[dict[str, Any]]) -> tuple[int, float, float, list[float]]:
    count = sum(o["count"] for o in outcomes)
    began = min(o["began"] for o in outcomes)
    ended = max(o["ended"] for o in outcomes)
    latencies = [x for o in outcomes for x in o["latencies"]]
    return count, began, ended, latencies


def _figure(count: int, began: float, ended: float, latencies: list[float], note: str = "") -> dict[str, Any]:
    wall = ended - began
    return {"rate": count / wall if wall > 0 else None, "p50_ms": p50_ms(latencies), "count": count, "note": note}


def _span(rollout_id: str, attempt_id: str, sequence_id: int, trace_id: str) -> Any:
    from agent_lightning.types import Span

    now = time.time()
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=sequence_id,
        trace_id=trace_id,
        span_id=os.urandom(8).hex(),
        name=SPAN_NAME,
        kind="llm",
        attributes=ATTRIBUTES,
        start_time=now,
        end_time=now + 0.5,
    )


# ---------------------------------------------------------------------- phase: emit
def emit_runner(url: str, sizes: dict[str, Any], runner: int, barrier: Any) -> dict[str, Any]:
    import agent_lightning as agl

    work = Sizes(**sizes)
    with agl.TrainingContext(task_id="bench-warmup", store=url, instrument=False):
        with agl.span(SPAN_NAME, **ATTRIBUTES):
            pass  # the store connection and the tracer exist before timing, as in a long-lived runner
    remaining = work.share(work.spans, runner)
    ids: list[str] = []
    latencies: list[float] = []
    barrier.wait()
    began = time.monotonic()
    while remaining > 0:
        count = min(work.spans_per_context, remaining)
        opened = time.monotonic()
        with agl.TrainingContext(task_id="bench-emit", store=url, instrument=False) as ctx:
            for _ in range(count):
                with agl.span(SPAN_NAME, **ATTRIBUTES):
                    pass
        latencies.append(time.monotonic() - opened)
        ids.append(ctx.rollout_id)
        remaining -= count
    return {"count": work.share(work.spans, runner), "began": began, "ended": time.monotonic(),
            "latencies": latencies, "ids": ids}  # fmt: skip


def _emit_process(url: str, sizes: dict[str, Any], runner: int, barrier: Any, results: Any) -> None:
    try:
        results.put((runner, emit_runner(url, sizes, runner, barrier)))
    except BaseException as exc:
        results.put((runner, f"{type(exc).__name__}: {exc}"))


def measure_emit(url: str, work: Sizes, shared: bool) -> dict[str, Any]:
    sizes = asdict(work)
    if shared:
        barrier: Any = threading.Barrier(work.runners, timeout=600)
        outcomes = _in_threads(emit_runner, lambda n: (url, sizes, n, barrier), work.runners)
    else:
        barrier = multiprocessing.get_context("spawn").Barrier(work.runners, timeout=600)
        outcomes = spawn(_emit_process, lambda n: (url, sizes, n, barrier), work.runners)
    count, began, ended, latencies = _combine(outcomes)
    ids = [i for o in outcomes for i in o["ids"]]
    seen_at, at_once = _wait_visible(url, ids, count, names=[SPAN_NAME])
    note = "" if at_once else "stored after the contexts exited"
    return _figure(count, began, ended if at_once else seen_at, latencies, note)


# ---------------------------------------------------------------------- phase: proxy
def _serve_upstream(ports: Any) -> None:
    server = scripted_llm_class()("The answer is 4. " * 3).start()
    ports.put(server.url)
    threading.Event().wait()


def measure_proxy(url: str, work: Sizes, shared: bool) -> dict[str, Any]:
    import contextlib

    import agent_lightning as agl
    import httpx
    from agent_lightning.store import open_store

    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    upstream_process = context.Process(target=_serve_upstream, args=(ports,), daemon=True)
    upstream_process.start()
    try:
        upstream = ports.get(timeout=120)
        with contextlib.ExitStack() as stack:
            if shared:  # memory://: the proxy must run in this process to share the store
                proxy = proxy_class()(open_store(url), upstream).start()
                stack.callback(proxy.stop)
                proxy_url = proxy.url
            else:
                proxy_url = stack.enter_context(serve_proxy(upstream, url))

            async def register() -> None:
                store = open_store(url)
                await store.add_resources({"policy": agl.LLM(endpoint=proxy_url, model="scripted")})
                if not shared:
                    await store.close()

            _run(register())
            threads = work.concurrency
            barrier = threading.Barrier(threads + 1, timeout=600)
            calls_done = threading.Barrier(threads + 1, timeout=600)

            def client(n: int) -> dict[str, Any]:
                calls = work.calls // threads + (1 if n < work.calls % threads else 0)
                latencies: list[float] = []
                with agl.TrainingContext(task_id="bench-proxy", store=url, instrument=False) as ctx:
                    endpoint = ctx.llm().endpoint
                    with httpx.Client(timeout=120) as http:
                        http.post(f"{endpoint}/chat/completions", json=REQUEST).raise_for_status()  # warm-up
                        barrier.wait()
                        for _ in range(calls):
                            sent = time.monotonic()
                            http.post(f"{endpoint}/chat/completions", json=REQUEST).raise_for_status()
                            latencies.append(time.monotonic() - sent)
                        answered = time.monotonic()
                    calls_done.wait()
                return {"count": calls, "latencies": latencies, "id": ctx.rollout_id, "answered": answered}

            results: list[Any] = [None] * threads
            failures: list[str] = []

            def run(n: int) -> None:
                try:
                    results[n] = client(n)
                except BaseException as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    barrier.abort()
                    calls_done.abort()

            workers = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(threads)]
            for worker in workers:
                worker.start()
            try:
                barrier.wait()
                began = time.monotonic()
                calls_done.wait()
            except threading.BrokenBarrierError:
                for worker in workers:
                    worker.join(timeout=30)
                raise RuntimeError("; ".join(failures) or "a client failed") from None
            for worker in workers:
                worker.join(timeout=VISIBLE_TIMEOUT)
            if failures:
                raise RuntimeError("; ".join(failures))
            ids = [r["id"] for r in results]
            seen_at, _ = _wait_visible(url, ids, work.calls + threads, kinds=["llm"])  # + one warm-up call each
            latencies = [x for r in results for x in r["latencies"]]
            lag = seen_at - max(r["answered"] for r in results)
            note = f"all stored {lag * 1000:.0f} ms after the last answer"
            return _figure(work.calls, began, seen_at, latencies, note)
    finally:
        upstream_process.kill()


# ---------------------------------------------------------------------- phase: add_spans
async def add_spans_runner(store: Any, work: Sizes, runner: int, wait: Any) -> dict[str, Any]:
    from agent_lightning.types import RolloutConfig, RolloutRequest

    remaining = work.share(work.batched_spans, runner)
    batches: list[list[Any]] = []
    while remaining > 0:
        count = min(work.spans_per_context, remaining)
        started = await store.start_rollout(RolloutRequest(config=RolloutConfig(lease_seconds=3600)), f"r{runner}")
        trace = os.urandom(16).hex()
        spans = [_span(started.rollout_id, started.attempt_id, i + 1, trace) for i in range(count)]
        batches += [spans[i : i + work.batch_size] for i in range(0, count, work.batch_size)]
        remaining -= count
    latencies: list[float] = []
    began = await wait()
    for batch in batches:
        sent = time.monotonic()
        await store.add_spans(batch)
        latencies.append(time.monotonic() - sent)
    return {"count": work.share(work.batched_spans, runner), "began": began, "ended": time.monotonic(),
            "latencies": latencies}  # fmt: skip


# ---------------------------------------------------------------------- phase: claim
async def claim_runner(store: Any, work: Sizes, runner: int, wait: Any) -> dict[str, Any]:
    worker = f"runner-{runner}-{os.getpid()}"
    latencies: list[float] = []
    began = await wait()
    while True:
        sent = time.monotonic()
        item = await store.claim_rollout(worker, task_types=["bench"])
        if item is None:
            break
        await store.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")
        latencies.append(time.monotonic() - sent)
    return {"count": len(latencies), "began": began, "ended": time.monotonic(), "latencies": latencies}


async def _enqueue(store: Any, work: Sizes) -> dict[str, Any]:
    from agent_lightning.types import RolloutConfig, RolloutRequest

    config = RolloutConfig(lease_seconds=3600)
    requests = [RolloutRequest(input={"task": i}, task_type="bench", config=config) for i in range(work.tasks)]
    latencies: list[float] = []
    began = time.monotonic()
    for start in range(0, len(requests), work.batch_size):
        sent = time.monotonic()
        await store.enqueue_rollouts(requests[start : start + work.batch_size])
        latencies.append(time.monotonic() - sent)
    return _figure(work.tasks, began, time.monotonic(), latencies)


RUNNERS = {"add_spans": add_spans_runner, "claim": claim_runner}


def _async_process(phase: str, url: str, sizes: dict[str, Any], runner: int, barrier: Any, results: Any) -> None:
    from agent_lightning.store import open_store

    async def main() -> dict[str, Any]:
        store = open_store(url)
        try:
            await store.query_rollouts(limit=1)  # connect before timing

            async def wait() -> float:
                await asyncio.to_thread(barrier.wait)
                return time.monotonic()

            outcome: dict[str, Any] = await RUNNERS[phase](store, Sizes(**sizes), runner, wait)
            return outcome
        finally:
            await store.close()

    try:
        results.put((runner, _run(main())))
    except BaseException as exc:
        results.put((runner, f"{type(exc).__name__}: {exc}"))


def measure_async(phase: str, url: str, work: Sizes, shared: bool) -> dict[str, Any]:
    """``add_spans`` or ``claim`` with ``work.runners`` runners (asyncio tasks sharing one store for memory)."""
    if shared:

        async def main() -> list[dict[str, Any]]:
            from agent_lightning.store import open_store

            store = open_store(url)
            barrier = asyncio.Barrier(work.runners)

            async def wait() -> float:
                await barrier.wait()
                return time.monotonic()

            return list(await asyncio.gather(*(RUNNERS[phase](store, work, n, wait) for n in range(work.runners))))

        outcomes = _run(main())
    else:
        barrier = multiprocessing.get_context("spawn").Barrier(work.runners, timeout=600)
        sizes = asdict(work)
        outcomes = spawn(_async_process, lambda n: (phase, url, sizes, n, barrier), work.runners)
    return _figure(*_combine(outcomes))


# ---------------------------------------------------------------------- one measurement
def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One phase on one fresh backend (run in a worker subprocess)."""
    from agent_lightning.store import open_store

    work = Sizes(**spec["sizes"])
    phase, name = spec["phase"], spec["backend"]
    with backend(name) as url:
        shared = name == "memory"
        if phase == "emit":
            return measure_emit(url, work, shared)
        if phase == "proxy":
            return measure_proxy(url, work, shared)
        if phase == "add_spans":
            return measure_async(phase, url, work, shared)

        async def queue() -> dict[str, Any]:
            own = open_store(url)
            try:
                return await _enqueue(own, work)
            finally:
                if not shared:
                    await own.close()

        enqueued = _run(queue())
        if phase == "enqueue":
            return enqueued
        return measure_async("claim", url, work, shared)


# ---------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="memory,sqlite,postgres,redis,http", help="comma-separated")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated, of: " + ", ".join(PHASES))
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about a minute for all backends)")
    parser.add_argument("--runners", type=int, help=f"runner processes (default {Sizes.runners})")
    parser.add_argument("--spans", type=int, help=f"spans emitted with agl.span (default {Sizes.spans})")
    parser.add_argument("--batched-spans", type=int, help=f"spans sent by add_spans (default {Sizes.batched_spans})")
    parser.add_argument(
        "--spans-per-context", type=int, help=f"spans per context and per rollout (default {Sizes.spans_per_context})"
    )
    parser.add_argument("--batch-size", type=int, help=f"add_spans and enqueue batches (default {Sizes.batch_size})")
    parser.add_argument("--calls", type=int, help=f"chat calls through the proxy (default {Sizes.calls})")
    parser.add_argument("--concurrency", type=int, help=f"concurrent proxy clients (default {Sizes.concurrency})")
    parser.add_argument("--tasks", type=int, help=f"rollouts enqueued and claimed (default {Sizes.tasks})")
    args = parse_matrix_args(parser, measure, "phase")
    if args is None:
        return

    sizes = QUICK if args.quick else Sizes()
    overrides = {k: getattr(args, k) for k in asdict(sizes) if getattr(args, k) is not None}
    work = Sizes(**{**asdict(sizes), **overrides})
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {sorted(unknown)}")
    pythons = [sys.executable] + ([args.compare] if args.compare else [])
    specs = [{"backend": b, "phase": p, "sizes": asdict(work)} for b in backends for p in phases]
    print(f"machine: {machine_line()}", file=sys.stderr)
    began = time.monotonic()
    results = run_matrix(
        os.path.abspath(__file__), specs, pythons, args.rounds, args.timeout, lambda s: f"{s['backend']} {s['phase']}"
    )
    print(
        f"\n{work.runners} runners; emit: {work.spans} spans; add_spans: {work.batched_spans} spans in batches of "
        f"{work.batch_size}; {work.spans_per_context} spans per context; "
        f"proxy: {work.calls} calls, {work.concurrency} clients; "
        f"{work.tasks} tasks; {args.rounds} round(s); {time.monotonic() - began:.0f} s; {machine_line()}"
    )
    if args.compare:
        print(f"new: {pythons[0]}\nold: {pythons[1]}\n")
        print("| backend | phase | unit | new | old | new/old | p50 ms new | p50 ms old | note |")
        print("|---|---|---|---:|---:|---:|---:|---:|---|")
    else:
        print("\n| backend | phase | unit | rate | p50 ms | p50 of | note |")
        print("|---|---|---|---:|---:|---|---|")
    for index, spec in enumerate(specs):
        new = results[pythons[0]][index]
        phase = spec["phase"]
        rate, p50 = median_of(new, "rate"), median_of(new, "p50_ms")
        if args.compare:
            old = results[pythons[1]][index]
            old_rate, old_p50 = median_of(old, "rate"), median_of(old, "p50_ms")
            note = "; ".join(n for n in (note_of(new), note_of(old) and f"old: {note_of(old)}") if n)
            print(
                f"| {spec['backend']} | {phase} | {UNITS[phase]} | {fmt_rate(rate)} | {fmt_rate(old_rate)} "
                f"| {ratio(rate, old_rate)} | {fmt_ms(p50)} | {fmt_ms(old_p50)} | {note} |"
            )
        else:
            print(
                f"| {spec['backend']} | {phase} | {UNITS[phase]} | {fmt_rate(rate)} | {fmt_ms(p50)} "
                f"| {P50[phase]} | {note_of(new)} |"
            )


if __name__ == "__main__":
    main()
