"""``agl demo``: train the calculator agent of ``examples/calc_agent`` with GRPO on the offline default model (CPU).

The whole job goes through the public pieces: :class:`agent_lightning.Trainer` runs the agent in runner threads
against a store; the policy is served by the local policy server behind the recording proxy; the algorithm is
whatever ``agent_lightning.algorithms`` resolves ``--algorithm`` to (GRPO by default). The demo

1. evaluates the untrained model on held-out validation tasks (greedy decoding, so the baseline is deterministic),
2. trains for ``--iterations`` iterations,
3. evaluates the trained checkpoint on the same tasks,

and prints a before/after table. ``--algorithm sft`` does the same with rejection sampling then SFT (its iterations
are epochs). ``--algorithm apo`` changes no weights: the policy is served once, behind the proxy, for the whole run;
demonstration search starts with no worked examples and chooses on a selection set apart from the held-out tasks; the
starting and the best candidate (their system prompt and worked examples) are evaluated on the held-out tasks.

Its run folder holds ``store.db`` (unless ``--store`` names another store),
``metrics.jsonl``, ``checkpoint/`` (loadable by ``AutoModelForCausalLM.from_pretrained``), ``plot.png`` and
``summary.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from agent_lightning.algorithm import Algorithm, TrainResult, TrainSession

if TYPE_CHECKING:
    from agent_lightning.store.base import LightningStore
    from agent_lightning.types import Resource, Rollout, RolloutMode, Span

FRAMEWORKS = ("openai", "langchain", "autogen")
DEFAULT_ALGORITHM_CONFIG: dict[str, Any] = {
    "group_size": 4,
    "tasks_per_iteration": 6,
    "max_new_tokens": 64,
    "learning_rate": 2e-5,
    "temperature": 0.7,
    "autocast": "bfloat16",
}
"""GRPO settings sized for a 2-core CPU (``--set KEY=VALUE`` overrides any of them).

bf16 autocast makes the update about 3.5x faster on a CPU with bf16 instructions (``benchmarks/train_throughput.py``);
the agents' worked examples make prompts about 20x longer than the completions trained on, a prefix that the policy
server and the learner each compute once per batch. Measured with these defaults on the 32 held-out tasks: 53.1% ->
90.6% (12 fixed, 0 broken), 87.5% (11 fixed, 0 broken; 915 s in all) and 81.2% (9 fixed, 0 broken; 931 s). Before
the agents had worked examples (the model never called the calculator), fp32 runs gave 43.8% -> 59.4% and 46.9%,
within noise, and a learning rate of 8e-5 collapsed the policy."""
SFT_DEFAULT_CONFIG: dict[str, Any] = {
    "group_size": 4,
    "collect_tasks": 24,
    "max_new_tokens": 64,
    "learning_rate": 1e-5,
    "temperature": 0.7,
    "mini_batch_size": 8,
    "autocast": "bfloat16",
    "require_tool_call": True,
}
"""Rejection sampling then SFT (``--algorithm sft``): 4 tries at temperature 0.7 of 24 training tasks by the untrained
model, the successful ones that called the calculator kept (``require_tool_call``: a reply that writes the tool's
answer as text also passes the reward), ``--iterations`` epochs (default 2) of masked NLL on them."""
APO_DEFAULT_CONFIG: dict[str, Any] = {
    "seed_examples": [],
    "max_demos": 3,
    "max_labeled_demos": 6,
    "require_tool_call": True,
    "minibatch_size": 8,
    "bootstrap_tasks": 8,
    "rollout_budget": 200,
}
"""Demonstration search (``--algorithm apo``): the agent starts with no worked examples (this model then never calls
the calculator). The teacher shows 6 training tasks rendered from their labels by the agent's ``worked_example``; its
successful greedy rollouts on 8 other training tasks that call the calculator become bootstrapped examples.
``--iterations`` candidates of 6 examples (default 2: the 6 labeled ones, then 3 bootstrapped + 3 labeled; more are
random draws) are scored on ``--selection-size`` tasks apart from the training and held-out ones."""
ALGORITHM_DEFAULTS: dict[str, dict[str, Any]] = {"sft": SFT_DEFAULT_CONFIG, "apo": APO_DEFAULT_CONFIG}
DEFAULT_ITERATIONS: dict[str, int] = {"sft": 2, "apo": 2}
"""``--iterations`` when not given: GRPO/PPO iterations 6, SFT epochs 2, APO candidates 2."""
EXAMPLES_ENV = "AGL_EXAMPLES_DIR"
EVAL_TASK_TYPE = "calc"


@dataclass
class DemoConfig:
    """Everything ``agl demo`` can be told (the CLI flags, one to one)."""

    framework: str = "openai"
    iterations: int | None = None
    """Default per algorithm (:data:`DEFAULT_ITERATIONS`, else 6)."""
    runners: int = 8
    store: str | LightningStore | None = None
    """A URL (default: ``sqlite:///{run_dir}/store.db``) or an open store, which the demo then leaves open."""
    run_dir: Path = field(default_factory=lambda: Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
    model: str = "smollm2-135m-instruct"
    train_size: int = 48
    val_size: int = 32
    seed: int = 0
    examples_dir: Path | None = None
    algorithm: str = "grpo"
    algorithm_config: dict[str, Any] = field(default_factory=dict)
    eval_interval: int | None = None
    max_tokens: int = 64
    progress: bool = True
    rollout_timeout: float = 600.0
    selection_size: int = 16
    """APO: tasks (apart from the training and held-out ones) that candidates are scored and chosen on."""

    @property
    def num_iterations(self) -> int:
        return self.iterations or DEFAULT_ITERATIONS.get(self.algorithm, 6)

    engine: str = "transformers"
    """Inference engine serving the policy (``"vllm"`` with ``agent-lightning-vllm`` installed)."""


# --------------------------------------------------------------------------- the example agent
def find_examples_dir(explicit: str | Path | None = None) -> Path:
    """The ``examples/calc_agent`` folder: ``explicit``, ``$AGL_EXAMPLES_DIR``, or found from here or the cwd."""
    if explicit is not None or os.environ.get(EXAMPLES_ENV):
        folder = Path(explicit or os.environ[EXAMPLES_ENV]).expanduser()
        if not (folder / "tasks.py").is_file():
            raise FileNotFoundError(f"{folder} is not the calculator example: it has no tasks.py")
        return folder.resolve()
    starts = [Path.cwd(), Path(__file__).resolve().parent]
    for start in starts:
        for folder in (start, *start.parents):
            candidate = folder / "examples" / "calc_agent"
            if (candidate / "tasks.py").is_file():
                return candidate
    raise FileNotFoundError(
        "cannot find examples/calc_agent (looked above the current folder and above the installed package); "
        f"run from the repository root, pass --examples-dir, or set ${EXAMPLES_ENV}"
    )


def load_example(folder: Path, framework: str) -> tuple[ModuleType, Callable[..., Any]]:
    """Import ``tasks`` and ``{framework}_agent`` from the example folder; returns ``(tasks, agent)``."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; choose one of {', '.join(FRAMEWORKS)}")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    tasks = importlib.import_module("tasks")
    if Path(getattr(tasks, "__file__", "")).resolve().parent != folder:
        raise ImportError(f"a different module named 'tasks' ({tasks.__file__}) shadows {folder / 'tasks.py'}")
    try:
        module = importlib.import_module(f"{framework}_agent")
    except ImportError as exc:
        package = {"openai": "openai", "langchain": "langchain langchain-openai", "autogen": "autogen-agentchat"}
        raise ImportError(
            f"the {framework} agent needs its framework: pip install {package[framework]} "
            f"agent-lightning-{framework} ({exc})"
        ) from exc
    return tasks, module.agent


def selection_tasks(tasks: ModuleType, size: int, seed: int, exclude: Sequence[Any]) -> list[Any]:
    """``size`` tasks whose questions are in none of ``exclude`` (APO chooses its candidate on these)."""
    taken = {t["question"] for t in exclude}
    chosen: list[Any] = []
    for candidate in tasks.make_tasks(size * 8, seed + 2):
        if candidate["question"] not in taken:
            taken.add(candidate["question"])
            chosen.append(candidate)
        if len(chosen) == size:
            break
    return chosen


def split_tasks(tasks: ModuleType, train_size: int, val_size: int, seed: int) -> tuple[list[Any], list[Any]]:
    """Training and validation tasks from different seeds; no training question appears in validation."""
    if train_size < 1 or val_size < 1:
        raise ValueError(f"--train-size and --val-size must be at least 1 (got {train_size}, {val_size})")
    val = tasks.make_tasks(val_size, seed + 1)
    held_out = {t["question"] for t in val}
    train: list[Any] = []
    for candidate in tasks.make_tasks(train_size * 4, seed):
        if candidate["question"] not in held_out:
            train.append(candidate)
        if len(train) == train_size:
            break
    return train, val


# --------------------------------------------------------------------------- evaluation
@dataclass
class EvalReport:
    """Validation figures of one model version."""

    label: str
    tasks: int
    finished: int
    accuracy: float
    mean_reward: float
    tool_call_validity: float | None
    """Well-formed calculator calls (parsed, named ``calculator``, evaluable) over all attempted tool calls."""
    tool_use: float
    """Share of rollouts that made at least one valid calculator call."""
    output_tokens: int
    tokens_per_s: float
    wall_s: float
    solved: list[str] = field(default_factory=list)
    """The questions answered correctly (to pair two evaluations on the same tasks)."""

    def metrics(self, prefix: str = "eval/") -> dict[str, float]:
        values = {
            "accuracy": self.accuracy,
            "reward": self.mean_reward,
            "tool_use": self.tool_use,
            "tokens_per_s": self.tokens_per_s,
            "wall_s": self.wall_s,
            "finished": float(self.finished),
        }
        if self.tool_call_validity is not None:
            values["tool_call_validity"] = self.tool_call_validity
        return {prefix + k: v for k, v in values.items()}


def _tool_calls(span: Span, calculator: Callable[[str], str]) -> tuple[int, int]:
    """``(attempted, valid)`` calculator calls in one recorded LLM call."""
    from agent_lightning import semconv

    messages = span.attributes.get(semconv.GEN_AI_OUTPUT_MESSAGES) or []
    attempted = valid = 0
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        calls = message.get("tool_calls") or []
        if not calls and "<tool_call>" in str(message.get("content") or ""):
            attempted += 1  # the model tried the format but the server could not parse it
        for call in calls:
            attempted += 1
            function = call.get("function") or {}
            try:
                arguments = json.loads(function.get("arguments") or "{}")
            except (TypeError, ValueError):
                continue
            expression = arguments.get("expression") if isinstance(arguments, dict) else None
            if function.get("name") == "calculator" and isinstance(expression, str):
                valid += not calculator(expression).startswith("error")
    return attempted, valid


def summarize(
    label: str,
    tasks: Sequence[Any],
    rollouts: Sequence[Rollout],
    spans: dict[str, list[Span]],
    wall_s: float,
    tasks_module: ModuleType,
) -> EvalReport:
    """Accuracy, reward, tool-call validity and throughput of evaluation rollouts from their spans."""
    from agent_lightning import semconv

    rewards: list[float] = []
    correct = 0
    solved: list[str] = []
    attempted = valid = tool_users = tokens = 0
    for rollout in rollouts:
        rollout_spans = spans.get(rollout.rollout_id, [])
        reward_spans = [s for s in rollout_spans if s.kind == "reward" and s.reward is not None]
        reward = sum(s.reward or 0.0 for s in reward_spans) if reward_spans else 0.0
        rewards.append(reward)
        # correctness is judged again from the task, not inferred from the reward's size
        expected = rollout.input.get("answer") if isinstance(rollout.input, dict) else None
        final = _final_text(rollout_spans)
        answer = tasks_module.extract_answer(final) if final is not None else None
        right = answer is not None and expected is not None and abs(answer - float(expected)) < 1e-6
        correct += right
        if right and isinstance(rollout.input, dict):
            solved.append(str(rollout.input.get("question")))
        used = False
        for span in rollout_spans:
            if span.kind != "llm" or semconv.TOKEN_IDS_AVAILABLE not in span.attributes:
                continue  # only the proxy's records (the adapters' client spans would double count)
            output_tokens = span.attributes.get(semconv.GEN_AI_USAGE_OUTPUT_TOKENS)
            tokens += output_tokens if isinstance(output_tokens, int) else 0
            a, v = _tool_calls(span, tasks_module.calculator)
            attempted, valid, used = attempted + a, valid + v, used or v > 0
        tool_users += used
    n = len(tasks)
    return EvalReport(
        label=label,
        tasks=n,
        finished=len(rollouts),
        accuracy=correct / n if n else 0.0,
        mean_reward=sum(rewards) / n if n else 0.0,  # unfinished rollouts count as reward 0
        tool_call_validity=valid / attempted if attempted else None,
        tool_use=tool_users / n if n else 0.0,
        output_tokens=tokens,
        tokens_per_s=tokens / wall_s if wall_s > 0 else 0.0,
        wall_s=wall_s,
        solved=sorted(solved),
    )


@dataclass(frozen=True)
class PairedComparison:
    """Two evaluations of the same tasks, task by task: what training fixed and what it broke."""

    fixed: int
    broken: int
    p_value: float
    """One-sided exact sign test on the discordant tasks: the chance of at least ``fixed`` of them improving
    if training changed nothing but noise (each discordant task as likely to flip either way)."""

    @classmethod
    def of(cls, before: EvalReport, after: EvalReport) -> PairedComparison:
        was, now = set(before.solved), set(after.solved)
        fixed, broken = len(now - was), len(was - now)
        n = fixed + broken
        p = sum(math.comb(n, k) for k in range(fixed, n + 1)) / 2**n if n else 1.0
        return cls(fixed=fixed, broken=broken, p_value=p)

    def describe(self, tasks: int) -> str:
        return (
            f"task by task on the same {tasks} held-out tasks: {self.fixed} fixed, {self.broken} broken "
            f"(one-sided sign test p = {self.p_value:.3f})"
        )


def _final_text(spans: Sequence[Span]) -> str | None:
    """The content of the last assistant message the policy produced in the rollout (from the proxy's records)."""
    from agent_lightning import semconv

    records = [s for s in spans if s.kind == "llm" and semconv.TOKEN_IDS_AVAILABLE in s.attributes]
    if not records:
        return None
    last = max(records, key=lambda s: (s.start_time, s.sequence_id))
    messages = last.attributes.get(semconv.GEN_AI_OUTPUT_MESSAGES) or []
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return str(messages[-1].get("content") or "")
    return ""


@contextmanager
def serve_policy(
    store: LightningStore, model: str, *, max_batch_size: int = 8, engine: str = "transformers", dtype: str = "float32"
) -> Iterator[Any]:
    """Serve ``model`` with the inference engine ``engine`` behind the recording proxy; yields the proxy.

    Evaluations compute in the checkpoint's precision (fp32) on every engine, so that their figures compare across
    engines (vLLM would otherwise serve in bf16, and some greedy replies differ)."""
    from agent_lightning.engines import create_engine
    from agent_lightning_proxy.server import LLMProxy

    from agent_lightning_rl.models import local_checkpoint

    server = create_engine(
        engine, local_checkpoint(model), served_name=served_name(model), max_batch_size=max_batch_size, dtype=dtype
    ).start()
    try:
        with LLMProxy(store, server.url) as proxy:
            yield proxy
    finally:
        server.stop()


def served_name(model: str) -> str:
    return Path(model).name if Path(model).expanduser().is_dir() else model


class Evaluation(Algorithm):
    """An algorithm that only evaluates: serves ``model`` (or uses the running ``proxy``), publishes it with
    ``extra`` resources (a system prompt, worked examples), runs every validation task once (greedy), reports."""

    name = "evaluate"

    def __init__(
        self,
        model: str,
        label: str,
        tasks_module: ModuleType,
        *,
        max_tokens: int,
        timeout: float,
        resource: str,
        proxy: Any = None,
        extra: Mapping[str, Resource] | None = None,
        engine: str = "transformers",
    ) -> None:
        self.model, self.label, self.tasks_module, self.engine = model, label, tasks_module, engine
        self.max_tokens, self.timeout, self.resource = max_tokens, timeout, resource
        self.proxy, self.extra = proxy, dict(extra or {})
        self.report: EvalReport | None = None

    def run(self, session: TrainSession) -> TrainResult:
        if self.proxy is not None:
            return self._run(session, self.proxy)
        with serve_policy(session.store, self.model, engine=self.engine) as proxy:
            return self._run(session, proxy)

    def _run(self, session: TrainSession, proxy: Any) -> TrainResult:
        resource = proxy.resource(served_name(self.model), temperature=0.0, max_tokens=self.max_tokens)
        snapshot = session.publish_resources(
            {**self.extra, self.resource: resource}, {"purpose": f"evaluation: {self.label}"}
        )
        started = time.perf_counter()
        rollouts = session.run_rollouts(
            session.val_dataset, mode="val", resources_id=snapshot.resources_id, timeout=self.timeout
        )
        wall = time.perf_counter() - started
        proxy.flush()
        spans = {r.rollout_id: session.sync.query_spans(r.rollout_id, "latest") for r in rollouts}
        self.report = summarize(self.label, session.val_dataset, rollouts, spans, wall, self.tasks_module)
        return TrainResult(iterations=0, metrics=[self.report.metrics()])


def evaluate(
    store: LightningStore,
    agent: Callable[..., Any],
    tasks: Sequence[Any],
    model: str,
    label: str,
    tasks_module: ModuleType,
    config: DemoConfig,
    step: int,
    resource: str,
    *,
    proxy: Any = None,
    extra: Mapping[str, Resource] | None = None,
) -> EvalReport:
    """Evaluate ``model`` on ``tasks`` through a Trainer (same runners, store and proxy path as training)."""
    from agent_lightning.trainer import Trainer

    algorithm = Evaluation(
        model,
        label,
        tasks_module,
        max_tokens=config.max_tokens,
        timeout=config.rollout_timeout,
        resource=resource,
        proxy=proxy,
        extra=extra,
        engine=config.engine,
    )
    trainer = Trainer(
        algorithm,
        store=store,
        agent=agent,
        val_dataset=list(tasks),
        n_runners=config.runners,
        run_dir=config.run_dir,
        task_type=EVAL_TASK_TYPE,
    )
    with Progress(store, label, "val", len(tasks), enabled=config.progress):
        trainer.train(num_iterations=0)
    report = algorithm.report
    assert report is not None
    _append_metrics(config.run_dir / "metrics.jsonl", step, {"phase": label, **report.metrics()})
    return report


def _append_metrics(path: Path, step: int, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"step": step, "time": time.time(), **record}) + "\n")


# --------------------------------------------------------------------------- progress
class Progress:
    """A live progress bar of one evaluation: rollouts of ``mode`` finished in the store since it started."""

    def __init__(
        self, store: LightningStore, label: str, mode: RolloutMode, total: int, *, enabled: bool = True
    ) -> None:
        self.store, self.label, self.mode, self.total, self.enabled = store, label, mode, total, enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._baseline = 0
        self._bar: Any = None

    def _finished(self) -> int:
        from agent_lightning.instrumentation.tracer import get_tracer

        statuses: Any = ["succeeded", "failed", "cancelled"]
        return len(get_tracer(self.store).call(self.store.query_rollouts(mode=self.mode, status=statuses)))

    def __enter__(self) -> Progress:
        if not self.enabled:
            return self
        from tqdm.auto import tqdm

        self._baseline = self._finished()
        self._bar = tqdm(total=self.total, desc=self.label, unit="rollout", dynamic_ncols=True, file=sys.stderr)
        self._thread = threading.Thread(target=self._watch, name="agl-demo-progress", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            self._refresh()

    def _refresh(self) -> None:
        try:
            done = self._finished() - self._baseline
        except Exception:  # a busy store must not kill the bar
            return
        self._bar.n = min(done, self.total)
        self._bar.refresh()

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._refresh()
        self._bar.close()


REWARD_KEYS = ("train/reward_mean",)
VAL_KEYS = ("eval/accuracy", "val/success_rate")


def _pick(record: dict[str, Any], keys: Sequence[str]) -> float | None:
    for key in keys:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return None


# --------------------------------------------------------------------------- report
def format_table(before: EvalReport, after: EvalReport) -> str:
    """The before/after table printed at the end."""

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    rows = [
        ("validation accuracy", pct(before.accuracy), pct(after.accuracy)),
        ("mean reward", f"{before.mean_reward:.3f}", f"{after.mean_reward:.3f}"),
        ("tool-call validity", pct(before.tool_call_validity), pct(after.tool_call_validity)),
        ("tool use (rollouts)", pct(before.tool_use), pct(after.tool_use)),
        ("tokens/s", f"{before.tokens_per_s:.1f}", f"{after.tokens_per_s:.1f}"),
        ("eval wall time", f"{before.wall_s:.1f} s", f"{after.wall_s:.1f} s"),
        ("finished rollouts", f"{before.finished}/{before.tasks}", f"{after.finished}/{after.tasks}"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':<{width}}  {'before':>12}  {'after':>12}", "-" * (width + 28)]
    lines += [f"{name:<{width}}  {b:>12}  {a:>12}" for name, b, a in rows]
    return "\n".join(lines)


def _series(records: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[tuple[float, float]]:
    points = [(float(r["step"]), _pick(r, keys)) for r in records]
    return [(step, value) for step, value in points if value is not None]


def plot(metrics_file: Path, target: Path, title: str = "calculator agent: GRPO on CPU") -> Path:
    """Training reward and validation accuracy per iteration, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    train = _series([r for r in records if "phase" not in r], REWARD_KEYS)
    val = _series(records, VAL_KEYS)
    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        axis.plot([s for s, _ in train], [v for _, v in train], marker="o", label="training reward (mean)")
    if val:
        axis.plot([s for s, _ in val], [v for _, v in val], marker="s", label="validation accuracy")
    axis.set_xlabel("iteration")
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(target)
    plt.close(figure)
    return target


# --------------------------------------------------------------------------- the demo
@dataclass
class DemoResult:
    """What ``run_demo`` produced."""

    before: EvalReport
    after: EvalReport
    run_dir: Path
    store_url: str
    checkpoint: Path | None
    metrics_file: Path
    plot: Path
    wall_s: float
    train_s: float
    iterations: int
    table: str
    paired: PairedComparison
    extra: dict[str, Any] = field(default_factory=dict)
    """Algorithm-specific figures (APO: rollouts spent, the chosen worked examples, the selection scores)."""

    def to_json(self) -> dict[str, Any]:
        return {
            **self.extra,
            "paired": asdict(self.paired),
            "before": asdict(self.before),
            "after": asdict(self.after),
            "run_dir": str(self.run_dir),
            "store": self.store_url,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "wall_s": self.wall_s,
            "train_s": self.train_s,
            "iterations": self.iterations,
        }


def _say(config: DemoConfig, text: str) -> None:
    if config.progress:
        print(text, file=sys.stderr, flush=True)


def run_demo(config: DemoConfig) -> DemoResult:
    """Baseline evaluation, training (or prompt search), evaluation of the result; writes the run folder."""
    from agent_lightning.engines import engine_entry
    from agent_lightning.store import open_store

    engine_entry(config.engine)  # an engine that is not installed fails here, naming the package
    started = time.perf_counter()
    examples = find_examples_dir(config.examples_dir)
    tasks_module, agent = load_example(examples, config.framework)
    train_tasks, val_tasks = split_tasks(tasks_module, config.train_size, config.val_size, config.seed)
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.store is None or isinstance(config.store, str):
        store = open_store(config.store or f"sqlite:///{(run_dir / 'store.db').resolve()}")
        owned = True
    else:
        store, owned = config.store, False
    store_url = store.url
    metrics_file = run_dir / "metrics.jsonl"
    _say(config, f"agl demo: {config.framework} agent, model {config.model}, store {store_url}, run folder {run_dir}")
    extra: dict[str, Any] = {}
    checkpoint: Path | None = None
    try:
        if config.algorithm == "apo":
            before, after, train_s, iterations, extra = _run_prompt_search(
                config, store, agent, tasks_module, train_tasks, val_tasks
            )
        else:
            before, after, train_s, iterations, checkpoint = _run_weights_training(
                config, store, agent, tasks_module, train_tasks, val_tasks
            )
    finally:
        if owned:
            from agent_lightning.instrumentation.tracer import get_tracer

            get_tracer(store).call(store.close())
    figure = plot(metrics_file, run_dir / "plot.png", f"calculator agent: {config.algorithm} on CPU")
    demo = DemoResult(
        before=before,
        after=after,
        run_dir=run_dir,
        store_url=store_url,
        checkpoint=checkpoint,
        metrics_file=metrics_file,
        plot=figure,
        wall_s=time.perf_counter() - started,
        train_s=train_s,
        iterations=iterations,
        table=format_table(before, after),
        paired=PairedComparison.of(before, after),
        extra=extra,
    )
    (run_dir / "summary.json").write_text(json.dumps(demo.to_json(), indent=2))
    return demo


def _run_weights_training(
    config: DemoConfig,
    store: LightningStore,
    agent: Callable[..., Any],
    tasks_module: ModuleType,
    train_tasks: list[Any],
    val_tasks: list[Any],
) -> tuple[EvalReport, EvalReport, float, int, Path]:
    """GRPO, PPO or SFT: evaluate the model, train it, evaluate the checkpoint."""
    from agent_lightning.algorithms import get_algorithm
    from agent_lightning.trainer import Trainer

    run_dir = config.run_dir
    defaults = ALGORITHM_DEFAULTS.get(config.algorithm, DEFAULT_ALGORITHM_CONFIG)
    engine = {} if config.engine == "transformers" else {"engine": config.engine}  # the RL algorithms' option
    options = {**defaults, "model": config.model, "progress": config.progress, **engine, **config.algorithm_config}
    algorithm = get_algorithm(config.algorithm, **options)
    # evaluation publishes the policy under the algorithm's resource name, so the agent always sees one LLM
    resource = str(getattr(getattr(algorithm, "config", None), "policy_resource", "main_llm"))
    before = evaluate(store, agent, val_tasks, config.model, "baseline", tasks_module, config, 0, resource)
    trainer = Trainer(
        algorithm,
        store=store,
        agent=agent,
        train_dataset=train_tasks,
        val_dataset=val_tasks,
        n_runners=config.runners,
        run_dir=run_dir,
        task_type=EVAL_TASK_TYPE,
    )
    train_started = time.perf_counter()
    checkpoint_dir = run_dir / "checkpoint"
    # the algorithm draws its own progress bar (iterations, reward, tokens/s)
    result = trainer.train(
        num_iterations=config.num_iterations, eval_interval=config.eval_interval, checkpoint_dir=checkpoint_dir
    )
    train_s = time.perf_counter() - train_started
    if result.interrupted:
        raise KeyboardInterrupt
    checkpoint = _checkpoint(result.checkpoint, checkpoint_dir)
    after = evaluate(
        store, agent, val_tasks, str(checkpoint), "trained", tasks_module, config, result.iterations, resource
    )
    return before, after, train_s, result.iterations, checkpoint


def _run_prompt_search(
    config: DemoConfig,
    store: LightningStore,
    agent: Callable[..., Any],
    tasks_module: ModuleType,
    train_tasks: list[Any],
    val_tasks: list[Any],
) -> tuple[EvalReport, EvalReport, float, int, dict[str, Any]]:
    """APO: one policy server and proxy for the whole run; search worked examples on a selection set; evaluate the
    starting and the best candidate (their system prompt and worked examples) on the held-out tasks."""
    from agent_lightning.algorithms import get_algorithm
    from agent_lightning.instrumentation.tracer import get_tracer
    from agent_lightning.trainer import Trainer
    from agent_lightning.types import PromptTemplate, ToolConfig

    settings = {**APO_DEFAULT_CONFIG, **config.algorithm_config}
    settings.setdefault("num_candidates", config.num_iterations)
    algorithm: Any = get_algorithm(config.algorithm, **settings)
    resource = str(algorithm.config.llm_resource)
    selection = selection_tasks(tasks_module, config.selection_size, config.seed, [*train_tasks, *val_tasks])
    with serve_policy(store, config.model, engine=config.engine) as proxy:
        llm = proxy.resource(served_name(config.model), temperature=0.0, max_tokens=config.max_tokens)
        get_tracer(store).call(store.add_resources({resource: llm}, {"purpose": "the agent's model for APO"}))
        trainer = Trainer(
            algorithm,
            store=store,
            agent=agent,
            train_dataset=train_tasks,
            val_dataset=selection,
            n_runners=config.runners,
            run_dir=config.run_dir,
            task_type=EVAL_TASK_TYPE,
        )
        train_started = time.perf_counter()
        result = trainer.train(num_iterations=config.num_iterations)
        train_s = time.perf_counter() - train_started
        if result.interrupted:
            raise KeyboardInterrupt
        seed = algorithm.candidates["c0"]
        best = algorithm.best or seed
        reports = []
        for label, candidate, step in (("baseline", seed, 0), ("optimized", best, result.iterations)):
            extra: dict[str, Resource] = {
                algorithm.config.examples_resource: ToolConfig(config={"examples": list(candidate.examples or [])})
            }
            if candidate.prompt is not None:
                extra[algorithm.config.prompt_resource] = PromptTemplate(template=candidate.prompt)
            reports.append(
                evaluate(
                    store,
                    agent,
                    val_tasks,
                    config.model,
                    label,
                    tasks_module,
                    config,
                    step,
                    resource,
                    proxy=proxy,
                    extra=extra,
                )
            )
    summary = json.loads((config.run_dir / "apo_result.json").read_text(encoding="utf-8"))
    extra_json = {
        "apo": {
            "rollouts_spent": algorithm.spent,
            "candidates": len(algorithm.candidates),
            "selection_tasks": len(selection),
            "selection_seed_score": summary.get("apo/seed_val"),
            "selection_best_score": summary.get("apo/best_val"),
            "best_candidate": best.candidate_id,
            "best_examples": best.examples,
            "bootstrap_demos": len(getattr(algorithm, "demos", [])),
            "labeled_demos": len(getattr(algorithm, "labeled", [])),
        }
    }
    return reports[0], reports[1], train_s, result.iterations, extra_json


def _checkpoint(reported: Path | None, expected: Path) -> Path:
    """The folder holding the trained weights (``config.json`` + safetensors)."""
    for candidate in (reported, expected):
        if candidate is not None and (Path(candidate) / "config.json").is_file():
            return Path(candidate)
    if expected.is_dir():  # algorithms that save one folder per iteration: take the newest
        folders = sorted(
            (p for p in expected.iterdir() if (p / "config.json").is_file()), key=lambda p: p.stat().st_mtime
        )
        if folders:
            return folders[-1]
    raise FileNotFoundError(f"training finished without a checkpoint in {expected} (the algorithm reported {reported})")


# --------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``agl demo`` flags."""
    defaults = DemoConfig()
    parser.add_argument("--framework", choices=FRAMEWORKS, default=defaults.framework, help="which agent to train")
    parser.add_argument(
        "--iterations", type=int, help="GRPO/PPO iterations (default 6), SFT epochs (2) or APO candidates (2)"
    )
    parser.add_argument("--runners", type=int, default=defaults.runners, help="runner workers executing the agent")
    parser.add_argument("--store", help="store URL (default: sqlite in the run folder; postgresql://…, redis://…)")
    parser.add_argument("--run-dir", type=Path, help="run folder (default: runs/demo-TIMESTAMP)")
    parser.add_argument("--model", default=defaults.model, help="policy: bundled name, checkpoint folder or .gguf")
    parser.add_argument("--train-size", type=int, default=defaults.train_size, help="training tasks")
    parser.add_argument("--val-size", type=int, default=defaults.val_size, help="held-out validation tasks")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the task generator")
    parser.add_argument("--examples-dir", type=Path, help=f"the calc_agent folder (default: found, or ${EXAMPLES_ENV})")
    parser.add_argument(
        "--algorithm",
        default=defaults.algorithm,
        help="grpo or ppo (RL), sft (rejection sampling then SFT), apo (worked-example search, no weight change)",
    )
    parser.add_argument(
        "--selection-size", type=int, default=defaults.selection_size, help="APO: tasks candidates are chosen on"
    )
    parser.add_argument("--eval-interval", type=int, help="let the algorithm validate every N iterations")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens, help="max tokens per evaluation reply")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="algorithm config field (repeatable)")
    parser.add_argument("--engine", default=defaults.engine, help="inference engine: transformers, vllm, …")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """A :class:`DemoConfig` from parsed ``agl demo`` arguments."""
    algorithm_config: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            algorithm_config[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            algorithm_config[key.strip()] = value
    if (args.iterations is not None and args.iterations < 1) or args.runners < 1:
        raise ValueError(f"--iterations and --runners must be at least 1 (got {args.iterations}, {args.runners})")
    config = DemoConfig(
        framework=args.framework,
        iterations=args.iterations,
        runners=args.runners,
        store=args.store,
        model=args.model,
        train_size=args.train_size,
        val_size=args.val_size,
        seed=args.seed,
        examples_dir=args.examples_dir,
        algorithm=args.algorithm,
        algorithm_config=algorithm_config,
        eval_interval=args.eval_interval,
        max_tokens=args.max_tokens,
        progress=not args.no_progress,
        selection_size=args.selection_size,
        engine=args.engine,
    )
    if args.run_dir is not None:
        config.run_dir = args.run_dir
    return config


def main(args: argparse.Namespace) -> int:
    """``agl demo``."""
    config = config_from_args(args)
    try:
        result = run_demo(config)
    except KeyboardInterrupt:
        print(f"interrupted; finished rollouts stay in {config.store or config.run_dir / 'store.db'}", file=sys.stderr)
        return 130
    print()
    unit = {"sft": "SFT epochs", "apo": "APO candidates"}.get(config.algorithm, f"{config.algorithm} iterations")
    print(
        f"calculator agent ({config.framework}), {result.iterations} {unit}, "
        f"{config.val_size} held-out tasks, greedy decoding"
    )
    print(result.table)
    print(result.paired.describe(config.val_size))
    apo = result.extra.get("apo")
    if apo:
        print(
            f"APO: {apo['rollouts_spent']} rollouts spent (bootstrap: {apo['bootstrap_demos']} worked examples, "
            f"{apo['labeled_demos']} labeled ones; scoring {apo['candidates']} candidates on "
            f"{apo['selection_tasks']} selection tasks: {apo['selection_seed_score']:.3f} -> "
            f"{apo['selection_best_score']:.3f} mean reward); best {apo['best_candidate']} with "
            f"{len(apo['best_examples'] or [])} worked examples (apo_result.json)"
        )
    label = "search" if config.algorithm == "apo" else "training"
    print(f"{label}: {result.train_s:.0f} s; total wall time: {result.wall_s:.0f} s")
    print(
        f"run folder: {result.run_dir} (store {result.store_url}, metrics.jsonl, checkpoint {result.checkpoint}, "
        f"plot.png, summary.json)"
    )
    return 0


def summary_line(values: Sequence[float]) -> str:
    """``mean ± std`` of repeated measurements."""
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "n/a"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
