"""Shared plumbing of the store benchmarks: fresh backends, worker subprocesses, side-by-side comparison.

Each measurement runs in a worker subprocess (``SCRIPT --worker SPEC``) of the interpreter being
measured, against a fresh, empty backend that the worker sets up and removes itself. The driver
runs the workers one after the other and, with ``--compare PYTHON``, runs every measurement under
both interpreters back to back (alternating which goes first) so that both share the machine's
noise. Only the product API is used (``agl.TrainingContext``, ``agl.span``, ``open_store`` and the
store contract, the ``agl store serve`` and ``agl proxy`` commands); the modules that moved between
packages are imported through :func:`proxy_class` and :func:`scripted_llm_class`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

RESULT = "RESULT "
POSTGRES_URL = os.environ.get("AGL_BENCH_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AGL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


class Skip(Exception):
    """A backend that cannot be measured here (not installed, server not running)."""


# ---------------------------------------------------------------------- moved modules
def proxy_class() -> Any:
    """``LLMProxy``, from its own package or from core (older layout)."""
    try:
        from agent_lightning_proxy import LLMProxy
    except ImportError:
        from agent_lightning.proxy import LLMProxy
    return LLMProxy


def scripted_llm_class() -> Any:
    """``ScriptedLLM``, from the test kit or from core (older layout)."""
    try:
        from agent_lightning_testkit.scripted_llm import ScriptedLLM
    except ImportError:
        from agent_lightning.testing.scripted_llm import ScriptedLLM
    return ScriptedLLM


# ---------------------------------------------------------------------- backends
def _installed(scheme: str) -> None:
    from agent_lightning.store import store_schemes

    if scheme not in store_schemes():
        raise Skip(f"no installed backend handles {scheme}://")


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _reachable(url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not _port_open(parts.hostname or "127.0.0.1", parts.port or 0):
        raise Skip(f"server not reachable at {url}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def agl_command() -> str:
    """The ``agl`` script of the interpreter running this code."""
    own = os.path.join(os.path.dirname(sys.executable), "agl")
    return own if os.path.exists(own) else (shutil.which("agl") or "agl")


def _with_query(url: str, key: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{key}={value}"


@contextlib.contextmanager
def backend(name: str) -> Iterator[str]:
    """The URL of a fresh, empty store of backend ``name``; removed afterwards.

    Names: ``memory`` (a named in-process store: only one process can use it), ``sqlite``,
    ``postgres``, ``redis``, ``http`` / ``http-sqlite`` (``agl store serve`` over a fresh SQLite
    file) and ``http-postgres`` (``agl store serve`` over a fresh PostgreSQL schema).
    """
    tag = uuid.uuid4().hex[:10]
    if name == "memory":
        yield f"memory://bench-{tag}"
    elif name == "sqlite":
        _installed("sqlite")
        folder = tempfile.mkdtemp(prefix="agl-bench-")
        try:
            yield f"sqlite:///{folder}/bench.db"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    elif name == "postgres":
        _installed("postgresql")
        _reachable(POSTGRES_URL)
        schema = f"aglbench_{tag}"
        try:
            yield _with_query(POSTGRES_URL, "schema", schema)
        finally:
            _drop_postgres_schema(schema)
    elif name == "redis":
        _installed("redis")
        _reachable(REDIS_URL)
        url = _with_query(REDIS_URL, "prefix", f"aglbench:{tag}:")
        try:
            yield url
        finally:
            _purge_redis(f"aglbench:{tag}:")
    elif name in ("http", "http-sqlite", "http-postgres"):
        _installed("http")
        inner = "postgres" if name == "http-postgres" else "sqlite"
        with backend(inner) as store_url, serve_store(store_url) as url:
            yield url
    else:
        raise Skip(f"unknown backend {name!r}")


def _drop_postgres_schema(schema: str) -> None:
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _purge_redis(prefix: str) -> None:
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        client.close()


@contextlib.contextmanager
def serve_store(store_url: str) -> Iterator[str]:
    """``agl store serve`` over ``store_url`` in a subprocess; yields its ``http://`` URL."""
    port = free_port()
    command = [agl_command(), "store", "serve", "--store", store_url, "--host", "127.0.0.1", "--port", str(port)]
    with tempfile.TemporaryFile(mode="w+") as log:
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True)
        try:
            deadline = time.monotonic() + 60
            while not _port_open("127.0.0.1", port):
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise Skip(f"`agl store serve` did not start: {log.read()[-300:]}")
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(server)


@contextlib.contextmanager
def serve_proxy(upstream: str, store_url: str) -> Iterator[str]:
    """``agl proxy`` in a subprocess, recording into ``store_url``; yields the proxy's URL."""
    command = [agl_command(), "proxy", "--upstream", upstream, "--store", store_url, "--port", "0"]
    with tempfile.TemporaryFile(mode="w+") as log:
        proxy = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            assert proxy.stdout is not None
            line = proxy.stdout.readline()
            try:
                url = str(json.loads(line)["url"])
            except (ValueError, KeyError):
                log.seek(0)
                raise RuntimeError(f"`agl proxy` did not start: {line!r} {log.read()[-300:]}") from None
            yield url
        finally:
            stop(proxy)


def spawn(target: Any, args_of: Any, count: int) -> list[Any]:
    """Run ``target(*args_of(n), results)`` in ``count`` spawned processes; returns their results in order.

    Each process puts ``(n, result)`` on ``results``, a string result being its error.
    """
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=target, args=(*args_of(n), results), daemon=True) for n in range(count)]
    for process in processes:
        process.start()
    try:
        outcomes = dict(results.get(timeout=600) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    errors = [value for value in outcomes.values() if isinstance(value, str)]
    if errors:
        raise RuntimeError("; ".join(errors))
    return [outcomes[n] for n in range(count)]


def stop(process: subprocess.Popen[Any]) -> None:
    process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    if process.poll() is None:
        process.kill()
        process.wait()


# ---------------------------------------------------------------------- figures
def p50_ms(latencies: Sequence[float]) -> float | None:
    return statistics.median(latencies) * 1000 if latencies else None


def fmt_rate(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def fmt_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


# ---------------------------------------------------------------------- workers and the driver
def worker_main(spec_json: str, measure: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Run one measurement (in a worker subprocess) and print its result as one ``RESULT`` line."""
    spec = json.loads(spec_json)
    try:
        result = measure(spec)
    except Skip as skip:
        result = {"skipped": str(skip)}
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    print(RESULT + json.dumps(result), flush=True)


def parse_matrix_args(
    parser: argparse.ArgumentParser, measure: Callable[[dict[str, Any]], dict[str, Any]], what: str
) -> argparse.Namespace | None:
    """Add the options of :func:`run_matrix` (``--compare``, ``--rounds``, ``--timeout``) and parse the command line.

    In a worker process (the hidden ``--worker SPEC``) runs ``measure`` on the spec instead and returns ``None``.
    """
    parser.add_argument("--compare", metavar="PYTHON", help=f"also run every {what} under this interpreter")
    parser.add_argument("--rounds", type=int, default=1, help=f"runs of each {what} per interpreter (median shown)")
    parser.add_argument("--timeout", type=float, default=600, help=f"seconds one {what} may take")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker, measure)
        return None
    return args


def run_worker(python: str, script: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``python script --worker SPEC``; returns the worker's result (or ``{"error": …}``)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)  # each interpreter sees its own checkout only
    try:
        done = subprocess.run(
            [python, script, "--worker", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=tempfile.gettempdir(),
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT):
            return dict(json.loads(line[len(RESULT) :]))
    return {"error": f"worker exited {done.returncode}: {done.stderr.strip()[-400:]}"}


def run_matrix(
    script: str,
    specs: Sequence[dict[str, Any]],
    pythons: Sequence[str],
    rounds: int,
    timeout: float,
    label: Callable[[dict[str, Any]], str],
) -> dict[str, list[list[dict[str, Any]]]]:
    """Run every spec ``rounds`` times under every interpreter, alternating the interpreters' order.

    Returns ``{python: [[result of each round] for each spec]}``.
    """
    out: dict[str, list[list[dict[str, Any]]]] = {python: [[] for _ in specs] for python in pythons}
    turn = 0
    for index, spec in enumerate(specs):
        for _ in range(rounds):
            order = list(pythons) if turn % 2 == 0 else list(reversed(pythons))
            turn += 1
            for python in order:
                tag = "" if len(pythons) == 1 else f" [{'new' if python == pythons[0] else 'old'}]"
                print(f"  {label(spec)}{tag} ...", file=sys.stderr, flush=True)
                began = time.monotonic()
                result = run_worker(python, script, spec, timeout)
                note = result.get("error") or result.get("skipped") or ""
                print(f"    {time.monotonic() - began:.1f} s {note}", file=sys.stderr, flush=True)
                out[python][index].append(result)
    return out


def median_of(results: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(values) if values else None


def note_of(results: Sequence[dict[str, Any]]) -> str:
    for result in results:
        if "skipped" in result:
            return f"skipped: {result['skipped']}"
        if "error" in result:
            return f"failed: {result['error']}"
        if result.get("note"):
            return str(result["note"])
    return ""


def ratio(new: float | None, old: float | None) -> str:
    return "–" if new is None or old is None or old == 0 else f"{new / old:.2f}"


def machine_line() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
