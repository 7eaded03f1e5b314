"""Server time of the dashboard's pages with 100,000 rollouts in a SQLite store.

    python benchmarks/dashboard_pages.py [--rollouts 100000] [--finished-blocks 3] [--repeat 15] [--db PATH]

Fills a SQLite store (reused when ``--db`` names one that is already filled): rollouts enqueued in blocks of
1,000; the first, middle and last blocks are claimed by workers, given the spans of a calculator-agent
attempt (root, step, two LLM calls with token ids, a tool call, a reward) and completed; the rest stay
queued; two subscription groups hold the finished ones. Then serves ``agl dashboard``'s app with uvicorn and
times each page's API call: ``server`` is the handler's own time (every store query included), ``http`` the
round trip through uvicorn. Medians and 90th percentiles over ``--repeat`` calls (the first call of each
page is left out: it fills caches that live as long as the server).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from agent_lightning.store import open_store
from agent_lightning.types import RolloutRequest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "dashboard" / "tests"))
from dashboard_demo_run import Vocab, agent_spans

BLOCK = 1000


async def fill(url: str, rollouts: int, finished_blocks: int) -> dict[str, str]:
    store = open_store(url)
    known: dict[str, str] = {}
    vocab = Vocab()
    try:
        existing = await store.query_rollouts(limit=1, offset=rollouts - 1)
        if existing:
            print(f"reusing the {rollouts:,} rollouts already in {url}", flush=True)
            known["finished"] = (await store.query_rollouts(status=["succeeded"], limit=1))[0].rollout_id
            return known
        snapshot = await store.add_resources({})
        blocks = rollouts // BLOCK
        finish = {0, blocks // 2, blocks - 1} if finished_blocks >= 3 else set(range(finished_blocks))
        started = time.perf_counter()
        for block in range(blocks):
            done = block in finish
            task_type = "calc" if done else "bulk"
            requests = [
                RolloutRequest(
                    input={"question": f"What is {block} * {i // 4}?", "answer": block * (i // 4)},  # groups of 4
                    task_type=task_type,
                    resources_id=snapshot.resources_id,
                    mode="val" if i % 10 == 0 else "train",
                )
                for i in range(BLOCK)
            ]
            enqueued = await store.enqueue_rollouts(requests)
            if done:
                for n, rollout in enumerate(enqueued):
                    claimed = await store.claim_rollout(f"runner-{n % 4}", task_types=["calc"])
                    assert claimed is not None and claimed.rollout_id == rollout.rollout_id
                    a, b = block, n // 4
                    spans, _, _ = agent_spans(
                        vocab, rollout.rollout_id, claimed.attempt_id, a, b, a * b if n % 3 else a * b + 1,
                        snapshot.resources_id, time.time(),
                    )  # fmt: skip
                    await store.add_spans(spans)
                    await store.complete_attempt(rollout.rollout_id, claimed.attempt_id, "succeeded")
                known["finished"] = enqueued[0].rollout_id
            if block % 10 == 9:
                print(f"  {BLOCK * (block + 1):,} rollouts ({time.perf_counter() - started:.0f} s)", flush=True)
        # subscription groups with a backlog: a learner that has taken 100 and a group that replays everything
        await store.subscribe("trainer", task_types=["calc"], from_beginning=True)
        await store.pull_completed("trainer", max_count=100, visibility_timeout=3600)
        await store.subscribe("archive", from_beginning=True)
        return known
    finally:
        await store.close()


class Server:
    def __init__(self, app: object) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=100_000)
    parser.add_argument("--finished-blocks", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--db", help="the SQLite file (default: a temporary one)")
    parser.add_argument(
        "--count-ttl",
        type=float,
        default=0.0,
        help="seconds counts are cached (the app's default is 2; 0: every call counts)",
    )
    args = parser.parse_args()
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp()) / "store.db"
    url = f"sqlite:///{db}"
    started = time.perf_counter()
    known = asyncio.run(fill(url, args.rollouts, args.finished_blocks))
    print(f"store ready in {time.perf_counter() - started:.0f} s: {db} ({os.path.getsize(db) / 1e6:.0f} MB)")

    from agent_lightning_dashboard import create_app, queries

    queries.COUNT_TTL = args.count_ttl

    app = create_app(open_store(url), close_store=True)
    total = args.rollouts
    pages = [
        ("rollouts, newest page (50)", "/api/rollouts", {}),
        ("rollouts, page 1000 of 2000", "/api/rollouts", {"page": total // 100}),
        ("rollouts, oldest page", "/api/rollouts", {"page": total // 50 - 1}),
        ("rollouts, status=succeeded", "/api/rollouts", {"status": "succeeded"}),
        ("rollouts, status=succeeded, last page", "/api/rollouts", {"status": "succeeded", "page": 59}),
        ("rollouts, task type calc, mode val", "/api/rollouts", {"task_type": "calc", "mode": "val"}),
        ("rollouts, status=queuing, 200 per page", "/api/rollouts", {"status": "queuing", "size": 200}),
        ("a rollout's trace", f"/api/rollouts/{known['finished']}", {}),
        ("a rollout's training view", f"/api/rollouts/{known['finished']}/training", {}),
        ("queues per task type", "/api/queues", {}),
    ]
    rows = []
    with Server(app) as base, httpx.Client(base_url=base, timeout=120) as client:
        for label, path, params in pages:
            first = client.get(path, params=params)
            first.raise_for_status()
            server, http = [], []
            for _ in range(args.repeat):
                t = time.perf_counter()
                response = client.get(path, params=params)
                http.append((time.perf_counter() - t) * 1000)
                response.raise_for_status()
                server.append(response.json()["server_ms"])
            rows.append((label, first.json()["server_ms"], server, http))
            print(f"  {label}: {statistics.median(server):.1f} ms", flush=True)

    def p90(values: list[float]) -> float:
        return sorted(values)[max(0, round(0.9 * len(values)) - 1)]

    print(
        f"\n{total:,} rollouts in SQLite; {args.repeat} calls per page after a first one; counts cached "
        f"{args.count_ttl:g} s\n"
    )
    print("| page | first call ms | server ms median | server ms p90 | http ms median |")
    print("|---|---:|---:|---:|---:|")
    for label, first_ms, server, http in rows:
        print(
            f"| {label} | {first_ms:.1f} | {statistics.median(server):.1f} | {p90(server):.1f} | "
            f"{statistics.median(http):.1f} |"
        )


if __name__ == "__main__":
    main()
