"""`agl store serve` stops on SIGTERM at any moment after its start-up line, also before uvicorn is up."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.05, 0.2])
def test_sigterm_right_after_the_start_up_line_stops_the_server(delay: float) -> None:
    command = [sys.executable, "-m", "agent_lightning_http", "--store", "memory://", "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        assert "agl store serve: serving" in process.stdout.readline()
        time.sleep(delay)
        process.terminate()
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
