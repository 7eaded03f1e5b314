"""Datasets of tasks: JSONL, JSON, CSV files, or Hugging Face ``datasets``."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def load_dataset(source: str | Path | Iterable[Any], *, split: str = "train", limit: int | None = None) -> list[Any]:
    """Load tasks from a file path, ``hf:NAME`` (Hugging Face ``datasets``), a saved dataset folder, or a list.

    Each task is a JSON value (usually a dict) handed to the agent as ``task``.
    """
    if not isinstance(source, (str, Path)):
        items = list(source)
    else:
        text = str(source)
        path = Path(text)
        if text.startswith("hf:"):
            items = _load_hf(text[3:], split)
        elif path.is_dir():
            items = _load_hf_disk(path, split)
        elif not path.exists():
            raise FileNotFoundError(f"dataset {text!r} does not exist (use a .jsonl/.json/.csv file or hf:NAME)")
        elif path.suffix == ".jsonl":
            items = []
            with path.open(encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if line.strip():
                        try:
                            items.append(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise ValueError(f"{path}:{number}: not valid JSON: {exc.msg}") from None
        elif path.suffix == ".json":
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(loaded, list):
                raise ValueError(f"{path} must hold a JSON list of tasks, not {type(loaded).__name__}")
            items = loaded
        elif path.suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as handle:
                items = list(csv.DictReader(handle))
        else:
            raise ValueError(f"unsupported dataset format {path.suffix!r} for {path}; use .jsonl, .json or .csv")
    return items if limit is None else items[:limit]


def _load_hf(name: str, split: str) -> list[Any]:
    try:
        import datasets  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        raise ImportError("hf: datasets need the `datasets` package: pip install datasets") from None
    return list(datasets.load_dataset(name, split=split))


def _load_hf_disk(path: Path, split: str) -> list[Any]:
    try:
        import datasets  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        raise ImportError("dataset folders need the `datasets` package: pip install datasets") from None
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        loaded = loaded[split]
    return list(loaded)
