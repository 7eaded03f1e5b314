"""Plugin discovery: a third-party package installed with pip is found through its entry points."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import agent_lightning as agl
import pytest
from agent_lightning import plugins
from agent_lightning.errors import PluginError
from agent_lightning.registry import install_hint
from agent_lightning.store import open_store
from agent_lightning.store.sync import SyncStore

PLUGIN_SOURCE = '''
"""A throwaway third-party plugin: a store backend and an algorithm."""
from agent_lightning.hookspecs import hookimpl
from agent_lightning.registry import AlgorithmEntry
from agent_lightning.store.memory import InMemoryLightningStore
from agent_lightning.algorithm import Algorithm, TrainResult


class ThrowawayStore(InMemoryLightningStore):
    pass


class CountingAlgorithm(Algorithm):
    name = "counting"

    def __init__(self, config=None):
        self.config = config

    def run(self, session):
        return TrainResult(iterations=session.num_iterations)


@hookimpl
def agl_store_schemes():
    return ["throwaway"]


@hookimpl
def agl_open_store(url, options):
    if url.startswith("throwaway://"):
        return ThrowawayStore(url)
    return None


@hookimpl
def agl_register_algorithms(register):
    register(AlgorithmEntry(name="counting", algorithm="agl_throwaway:CountingAlgorithm",
                            description="counts iterations"))
'''


def _build_wheel(directory: Path) -> Path:
    """A real wheel of the throwaway package, written by hand (no build backend needed offline)."""
    name, version = "agl_throwaway", "0.0.1"
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": PLUGIN_SOURCE,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: agl-throwaway\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist_info}/entry_points.txt": f"[agent_lightning]\nthrowaway = {name}\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def test_pip_installed_third_party_plugin_is_discovered(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), *sys.path])}
    env.pop("AGL_PLUGINS", None)
    listing = subprocess.run(
        [sys.executable, "-m", "agent_lightning.cli", "plugins", "--json"], env=env, capture_output=True, text=True
    )
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    mine = [p for p in data["plugins"] if p["name"] == "throwaway"]
    assert mine == [
        {"name": "throwaway", "package": "agl-throwaway", "version": "0.0.1", "source": "entry point", "error": None}
    ]
    assert "throwaway" in data["store_schemes"] and "counting" in data["algorithms"]

    use = subprocess.run(
        [
            sys.executable,
            "-c",
            "from agent_lightning.store import open_store; from agent_lightning.algorithms import get_algorithm;"
            "print(type(open_store('throwaway://x')).__name__, type(get_algorithm('counting')).__name__)",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert use.stdout.split() == ["ThrowawayStore", "CountingAlgorithm"], use.stderr

    # AGL_PLUGINS limits which entry points load.
    limited = subprocess.run(
        [sys.executable, "-m", "agent_lightning.cli", "plugins", "--json"],
        env={**env, "AGL_PLUGINS": ""},
        capture_output=True,
        text=True,
    )
    assert "throwaway" not in json.loads(limited.stdout)["store_schemes"]


def test_unknown_scheme_is_a_clear_error_naming_what_to_install() -> None:
    with pytest.raises(PluginError, match="no installed store backend handles nosuch://"):
        open_store("nosuch://x")
    with pytest.raises(ValueError, match="scheme://"):
        open_store("not a url")
    assert install_hint("postgresql") == "install it with `pip install agent-lightning-postgres`"


def test_missing_algorithm_says_which_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGL_PLUGINS", "")
    plugins.reset()
    try:
        with pytest.raises(ImportError, match="pip install agent-lightning-rl"):
            from agent_lightning.algorithms import ProximalPolicyOptimization  # noqa: F401
        with pytest.raises(AttributeError, match="agent-lightning-rl"):
            agl.PPOConfig  # noqa: B018
    finally:
        monkeypatch.delenv("AGL_PLUGINS")
        plugins.reset()


class Observer:
    """Records every observer hook call, with the state each hook was given."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.started_spans: list[agl.Span] = []
        self.finished: list[tuple[agl.Rollout, agl.Attempt, str, str | None]] = []

    @agl.hookimpl
    def agl_rollout_started(self, rollout: agl.Rollout, attempt: agl.Attempt) -> None:
        self.events.append(f"start {rollout.task_type} {rollout.status}/{attempt.status}")

    @agl.hookimpl
    def agl_span_started(self, span: agl.Span) -> None:
        self.started_spans.append(span)
        self.events.append(f"open {span.name}")

    @agl.hookimpl
    def agl_span_ended(self, span: agl.Span) -> None:
        self.events.append(f"span {span.name}")

    @agl.hookimpl
    def agl_reward_emitted(self, reward: agl.Reward, span: agl.Span) -> None:
        self.events.append(f"reward {reward.total}")

    @agl.hookimpl
    def agl_rollout_finished(self, rollout: agl.Rollout, attempt: agl.Attempt, status: str, error: str | None) -> None:
        self.finished.append((rollout, attempt, status, error))
        self.events.append(f"finish {status}")


@pytest.fixture
def observer() -> Iterator[Observer]:
    observing = Observer()
    plugins.register(observing, name="observer")
    try:
        yield observing
    finally:
        plugins.unregister("observer")


def test_plugin_registered_in_process_observes_lifecycle_hooks(observer: Observer) -> None:
    with agl.TrainingContext(task_id="observed", store=agl.InMemoryLightningStore()) as ctx:
        with agl.span("step") as step:
            agl.emit_reward(0.5)
    assert observer.events == [
        "start observed running/running",
        "open observed",
        "open step",
        "open reward",
        "span reward",
        "reward 0.5",
        "span step",
        "span observed",
        "finish succeeded",
    ]
    opened = {s.name: s for s in observer.started_spans}
    assert opened["step"].span_id == step.id and opened["step"].end_time is None
    assert opened["step"].parent_id == ctx.root_span_id and opened["step"].attempt_id == ctx.attempt_id
    ((rollout, attempt, status, error),) = observer.finished
    assert (rollout.status, attempt.status, status, error) == ("succeeded", "succeeded", "succeeded", None)
    assert rollout.ended_at is not None and attempt.ended_at is not None
    assert attempt.attempt_id == ctx.attempt_id


def test_rollout_finished_gets_the_final_state_of_a_failed_attempt(observer: Observer) -> None:
    store = agl.InMemoryLightningStore()
    with pytest.raises(RuntimeError, match="tool broke"):
        with agl.TrainingContext(task_id="last-try", store=store, config=agl.RolloutConfig(max_attempts=1)):
            raise RuntimeError("tool broke")
    with pytest.raises(RuntimeError, match="tool broke"):
        with agl.TrainingContext(task_id="will-retry", store=store, config=agl.RolloutConfig(max_attempts=2)):
            raise RuntimeError("tool broke")
    (last, _, status, error), (retried, retried_attempt, _, _) = observer.finished
    assert (last.status, status, error) == ("failed", "failed", "RuntimeError: tool broke")
    assert last.error is not None and "tool broke" in last.error
    assert retried.status == "requeuing" and retried_attempt.status == "failed"


def test_rollout_finished_reports_the_store_status_when_the_attempt_was_ended_elsewhere(observer: Observer) -> None:
    store = agl.InMemoryLightningStore()
    sync = SyncStore(store)
    with agl.TrainingContext(task_id="cancelled", store=store) as ctx:
        sync.cancel_rollout(ctx.rollout_id)  # e.g. an operator cancels the run while the agent works
    ((rollout, attempt, status, error),) = observer.finished
    assert rollout.status == "cancelled"
    assert (attempt.status, status) == ("failed", "failed") and error == "rollout cancelled"


def test_broken_plugin_is_reported_not_fatal(tmp_path: Path) -> None:
    package = tmp_path / "site"
    dist = package / "agl_broken-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: agl-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[agent_lightning]\nbroken = agl_broken_missing_module\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package), *sys.path])}
    env.pop("AGL_PLUGINS", None)
    result = subprocess.run(
        [sys.executable, "-m", "agent_lightning.cli", "plugins"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "broken" in result.stdout and "FAILED" in result.stdout
