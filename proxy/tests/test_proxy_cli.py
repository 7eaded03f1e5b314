"""``agl proxy``: the plugin registers the command without importing the web stack, and the command serves."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys

import openai
import pytest
from agent_lightning_testkit.scripted_llm import ScriptedLLM

pytestmark = pytest.mark.timeout(120)


def _ctrl_c_enabled() -> None:
    """In the child, before exec: SIGINT at its default, so Python turns it into KeyboardInterrupt even when the
    tests run from a background job, which starts with SIGINT ignored (and a child inherits that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_plugin_import_is_light() -> None:
    code = "import sys, agent_lightning_proxy.plugin; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
        "{'fastapi', 'starlette', 'uvicorn', 'httpx', 'orjson', 'aiohttp', 'yarl'}))"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plugin_registers_agl_proxy() -> None:
    from agent_lightning_proxy.plugin import agl_register_commands

    parser = argparse.ArgumentParser(prog="agl")
    agl_register_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["proxy", "--upstream", "http://u/v1", "--store", "memory://", "--model-map", "*=p"])
    assert args.func.__name__ == "_proxy" and args.port == 0 and args.model_map == ["*=p"]


def test_agl_proxy_serves_until_interrupted() -> None:
    code = (
        "import argparse, sys\n"
        "from agent_lightning_proxy.plugin import agl_register_commands\n"
        "p = argparse.ArgumentParser(); agl_register_commands(p.add_subparsers())\n"
        "args = p.parse_args(sys.argv[1:]); sys.exit(args.func(args))\n"
    )
    with ScriptedLLM("served") as llm:
        process = subprocess.Popen(
            [sys.executable, "-c", code, "proxy", "--upstream", llm.url, "--store", "memory://"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "AGL_PLUGINS": ""},
            preexec_fn=_ctrl_c_enabled,
        )
        try:
            assert process.stdout is not None
            info = json.loads(process.stdout.readline())
            sdk = openai.OpenAI(base_url=info["url"], api_key="k", max_retries=0)
            answer = sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}])
            assert answer.choices[0].message.content == "served"
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            process.kill()
    assert process.returncode == 0, err
    assert "stopped after 1 requests" in out
