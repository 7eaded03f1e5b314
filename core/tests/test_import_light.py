"""`import agent_lightning` stays light: no heavy framework is imported by the core."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = (
    "torch",
    "transformers",
    "langchain",
    "langchain_core",
    "autogen_agentchat",
    "fastapi",
    "uvicorn",
    "httpx",
    "openai",
    "sqlalchemy",
    "redis",
    "numpy",
)


def _modules_after(code: str) -> set[str]:
    # Only the core: installed adapter plugins import their framework on purpose when a context opens.
    env = {**os.environ, "AGL_PLUGINS": ""}
    script = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_pulls_in_nothing_heavy_not_even_pydantic() -> None:
    modules = _modules_after("import agent_lightning")
    assert not {m for m in modules if m.split(".")[0] in HEAVY}
    assert "pydantic" not in modules and "pluggy" not in modules


def test_instrumenting_a_run_pulls_in_no_framework() -> None:
    code = (
        "import agent_lightning as agl\n"
        "with agl.TrainingContext(task_id='t', store=agl.InMemoryLightningStore()):\n"
        "    with agl.span('s') as s:\n"
        "        agl.emit_reward(1.0, span_id=s.id)\n"
    )
    modules = _modules_after(code)
    heavy = sorted({m.split(".")[0] for m in modules} & set(HEAVY))
    assert heavy == [], f"instrumentation imported {heavy}"
