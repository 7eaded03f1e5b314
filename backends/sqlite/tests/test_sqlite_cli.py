"""``agl`` on SQLite files, run as a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent_lightning.store import SyncStore, open_store
from agent_lightning.types import RolloutRequest

AGL = [sys.executable, "-m", "agent_lightning.cli"]


def test_read_only_commands_on_a_missing_file_fail_clearly_and_create_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    for command in (["runs"], ["spans", "ro-1"]):
        result = subprocess.run([*AGL, *command, "--store", f"sqlite:///{missing}"], capture_output=True, text=True)
        assert result.returncode == 1
        assert result.stderr.strip() == f"agl: error: no SQLite store at sqlite:///{missing} (no such file: {missing})"
        assert list(tmp_path.iterdir()) == []


def test_runs_on_an_existing_file_lists_it_and_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = SyncStore(open_store(url))
    store.enqueue_rollouts([RolloutRequest(input=i, task_type="math") for i in range(2000)])
    store.close()

    listed = subprocess.run([*AGL, "runs", "--store", url, "--limit", "3"], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[1] for line in listed.stdout.splitlines()[1:]] == ["math"] * 3

    process = subprocess.Popen(
        [*AGL, "runs", "--store", url, "--limit", "2000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.readline()
    process.stdout.close()  # `agl runs … | head -1`
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141
    assert stderr == ""
