"""Store throughput: one workload against every installed store backend, printed as one table.

    python benchmarks/store_throughput.py [--backends memory,sqlite,postgres,redis,http]
        [--tasks 2000] [--spans 20000] [--spans-per-rollout 50] [--runners 2] [--batch-size 100]
        [--reference [--reference-python /tmp/ref/bin/python]]

Every backend gets the same workload, run by N concurrent runners (separate processes that open the
store URL; for ``memory://``, which cannot be shared between processes, N tasks in one process):

1. enqueue    each runner enqueues tasks/N rollouts, one ``enqueue_rollout`` call each
2. claim      runners claim and complete rollouts (``claim_rollout`` + ``complete_attempt``) until none is left
3. spans      each runner writes spans/N spans into its own rollouts (``--spans-per-rollout`` each),
              one ``add_span`` call per span (``add_spans([span])``: each is stored when it returns)
4. batched    the same with ``add_spans`` batches of ``--batch-size``
5. emitted    what an instrumented agent does: each runner opens one ``agl.TrainingContext`` on the URL and
              emits spans/N spans one by one with ``agl.span``; timed until the context has exited, that is
              until every span is in the store (the tracer batches them in the background)
6. query      each runner reads back every rollout it wrote in step 3 (``query_spans``); spans returned/s

A figure is the total count over every runner divided by the wall time from the moment all
runners are released (a barrier) until the last one finishes; every runner then waits at a second
barrier, so no runner prepares the next phase while another is still timing this one. Backends that are not installed or
whose server is not running are skipped with a note. ``--reference`` also times the reference
implementation (agentlightning 0.3.0's in-memory store and its HTTP server) in the same run, in a
separate virtual environment (created with pip if missing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

PHASES = ("enqueue", "claim", "spans", "batched", "emitted", "query")
ATTRIBUTES = {
    "gen_ai.request.model": "policy",
    "gen_ai.usage.prompt_tokens": 120,
    "gen_ai.usage.completion_tokens": 40,
    "agentlightning.prompt_token_ids": list(range(32)),
    "text": "x" * 200,
}


@dataclass
class Workload:
    tasks: int
    spans: int
    spans_per_rollout: int
    runners: int
    batch_size: int

    def share(self, total: int, runner: int) -> int:
        return total // self.runners + (1 if runner < total % self.runners else 0)


class Skip(Exception):
    """A backend that cannot be measured here (not installed, server not running)."""


# ---------------------------------------------------------------------- one runner
async def _barrier(barrier: Any) -> None:
    if isinstance(barrier, asyncio.Barrier):
        await barrier.wait()
    else:
        await asyncio.to_thread(barrier.wait)


def _spans(rollout_id: str, attempt_id: str, count: int) -> list[Any]:
    from agent_lightning.types import Span, new_span_id, new_trace_id

    trace = new_trace_id()
    now = time.time()
    return [
        Span(
            rollout_id=rollout_id,
            attempt_id=attempt_id,
            sequence_id=i + 1,
            trace_id=trace,
            span_id=new_span_id(),
            name="llm-call",
            kind="llm",
            attributes=ATTRIBUTES,
            start_time=now + i,
            end_time=now + i + 0.5,
        )
        for i in range(count)
    ]


async def _span_work(store: Any, work: Workload, runner: int) -> tuple[list[list[Any]], list[str]]:
    """This runner's spans, grouped by rollout (rollouts are started here, before timing)."""
    from agent_lightning.types import RolloutConfig, RolloutRequest

    remaining = work.share(work.spans, runner)
    groups: list[list[Any]] = []
    ids: list[str] = []
    while remaining > 0:
        count = min(work.spans_per_rollout, remaining)
        started = await store.start_rollout(RolloutRequest(config=RolloutConfig(lease_seconds=3600)), f"r{runner}")
        groups.append(_spans(started.rollout_id, started.attempt_id, count))
        ids.append(started.rollout_id)
        remaining -= count
    return groups, ids


async def run_runner(url: str, work: Workload, runner: int, barrier: Any, store: Any = None) -> dict[str, Any]:
    """Run every phase; returns ``{phase: (count, start, end)}`` with monotonic times."""
    from agent_lightning.store import open_store
    from agent_lightning.types import RolloutConfig

    own = store is None
    store = store or open_store(url)
    out: dict[str, Any] = {}
    worker = f"runner-{runner}-{os.getpid()}"
    config = RolloutConfig(lease_seconds=3600)
    try:
        await _barrier(barrier)
        began = time.monotonic()
        for i in range(work.share(work.tasks, runner)):
            await store.enqueue_rollout({"task": i}, task_type="bench", config=config)
        out["enqueue"] = (work.share(work.tasks, runner), began, time.monotonic())
        await _barrier(barrier)  # every phase ends for all runners before any prepares the next

        await _barrier(barrier)
        began, claimed = time.monotonic(), 0
        while (item := await store.claim_rollout(worker, task_types=["bench"])) is not None:
            await store.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")
            claimed += 1
        out["claim"] = (claimed, began, time.monotonic())
        await _barrier(barrier)

        single, single_ids = await _span_work(store, work, runner)
        await _barrier(barrier)
        began = time.monotonic()
        for group in single:
            for span in group:
                await store.add_span(span)
        out["spans"] = (sum(map(len, single)), began, time.monotonic())
        await _barrier(barrier)

        batched, _ = await _span_work(store, work, runner)
        await _barrier(barrier)
        began = time.monotonic()
        for group in batched:
            for start in range(0, len(group), work.batch_size):
                await store.add_spans(group[start : start + work.batch_size])
        out["batched"] = (sum(map(len, batched)), began, time.monotonic())
        await _barrier(barrier)

        emit_url = f"memory://bench-emit-{os.getpid()}" if url == "memory://" else url
        await asyncio.to_thread(_emit, emit_url, 1)  # a long-lived runner has loaded its adapters already
        await _barrier(barrier)
        began = time.monotonic()
        emitted = await asyncio.to_thread(_emit, emit_url, work.share(work.spans, runner))
        out["emitted"] = (emitted, began, time.monotonic())
        await _barrier(barrier)

        await _barrier(barrier)
        began, read = time.monotonic(), 0
        for rollout_id in single_ids:
            read += len(await store.query_spans(rollout_id))
        out["query"] = (read, began, time.monotonic())
    finally:
        if own:
            await store.close()
    return out


def _emit(url: str, count: int) -> int:
    """Emit ``count`` spans through the instrumentation API; returns once they are all stored."""
    import agent_lightning as agl

    with agl.TrainingContext(task_id="bench-emit", store=url):
        for _ in range(count):
            with agl.span("llm-call", **ATTRIBUTES):
                pass
    return count


def _runner_process(url: str, work: Workload, runner: int, barrier: Any, results: Any) -> None:
    try:
        results.put((runner, asyncio.run(run_runner(url, work, runner, barrier)), None))
    except BaseException as exc:
        results.put((runner, {}, f"{type(exc).__name__}: {exc}"))


def _combine(outcomes: list[dict[str, Any]]) -> dict[str, float]:
    rates: dict[str, float] = {}
    for phase in PHASES:
        count = sum(o[phase][0] for o in outcomes)
        wall = max(o[phase][2] for o in outcomes) - min(o[phase][1] for o in outcomes)
        rates[phase] = count / wall if wall > 0 else float("inf")
    return rates


def measure(url: str, work: Workload, in_process: bool) -> dict[str, float]:
    """Run the workload with ``work.runners`` runners against ``url``; returns rates per phase."""
    if in_process:  # memory://: the runners share one store object in one process

        async def main() -> list[dict[str, Any]]:
            from agent_lightning.store import open_store

            store = open_store(url)
            barrier = asyncio.Barrier(work.runners)
            return list(await asyncio.gather(*(run_runner(url, work, n, barrier, store) for n in range(work.runners))))

        return _combine(asyncio.run(main()))
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(work.runners, timeout=600)
    results = context.Queue()
    processes = [
        context.Process(target=_runner_process, args=(url, work, n, barrier, results), daemon=True)
        for n in range(work.runners)
    ]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=900) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    errors = [error for _, _, error in outcomes if error]
    if errors:
        raise RuntimeError("; ".join(errors))
    return _combine([result for _, result, _ in outcomes])


# ---------------------------------------------------------------------- backends
def _installed(scheme: str) -> None:
    from agent_lightning.store import store_schemes

    if scheme not in store_schemes():
        raise Skip(f"no installed backend handles {scheme}:// (pip install -e backends/...)")


def _reachable(url: str) -> None:
    from agent_lightning_testkit.services import is_reachable

    if not is_reachable(url):
        raise Skip(f"server not reachable at {url}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def backend_url(name: str) -> Iterator[tuple[str, bool]]:
    """The URL of a fresh, empty store of backend ``name`` (and whether runners must share a process)."""
    tag = uuid.uuid4().hex[:10]
    if name == "memory":
        yield "memory://", True
    elif name == "sqlite":
        _installed("sqlite")
        folder = tempfile.mkdtemp(prefix="agl-bench-")
        try:
            yield f"sqlite:///{folder}/bench.db", False
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    elif name == "postgres":
        _installed("postgresql")
        base = os.environ.get("AGL_BENCH_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
        _reachable(base)
        schema = f"aglbench_{tag}"
        try:
            yield f"{base}{'&' if '?' in base else '?'}schema={schema}", False
        finally:
            _drop_postgres_schema(base, schema)
    elif name == "redis":
        _installed("redis")
        base = os.environ.get("AGL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
        _reachable(base)
        url = f"{base}{'&' if '?' in base else '?'}prefix=aglbench:{tag}:"
        try:
            yield url, False
        finally:
            _purge(url)
    elif name == "http":
        yield from _http_server()
    else:
        raise Skip(f"unknown backend {name!r}")


def _drop_postgres_schema(base: str, schema: str) -> None:
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _purge(url: str) -> None:
    from agent_lightning.store import open_store

    async def main() -> None:
        store = open_store(url)
        await store.purge()
        await store.close()

    asyncio.run(main())


HTTP_SERVE = "agl store serve --store memory:// --host 127.0.0.1 --port {port}"


def _http_server() -> Iterator[tuple[str, bool]]:
    """The HTTP store server (``HTTP_SERVE``, ``--http-serve``) in a subprocess, if this checkout has a client."""
    from agent_lightning.errors import PluginError
    from agent_lightning.store import open_store

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        open_store(url)
    except PluginError as exc:
        raise Skip(f"no http:// store client installed ({str(exc).split(';')[0]})") from None
    except Exception:  # the client exists; nothing listens yet, which is expected here
        pass
    command = shlex.split(HTTP_SERVE.format(port=port))
    if command[0] == "agl":
        command[0] = shutil.which("agl") or os.path.join(os.path.dirname(sys.executable), "agl")
    server = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not _port_open(port):
            if server.poll() is not None or time.monotonic() > deadline:
                raise Skip(f"`agl store serve` did not start: {(server.stderr.read() if server.stderr else '')[-300:]}")
            time.sleep(0.1)
        yield url, False
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=10)
        if server.poll() is None:
            server.kill()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# ---------------------------------------------------------------------- the reference
REFERENCE_PROBE = r"""
import asyncio, json, os, socket, sys, time
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.types import OtelResource, Span, TraceStatus

N, BATCH, HTTP_N = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ATTRIBUTES = json.loads(sys.argv[4])

def spans(rollout_id, attempt_id, count):
    trace, now = os.urandom(16).hex(), time.time()
    return [Span(rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=i + 1, trace_id=trace,
                 span_id=os.urandom(8).hex(), parent_id=None, name="llm-call", status=TraceStatus(status_code="OK"),
                 attributes=ATTRIBUTES, events=[], links=[], start_time=now + i, end_time=now + i + 0.5,
                 context=None, parent=None, resource=OtelResource(attributes={}, schema_url=""))
            for i in range(count)]

async def single(store, count):
    started = await store.start_rollout(input={"task": 0})
    todo = spans(started.rollout_id, started.attempt.attempt_id, count)
    began = time.perf_counter()
    for span in todo:
        await store.add_span(span)
    return count / (time.perf_counter() - began)

async def batched(store, count):
    started = await store.start_rollout(input={"task": 0})
    todo = spans(started.rollout_id, started.attempt.attempt_id, count)
    began = time.perf_counter()
    for start in range(0, count, BATCH):
        await store.add_many_spans(todo[start:start + BATCH])
    return count / (time.perf_counter() - began)

async def main():
    out = {"memory_single": await single(InMemoryLightningStore(), N),
           "memory_batched": await batched(InMemoryLightningStore(), N)}
    if HTTP_N:
        try:
            from agentlightning.store.client_server import LightningStoreClient, LightningStoreServer
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0)); port = sock.getsockname()[1]
            server = LightningStoreServer(InMemoryLightningStore(), host="127.0.0.1", port=port)
            await server.start()
            client = LightningStoreClient(f"http://127.0.0.1:{port}")
            out["http_single"] = await single(client, HTTP_N)
            await client.close()
            await server.stop()
        except Exception as exc:
            out["http_error"] = f"{type(exc).__name__}: {exc}"
    print("RESULT " + json.dumps(out))

asyncio.run(main())
"""


def reference(python: str | None, spans: int, batch: int, http_spans: int) -> dict[str, Any]:
    """Time agentlightning 0.3.0 (in-memory store, and its HTTP server) with the same spans."""
    if python is None:
        python = "/tmp/agl-ref/bin/python"
        if not os.path.exists(python):
            subprocess.run([sys.executable, "-m", "venv", "/tmp/agl-ref"], check=True)
            subprocess.run([python, "-m", "pip", "install", "-q", "agentlightning==0.3.0"], check=True)
    done = subprocess.run(
        [python, "-c", REFERENCE_PROBE, str(spans), str(batch), str(http_spans), json.dumps(ATTRIBUTES)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT ") :]))
    raise RuntimeError(f"the reference probe failed: {done.stderr.strip()[-500:]}")


# ---------------------------------------------------------------------- main
def main() -> None:
    global HTTP_SERVE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="memory,sqlite,postgres,redis,http")
    parser.add_argument("--tasks", type=int, default=2000, help="rollouts enqueued and claimed")
    parser.add_argument("--spans", type=int, default=20000, help="spans written in each span phase")
    parser.add_argument("--spans-per-rollout", type=int, default=50)
    parser.add_argument("--runners", type=int, default=2, help="concurrent runner processes")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--reference", action="store_true", help="also time agentlightning 0.3.0")
    parser.add_argument("--reference-python", help="python of a venv with agentlightning==0.3.0")
    parser.add_argument("--reference-http-spans", type=int, default=2000)
    parser.add_argument("--http-serve", default=HTTP_SERVE, help="command that serves memory:// over HTTP on {port}")
    args = parser.parse_args()
    HTTP_SERVE = args.http_serve
    work = Workload(args.tasks, args.spans, args.spans_per_rollout, args.runners, args.batch_size)

    rows: list[tuple[str, dict[str, float] | None, str]] = []
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        try:
            with backend_url(name) as (url, in_process):
                print(f"measuring {name} ...", file=sys.stderr, flush=True)
                rows.append((name, measure(url, work, in_process), "N tasks in one process" if in_process else ""))
        except Skip as skip:
            rows.append((name, None, f"skipped: {skip}"))
        except Exception as exc:
            rows.append((name, None, f"failed: {type(exc).__name__}: {str(exc)[:200]}"))

    ref: dict[str, Any] = {}
    if args.reference:
        print("measuring the reference ...", file=sys.stderr, flush=True)
        try:
            ref = reference(args.reference_python, args.spans, args.batch_size, args.reference_http_spans)
        except Exception as exc:
            ref = {"error": f"{type(exc).__name__}: {exc}"}

    print(
        f"\n{work.tasks} tasks, {work.spans} spans per span phase ({work.spans_per_rollout} per rollout), "
        f"{work.runners} runners, batches of {work.batch_size}; {os.cpu_count()} CPUs\n"
    )
    print(
        f"| backend | tasks enqueued/s | tasks claimed+completed/s | spans written/s (single) "
        f"| spans written/s (batch {work.batch_size}) | spans emitted/s (agl.span) | spans queried/s | note |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, rates, note in rows:
        if rates is None:
            print(f"| {name} | – | – | – | – | – | – | {note} |")
        else:
            cells = " | ".join(f"{rates[p]:,.0f}" for p in PHASES)
            print(f"| {name} | {cells} | {note} |")
    if ref:
        if "error" in ref:
            print(f"\nreference: {ref['error']}")
        else:
            print(
                f"| agentlightning 0.3.0 memory (1 process) | | | {ref['memory_single']:,.0f} "
                f"| {ref['memory_batched']:,.0f} | | | reference |"
            )
            if "http_single" in ref:
                http = f"{ref['http_single']:,.0f}"
                print(f"| agentlightning 0.3.0 HTTP server (1 client) | | | {http} | | | | reference |")
            elif "http_error" in ref:
                print(f"\nreference HTTP server: {ref['http_error']}")
            for phase, label in (("spans", "add_span one by one"), ("emitted", "agl.span one by one")):
                print(f"\nspans/s {label}, ours / reference add_span in memory (and through its HTTP server):")
                for name, rates, _ in rows:
                    if rates is not None:
                        line = f"  {name}: {rates[phase] / ref['memory_single']:.1f}x"
                        if "http_single" in ref:
                            line += f" ({rates[phase] / ref['http_single']:.1f}x)"
                        print(line)


if __name__ == "__main__":
    main()
