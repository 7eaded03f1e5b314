"""The ``agl`` command line, run as a real process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Fills memory://cli-demo in the agl process itself (a memory store lives in one process), then runs agl.
_AGL_ON_A_FILLED_STORE = textwrap.dedent(
    """
    import sys
    from agent_lightning.cli import main
    from agent_lightning.store import SyncStore, open_store
    from agent_lightning.types import RolloutRequest

    store = SyncStore(open_store("memory://cli-demo"))
    task_types = sys.argv[1].split(",")
    count = int(sys.argv[2])
    store.enqueue_rollouts([RolloutRequest(input=i, task_type=task_types[i % len(task_types)]) for i in range(count)])
    raise SystemExit(main(sys.argv[3:]))
    """
)


def _agl_on_filled_store(task_types: list[str], count: int, *args: str) -> list[str]:
    return [sys.executable, "-c", _AGL_ON_A_FILLED_STORE, ",".join(task_types), str(count), *args]


def test_runs_prints_task_types_in_full_so_that_two_never_look_alike() -> None:
    long_types = ["summarize_document_with_citations", "summarize_document_without_citations"]
    result = subprocess.run(
        _agl_on_filled_store(long_types, 2, "runs", "--store", "memory://cli-demo"), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert [row.split()[1] for row in rows] == long_types
    # the columns after the task type still line up
    assert {row.index(" train ") + 1 for row in rows} == {header.index(" mode ") + 1}


def test_output_cut_short_by_the_reader_ends_quietly() -> None:
    process = subprocess.Popen(
        _agl_on_filled_store(["math"], 3000, "runs", "--store", "memory://cli-demo", "--limit", "3000"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()  # as `| head -1` does; 3000 rows are more than a pipe buffers
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141, stderr
    assert first.startswith(b"rollout ")
    assert stderr == ""


@pytest.mark.parametrize("command", [["runs"], ["spans", "ro-1"]])
def test_read_only_commands_do_not_create_a_missing_store(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent_lightning.cli", *command, "--store", "memory://never-made"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "agl: error: no memory://never-made store in this process"


def test_an_unknown_store_scheme_is_one_line_naming_the_installed_schemes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent_lightning.cli", "runs", "--store", "nosuch://x"], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.startswith("agl: error: no installed plugin opens nosuch:// URLs")
    assert "memory" in result.stderr and "Traceback" not in result.stderr
