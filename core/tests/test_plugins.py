"""Plugin discovery: a third-party package installed with pip is found through its entry points."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import agent_lightning as agl
import pytest
from agent_lightning import plugins
from agent_lightning.errors import PluginError
from agent_lightning.store import open_store, store_schemes

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
def agl_register_stores(register):
    register(schemes=["throwaway"], opener=lambda url, options, create: ThrowawayStore(url))


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
    left_out = subprocess.run(
        [sys.executable, "-m", "agent_lightning.cli", "runs", "--store", "throwaway://x"],
        env={**env, "AGL_PLUGINS": ""},
        capture_output=True,
        text=True,
    )
    assert left_out.returncode == 1
    assert "the plugin 'throwaway' (agl-throwaway) is installed but AGL_PLUGINS leaves it out" in left_out.stderr


def test_unknown_scheme_is_a_clear_error_naming_what_to_install() -> None:
    with pytest.raises(PluginError) as caught:
        open_store("nosuch://x")
    message = str(caught.value)
    assert "no installed plugin opens nosuch:// URLs" in message
    assert f"installed schemes: {', '.join(store_schemes())}" in message and "memory" in message
    assert "agent-lightning-<name>" in message
    with pytest.raises(ValueError, match="scheme://"):
        open_store("not a url")


def test_missing_algorithm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGL_PLUGINS", "")
    plugins.reset()
    try:
        with pytest.raises(ImportError, match=r"install the algorithm plugin .*`agent-lightning-<name>`"):
            from agent_lightning.algorithms import ProximalPolicyOptimization  # noqa: F401
        with pytest.raises(AttributeError, match="no installed algorithm plugin provides 'PPOConfig'"):
            agl.PPOConfig  # noqa: B018
    finally:
        monkeypatch.delenv("AGL_PLUGINS")
        plugins.reset()


class _SchemeClaimer:
    def __init__(self, scheme: str) -> None:
        self.scheme = scheme

    @agl.hookimpl
    def agl_register_stores(self, register: Any) -> None:
        register(schemes=[self.scheme], opener=lambda url, options, create: agl.InMemoryLightningStore(url))


def test_in_process_plugin_opens_its_scheme_and_two_claims_of_one_scheme_name_both_plugins() -> None:
    plugins.register(_SchemeClaimer("claimed"), name="first-claimer")
    try:
        assert "claimed" in store_schemes()
        assert isinstance(open_store("CLAIMED://x"), agl.InMemoryLightningStore)
        plugins.register(_SchemeClaimer("claimed"), name="second-claimer")
        try:
            with pytest.raises(PluginError) as caught:
                open_store("claimed://x")
            assert "claimed:// is registered by two plugins" in str(caught.value)
            assert "'first-claimer'" in str(caught.value) and "'second-claimer'" in str(caught.value)
        finally:
            plugins.unregister("second-claimer")
        assert isinstance(open_store("claimed://x"), agl.InMemoryLightningStore)
    finally:
        plugins.unregister("first-claimer")
    assert "claimed" not in store_schemes()


def test_a_built_in_scheme_claimed_again_is_an_error_naming_the_built_in() -> None:
    plugins.register(_SchemeClaimer("memory"), name="impostor")
    try:
        with pytest.raises(PluginError, match="memory:// is registered by two plugins") as caught:
            open_store("memory://")
        assert "'agent_lightning.store.memory_plugin' (agent-lightning)" in str(caught.value)
        assert "'impostor'" in str(caught.value)
    finally:
        plugins.unregister("impostor")


class _Misspelled:
    @agl.hookimpl
    def agl_register_adaptor(self, register: Any) -> None:  # sic: the hook is agl_register_adapters
        raise AssertionError("never called")


class _MisspelledUndecorated:
    def agl_register_algorithm(self, register: Any) -> None:  # sic, and the decorator forgotten
        raise AssertionError("never called")


@pytest.mark.parametrize(
    ("plugin", "function", "suggestion"),
    [
        (_Misspelled(), "agl_register_adaptor", "agl_register_adapters"),
        (_MisspelledUndecorated(), "agl_register_algorithm", "agl_register_algorithms"),
    ],
)
def test_a_misspelled_hook_is_an_error_naming_plugin_and_function(
    plugin: object, function: str, suggestion: str
) -> None:
    with pytest.raises(PluginError) as caught:
        plugins.register(plugin, name="typo-plugin")
    message = str(caught.value)
    assert f"plugin 'typo-plugin' defines {function}()" in message
    assert f"did you mean {suggestion}?" in message
    assert not plugins.get_plugin_manager().has_plugin("typo-plugin")  # not left half-registered


def test_an_installed_plugin_with_a_misspelled_hook_stops_agl_with_its_name(tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist = site / "agl_typo-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: agl-typo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[agent_lightning]\ntypo = agl_typo\n")
    (site / "agl_typo.py").write_text(
        "from agent_lightning.hookspecs import hookimpl\n\n@hookimpl\ndef agl_register_store(register):\n    pass\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    env.pop("AGL_PLUGINS", None)
    result = subprocess.run(
        [sys.executable, "-m", "agent_lightning.cli", "plugins"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 1, result.stdout
    assert "plugin 'typo' defines agl_register_store()" in result.stderr
    assert "did you mean agl_register_stores?" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_hook_spec_is_implemented_by_one_of_the_projects_packages() -> None:
    import ast

    from agent_lightning import hookspecs

    repo = Path(__file__).resolve().parents[2]
    implemented = set()
    sources = [*repo.glob("core/src/**/*.py"), *repo.glob("*/*/src/**/*.py")]
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("agl_") and node.decorator_list:
                implemented.add(node.name)
    specs = {name for name in vars(hookspecs) if name.startswith("agl_")}
    assert specs and implemented >= specs, f"hook specs nothing implements: {sorted(specs - implemented)}"


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
    opened = subprocess.run(
        [sys.executable, "-m", "agent_lightning.cli", "runs", "--store", "broken://x"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert opened.returncode == 1
    assert "plugin 'broken' (agl-broken) is installed but failed to load: ModuleNotFoundError" in opened.stderr


class _EchoEngine:
    """A minimal engine: enough to check what the registry hands a factory."""

    def __init__(self, model: str, **options: Any) -> None:
        self.model, self.options, self.url, self.version = model, options, "http://127.0.0.1:1/v1", "v0"

    def start(self, timeout: float | None = None) -> _EchoEngine:
        return self

    def update_weights(self, source: Any, version: str, *, adapter: bool = False) -> None:
        self.version = version

    def stats(self) -> dict[str, Any]:
        return {}

    def stop(self) -> None:
        pass


class _EnginePlugin:
    @agl.hookimpl
    def agl_register_engines(self, register: Any) -> None:
        from agent_lightning.engines import EngineEntry

        register(EngineEntry(name="echo", factory=f"{__name__}:_EchoEngine", features=frozenset({"full", "lora"})))


def test_engines_are_registered_through_the_hook_and_a_missing_one_names_its_package() -> None:
    from agent_lightning.engines import InferenceEngine, create_engine, engine_entries

    with pytest.raises(PluginError, match=r"'sglang' is not installed .*pip install agent-lightning-sglang"):
        create_engine("sglang", "folder")
    plugins.register(_EnginePlugin(), name="echo-engine")
    try:
        assert engine_entries()["echo"].features == {"full", "lora"}
        engine = create_engine("echo", "some/folder", dtype="bfloat16")
        assert isinstance(engine, _EchoEngine) and isinstance(engine, InferenceEngine)
        assert engine.model == "some/folder" and engine.options == {"dtype": "bfloat16"}
    finally:
        plugins.unregister("echo-engine")
    assert "echo" not in engine_entries()
