"""Training runs: folders holding a ``metrics.jsonl`` (the format of :class:`agent_lightning.metrics.JsonlSink`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def find_runs(dirs: Sequence[str | Path]) -> dict[str, Path]:
    """Run folders by name: each given folder holding ``metrics.jsonl``, or its sub-folders that do."""
    runs: dict[str, Path] = {}
    for given in dirs:
        folder = Path(given).expanduser()
        candidates = [folder] if (folder / METRICS_FILE).is_file() else sorted(folder.glob(f"*/{METRICS_FILE}"))
        for candidate in candidates:
            run = candidate if candidate.is_dir() else candidate.parent
            name = run.name
            while name in runs and runs[name] != run:
                name += "+"
            runs[name] = run
    return runs


def run_summary(name: str, folder: Path) -> dict[str, Any]:
    path = folder / METRICS_FILE
    stat = path.stat()
    return {"name": name, "path": str(folder), "bytes": stat.st_size, "modified": stat.st_mtime}


def read_metrics(folder: Path, offset: int = 0) -> dict[str, Any]:
    """The records written since byte ``offset`` (complete lines only) and the offset to poll from next."""
    path = folder / METRICS_FILE
    size = os.path.getsize(path)
    if offset > size:  # the file was replaced: start again
        offset = 0
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n") + 1
    records: list[dict[str, float]] = []
    for line in data[:end].splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(
                {
                    k: float(v)
                    for k, v in record.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                }
            )
    return {"records": records, "offset": offset + end, "reset": offset == 0}
