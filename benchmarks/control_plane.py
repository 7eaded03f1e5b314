"""The control plane at scale: claims+completes per second as concurrent runners are added.

    python benchmarks/control_plane.py [--backends postgres,redis,http-sqlite,http-postgres]
        [--runners 1,4,16,64] [--batch 1,16] [--processes 4] [--tasks 2000] [--quick]
        [--compare OTHER_PYTHON [--rounds 1]]

For each backend, batch size B and runner count R, on a fresh, empty store: ``--tasks`` rollouts are
queued with ``enqueue_rollouts`` (not timed), then R runners, asyncio tasks spread over
``min(R, --processes)`` processes (the runners of one process share one store object, as the
runners of one ``agl runner`` process do), loop until the queue is empty: with B = 1,
``claim_rollout`` then ``complete_attempt``; with B > 1, ``claim_rollouts(worker, B)`` then one
``complete_attempts`` of what it claimed. The rate is the number of rollouts claimed and completed
over the wall time from the moment all processes are released (a barrier) until the last runner
found the queue empty. p50/p99 are per call, as the runner sees it (a batch call counts once; the
final, empty claim is not counted). ``--batch`` above 1 needs the batch calls in ``--compare``'s
interpreter too.

Backends: ``postgres``, ``redis``, ``sqlite``, ``http-sqlite`` and ``http-postgres`` (``agl store
serve`` in its own process over a fresh SQLite file or PostgreSQL schema), ``memory`` (one process
only). Every measurement runs in its own worker subprocess. ``--compare PYTHON`` runs each one
under this interpreter ("new") and under PYTHON ("old") back to back, alternating which goes first,
and prints both with the ratio new/old.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
from typing import Any

from _harness import (
    backend,
    fmt_ms,
    fmt_rate,
    machine_line,
    median_of,
    note_of,
    parse_matrix_args,
    ratio,
    run_matrix,
    spawn,
)

TASK_TYPE = "bench-claim"


def _pct_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _runner(store: Any, name: str, batch: int) -> tuple[list[float], list[float], int]:
    """Claim and complete until the queue is empty; returns the claim and completion latencies and the count."""
    from agent_lightning.types import AttemptCompletion

    claims: list[float] = []
    completes: list[float] = []
    done = 0
    while True:
        sent = time.monotonic()
        if batch == 1:
            item = await store.claim_rollout(name, task_types=[TASK_TYPE])
            items = [] if item is None else [item]
        else:
            items = await store.claim_rollouts(name, batch, task_types=[TASK_TYPE])
        if not items:
            return claims, completes, done
        claimed = time.monotonic()
        claims.append(claimed - sent)
        if batch == 1:
            await store.complete_attempt(items[0].rollout_id, items[0].attempt_id, "succeeded")
        else:
            await store.complete_attempts(
                [AttemptCompletion(rollout_id=i.rollout_id, attempt_id=i.attempt_id, status="succeeded") for i in items]
            )
        completes.append(time.monotonic() - claimed)
        done += len(items)


async def _process_runners(
    url: str, runners: int, batch: int, index: int, wait: Any, store: Any = None
) -> dict[str, Any]:
    from agent_lightning.store import open_store

    own = store is None
    store = store or open_store(url)
    try:
        await store.query_rollouts(limit=1)  # connect before timing
        began = await wait()
        outcomes = await asyncio.gather(
            *(_runner(store, f"p{index}-r{n}-{os.getpid()}", batch) for n in range(runners))
        )
        ended = time.monotonic()
    finally:
        if own:
            await store.close()
    claims = [x for c, _, _ in outcomes for x in c]
    completes = [x for _, c, _ in outcomes for x in c]
    done = sum(n for _, _, n in outcomes)
    return {"began": began, "ended": ended, "claims": claims, "completes": completes, "done": done}


def _process(url: str, runners: int, batch: int, index: int, barrier: Any, results: Any) -> None:
    async def wait() -> float:
        await asyncio.to_thread(barrier.wait)
        return time.monotonic()

    try:
        results.put((index, asyncio.run(_process_runners(url, runners, batch, index, wait))))
    except BaseException as exc:
        results.put((index, f"{type(exc).__name__}: {exc}"))


async def _enqueue(url: str, tasks: int, store: Any = None) -> None:
    from agent_lightning.store import open_store
    from agent_lightning.types import RolloutConfig, RolloutRequest

    own = store is None
    store = store or open_store(url)
    config = RolloutConfig(lease_seconds=3600)
    try:
        for start in range(0, tasks, 100):
            count = min(100, tasks - start)
            await store.enqueue_rollouts(
                [RolloutRequest(input={"task": start + i}, task_type=TASK_TYPE, config=config) for i in range(count)]
            )
    finally:
        if own:
            await store.close()


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One backend at one runner count (run in a worker subprocess)."""
    runners, tasks, batch = spec["runners"], spec["tasks"], spec.get("batch", 1)
    with backend(spec["backend"]) as url:
        if spec["backend"] == "memory":

            async def in_process() -> list[dict[str, Any]]:
                from agent_lightning.store import open_store

                store = open_store(url)
                await _enqueue(url, tasks, store)

                async def wait() -> float:
                    return time.monotonic()

                return [await _process_runners(url, runners, batch, 0, wait, store)]

            outcomes = asyncio.run(in_process())
        else:
            asyncio.run(_enqueue(url, tasks))
            processes = max(1, min(runners, spec["processes"]))
            shares = [runners // processes + (1 if n < runners % processes else 0) for n in range(processes)]
            barrier = multiprocessing.get_context("spawn").Barrier(processes, timeout=600)
            outcomes = spawn(_process, lambda n: (url, shares[n], batch, n, barrier), processes)
    claims = [x for o in outcomes for x in o["claims"]]
    completes = [x for o in outcomes for x in o["completes"]]
    done = sum(o["done"] for o in outcomes)
    wall = max(o["ended"] for o in outcomes) - min(o["began"] for o in outcomes)
    note = "" if done == tasks else f"{done} of {tasks} claimed"
    return {
        "rate": done / wall if wall > 0 else None,
        "claim_p50_ms": statistics.median(claims) * 1000 if claims else None,
        "claim_p99_ms": _pct_ms(claims, 0.99),
        "complete_p50_ms": statistics.median(completes) * 1000 if completes else None,
        "note": note,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="postgres,redis,http-sqlite,http-postgres", help="comma-separated")
    parser.add_argument("--runners", default="1,4,16,64", help="comma-separated runner counts")
    parser.add_argument(
        "--batch", default="1", help="comma-separated batch sizes: rollouts claimed and completed per call"
    )
    parser.add_argument("--processes", type=int, default=4, help="most processes the runners are spread over")
    parser.add_argument("--tasks", type=int, help="rollouts claimed at each runner count (default 2000, quick 400)")
    parser.add_argument("--quick", action="store_true", help="fewer tasks")
    args = parse_matrix_args(parser, measure, "measurement")
    if args is None:
        return

    tasks = args.tasks or (400 if args.quick else 2000)
    counts = [int(n) for n in args.runners.split(",") if n.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    pythons = [sys.executable] + ([args.compare] if args.compare else [])
    batches = [int(n) for n in args.batch.split(",") if n.strip()]
    specs = [
        {"backend": b, "batch": size, "runners": n, "processes": args.processes, "tasks": tasks}
        for b in backends
        for size in batches
        for n in counts
    ]
    print(f"machine: {machine_line()}", file=sys.stderr)
    began = time.monotonic()
    results = run_matrix(
        os.path.abspath(__file__),
        specs,
        pythons,
        args.rounds,
        args.timeout,
        lambda s: f"{s['backend']} batch {s['batch']} {s['runners']} runners",
    )
    print(
        f"\n{tasks} tasks per measurement, runners over at most {args.processes} processes; {args.rounds} round(s); "
        f"{time.monotonic() - began:.0f} s; {machine_line()}"
    )
    if args.compare:
        print(f"new: {pythons[0]}\nold: {pythons[1]}\n")
        print(
            "| backend | batch | runners | claims+completes/s new | old | new/old | claim p50 ms new | old "
            "| complete p50 ms new | old | note |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    else:
        print(
            "\n| backend | batch | runners | claims+completes/s | claim p50 ms | claim p99 ms "
            "| complete p50 ms | note |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---|")
    for index, spec in enumerate(specs):
        new = results[pythons[0]][index]
        rate = median_of(new, "rate")
        head = f"| {spec['backend']} | {spec['batch']} | {spec['runners']} | {fmt_rate(rate)}"
        if args.compare:
            old = results[pythons[1]][index]
            old_rate = median_of(old, "rate")
            note = "; ".join(n for n in (note_of(new), note_of(old) and f"old: {note_of(old)}") if n)
            print(
                f"{head} | {fmt_rate(old_rate)} | {ratio(rate, old_rate)} "
                f"| {fmt_ms(median_of(new, 'claim_p50_ms'))} | {fmt_ms(median_of(old, 'claim_p50_ms'))} "
                f"| {fmt_ms(median_of(new, 'complete_p50_ms'))} | {fmt_ms(median_of(old, 'complete_p50_ms'))} "
                f"| {note} |"
            )
        else:
            print(
                f"{head} | {fmt_ms(median_of(new, 'claim_p50_ms'))} | {fmt_ms(median_of(new, 'claim_p99_ms'))} "
                f"| {fmt_ms(median_of(new, 'complete_p50_ms'))} | {note_of(new)} |"
            )
    print("\nScaling (rate at each runner count / rate at the smallest):")
    new_results = results[pythons[0]]
    for name in backends:
        for size in batches:
            rows = [
                (s["runners"], median_of(new_results[i], "rate"))
                for i, s in enumerate(specs)
                if s["backend"] == name and s["batch"] == size
            ]
            base = rows[0][1] if rows else None
            cells = ", ".join(f"{n}: {ratio(r, base)}x" for n, r in rows)
            best = max((r for _, r in rows if r is not None), default=None)
            print(f"  {name} batch {size}: {cells}; peak {fmt_rate(best)}/s")


if __name__ == "__main__":
    main()
