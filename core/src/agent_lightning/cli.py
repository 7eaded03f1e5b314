"""The ``agl`` command line. Plugins add sub-commands through ``agl_register_commands``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _plugins(args: argparse.Namespace) -> int:
    from agent_lightning import plugins
    from agent_lightning.algorithms import algorithm_entries
    from agent_lightning.engines import engine_entries
    from agent_lightning.instrumentation.adapter import adapters
    from agent_lightning.store import store_schemes

    infos = plugins.list_plugins()
    rows = [
        {"name": p.name, "package": p.package or "-", "version": p.version or "-", "error": p.error}
        | {"source": "builtin" if p.builtin else "entry point"}
        for p in infos
    ]
    found = {
        "store_schemes": store_schemes(),
        "adapters": sorted(adapters()),
        "algorithms": sorted(algorithm_entries()),
        "engines": sorted(engine_entries()),
    }
    if args.json:
        print(json.dumps({"plugins": rows, **found}, indent=2))
        return 0
    width = max([len(p.name) for p in infos] + [6])
    print(f"{'plugin':<{width}}  {'package':<28} {'version':<10} source")
    for r in rows:
        line = f"{r['name']:<{width}}  {r['package']:<28} {r['version']:<10} {r['source']}"
        print(line + (f"  FAILED: {r['error']}" if r["error"] else ""))
    print()
    print("store schemes:", ", ".join(f"{s}://" for s in found["store_schemes"]) or "none")
    print("adapters:     ", ", ".join(found["adapters"]) or "none")
    print("algorithms:   ", ", ".join(found["algorithms"]) or "none")
    print("engines:      ", ", ".join(found["engines"]) or "none")
    return 0


def _runs(args: argparse.Namespace) -> int:
    from agent_lightning.store import open_store

    async def main() -> int:
        store = open_store(args.store, create=False)
        try:
            rollouts = await store.query_rollouts(
                status=args.status or None, task_types=args.task_type or None, limit=args.limit, offset=args.offset
            )
            rows = []
            for rollout in rollouts:
                spans = await store.query_spans(rollout.rollout_id, "latest")
                rewards = [s.reward for s in spans if s.kind == "reward" and s.reward is not None]
                reward = f"{sum(rewards):.3f}" if rewards else "-"
                rows.append((rollout, len(spans), reward))
        finally:
            await store.close()
        # columns as wide as their longest value: two task types never print alike
        id_width = max([len(r.rollout_id) for r, _, _ in rows] + [len("rollout")])
        type_width = max([len(r.task_type) for r, _, _ in rows] + [len("task type")])
        header = f"{'rollout':<{id_width}} {'task type':<{type_width}} {'mode':<5} {'status':<10}"
        print(f"{header} {'att':>3} {'spans':>5}  reward")
        for rollout, span_count, reward in rows:
            print(
                f"{rollout.rollout_id:<{id_width}} {rollout.task_type:<{type_width}} {rollout.mode:<5} "
                f"{rollout.status:<10} {rollout.attempt_count:>3} {span_count:>5}  {reward}"
            )
        if not rows:
            print("(no rollouts)")
        return 0

    return asyncio.run(main())


def _spans(args: argparse.Namespace) -> int:
    from agent_lightning import semconv
    from agent_lightning.store import open_store

    async def main() -> int:
        store = open_store(args.store, create=False)
        try:
            spans = await store.query_spans(args.rollout_id, None if args.all_attempts else "latest")
        finally:
            await store.close()
        if args.json:
            for span in spans:
                print(span.model_dump_json())
            return 0
        children: dict[str | None, list[Any]] = {}
        ids = {s.span_id for s in spans}
        for span in spans:
            parent = span.parent_id if span.parent_id in ids else None
            children.setdefault(parent, []).append(span)

        def show(span: Any, depth: int) -> None:
            extra = []
            if span.kind == "llm":
                ids_ = span.attributes.get(semconv.COMPLETION_TOKEN_IDS)
                if isinstance(ids_, list):
                    extra.append(f"{len(ids_)} completion tokens")
                elif span.status.code != "error":
                    proxied = span.attributes.get(semconv.RECORDED_BY) == "proxy"
                    extra.append(
                        "NO token ids (" + ("the upstream returned none" if proxied else "not via the proxy") + ")"
                    )
            if span.kind == "tool":
                extra.append(f"args={json.dumps(span.attributes.get(semconv.GEN_AI_TOOL_CALL_ARGUMENTS))[:60]}")
            if span.kind == "reward":
                extra.append(f"reward={span.reward}")
            agent = span.attributes.get(semconv.AGENT_NAME)
            if agent:
                extra.append(f"agent={agent}")
            if span.status.code == "error":
                extra.append(f"ERROR {span.status.message}")
            duration = f"{(span.duration or 0) * 1000:.0f}ms"
            print(f"{'  ' * depth}{span.kind:<7} {span.name} [{duration}] {'; '.join(extra)}")
            for child in children.get(span.span_id, []):
                show(child, depth + 1)

        for root in children.get(None, []):
            show(root, 0)
        if not spans:
            print(f"(no spans for rollout {args.rollout_id})")
        return 0

    return asyncio.run(main())


def _runner(args: argparse.Namespace) -> int:
    from agent_lightning.agent import load_agent
    from agent_lightning.runner import Runner, default_worker_id
    from agent_lightning.store import open_store

    store = open_store(args.store)
    runner = Runner(
        load_agent(args.agent),
        store,
        worker_id=args.worker_id or default_worker_id(),
        task_types=args.task_type or None,
    )
    try:
        done = runner.run(max_rollouts=args.max_rollouts, idle_timeout=args.idle_timeout)
    except KeyboardInterrupt:
        done = runner.completed + runner.failed
    print(f"runner {runner.worker_id}: {done} rollouts ({runner.completed} succeeded, {runner.failed} failed)")
    if runner.claim_error is not None:
        print(f"agl runner: error: the last claim failed: {runner.claim_error}", file=sys.stderr)
        return 1
    return 0


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _train(args: argparse.Namespace) -> int:
    from agent_lightning.algorithms import get_algorithm
    from agent_lightning.trainer import Trainer

    config: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        config[key.strip()] = _parse_value(value)
    if args.model:
        config["model"] = args.model
    if args.engine:
        config["engine"] = args.engine
    algorithm = get_algorithm(args.algorithm, **config)
    trainer = Trainer(
        algorithm,
        store=args.store,
        agent=args.agent,
        train_dataset=args.train,
        val_dataset=args.val,
        n_runners=args.runners,
        num_gpus=args.num_gpus,
        run_dir=args.run_dir,
        task_type=args.task_type,
    )
    checkpoint_dir = args.checkpoint_dir or str(Path(trainer.run_dir) / "checkpoints")
    result = trainer.train(
        num_iterations=args.iterations, eval_interval=args.eval_interval, checkpoint_dir=checkpoint_dir
    )
    print(f"trained {result.iterations} iterations; run folder: {trainer.run_dir}")
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    return 130 if result.interrupted else 0


def build_parser() -> argparse.ArgumentParser:
    """The ``agl`` argument parser: the built-in commands plus those plugins add (``agl_register_commands``)."""
    from agent_lightning import __version__, plugins

    parser = argparse.ArgumentParser(
        prog="agl", description="Agent Lightning: train existing agents from their traces."
    )
    parser.add_argument("--version", action="version", version=f"agent-lightning {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list installed plugins, store backends, adapters and algorithms")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_plugins)

    p = sub.add_parser("runs", help="list rollouts in a store")
    p.add_argument("--store", required=True, help="store URL, e.g. sqlite:///runs/store.db")
    p.add_argument("--status", action="append", help="filter by status (repeatable)")
    p.add_argument("--task-type", action="append", help="filter by task type (repeatable)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0)
    p.set_defaults(func=_runs)

    p = sub.add_parser("spans", help="print a rollout's span tree")
    p.add_argument("rollout_id")
    p.add_argument("--store", required=True, help="store URL")
    p.add_argument("--all-attempts", action="store_true", help="every attempt, not only the latest")
    p.add_argument("--json", action="store_true", help="one JSON span per line")
    p.set_defaults(func=_spans)

    p = sub.add_parser("runner", help="claim rollouts from a shared store and run an agent on them")
    p.add_argument("agent", help="module:function, module:LitAgentClass, or a script.py")
    p.add_argument("--store", required=True, help="shared store URL (postgresql://…, redis://…, http://…)")
    p.add_argument("--worker-id")
    p.add_argument("--task-type", action="append")
    p.add_argument("--max-rollouts", type=int)
    p.add_argument("--idle-timeout", type=float, help="exit after this many seconds without work")
    p.set_defaults(func=_runner)

    p = sub.add_parser("train", help="train an agent with an installed algorithm")
    p.add_argument("agent", help="module:function, module:LitAgentClass, or a script.py")
    p.add_argument("--train", required=True, help="training tasks: .jsonl, .json, .csv, or hf:NAME")
    p.add_argument("--val", help="validation tasks (same formats)")
    p.add_argument("--algorithm", default="grpo", help="algorithm name (see `agl plugins`)")
    p.add_argument("--model", help="policy model: a local path, a hub id, or a bundled name")
    p.add_argument("--engine", help="inference engine serving the policy (transformers, vllm; see `agl plugins`)")
    p.add_argument("--store", help="store URL (default: sqlite in the run folder)")
    p.add_argument("--runners", type=int, default=2, help="runner workers executing the agent")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--eval-interval", type=int)
    p.add_argument("--checkpoint-dir", help="where checkpoints go (default: RUN_DIR/checkpoints)")
    p.add_argument("--run-dir")
    p.add_argument("--num-gpus", type=int, default=0)
    p.add_argument("--task-type", default="default")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="algorithm config field (repeatable)")
    p.set_defaults(func=_train)

    plugins.hook().agl_register_commands(subparsers=sub)
    return parser


SIGPIPE_EXIT_STATUS = 141
"""What a shell reports for a process ended by SIGPIPE (128 + 13), as ``agl runs | head`` gets."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``agl``: exit status 0 on success, 1 on an error (printed without a traceback),
    2 on a usage error, 141 when the reader of the output went away (``agl … | head``)."""
    import logging

    from agent_lightning.errors import AgentLightningError
    from agent_lightning.secrets import install_log_filter, mask

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    install_log_filter()
    try:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            if not getattr(args, "func", None):
                parser.print_help()
                return 2
            status = int(args.func(args) or 0)
        except (AgentLightningError, ValueError, FileNotFoundError) as exc:
            print(f"agl: error: {mask(str(exc))}", file=sys.stderr)
            status = 1
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
        return status
    except BrokenPipeError:
        # the reader stopped reading: end quietly, and let the interpreter's last flush go nowhere
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return SIGPIPE_EXIT_STATUS


if __name__ == "__main__":
    raise SystemExit(main())
