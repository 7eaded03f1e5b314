"""The policy server as its own process, driven the way a trainer in another process drives it."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import openai
from agent_lightning_rl.policy import VERSION_HEADER


def test_import_stays_light():
    code = "import sys, agent_lightning_rl, agent_lightning_rl.models; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_server_process_serves_and_takes_weights_over_http(model, tokenizer, make_model, tmp_path):
    model.save_pretrained(tmp_path / "v0")
    tokenizer.save_pretrained(tmp_path / "v0")
    make_model(9).save_pretrained(tmp_path / "v1")
    process = subprocess.Popen(
        [sys.executable, "-m", "agent_lightning_rl.policy", "--model", str(tmp_path / "v0"), "--served-name", "tiny"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("serving tiny at http://127.0.0.1:"), line
        base_url = line.split(" at ")[1].strip()
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
        question = [{"role": "user", "content": "What is 2+3?"}]
        before = client.chat.completions.create(model="tiny", messages=question, temperature=0, max_tokens=8)
        reply = httpx.post(
            base_url.removesuffix("/v1") + "/agl/weights",
            json={"path": str(tmp_path / "v1"), "version": "r2"},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        raw = client.chat.completions.with_raw_response.create(
            model="tiny", messages=question, temperature=0, max_tokens=8
        )
        after = raw.parse()
        assert before.system_fingerprint == "v0"
        assert raw.headers[VERSION_HEADER] == after.system_fingerprint == "r2"
        assert after.choices[0].token_ids != before.choices[0].token_ids
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
