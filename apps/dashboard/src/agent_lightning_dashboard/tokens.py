"""Token ids to text, with the policy's tokenizer when one is given (``transformers``' ``AutoTokenizer``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class Decoder:
    """Decodes ids one by one (each token's own text, cached); without a tokenizer ``decode`` returns ``None``.

    :param path: a model folder (or hub name already in the local cache) holding the policy's tokenizer, or a
        trainer's checkpoint folder (its newest ``checkpoint-*`` folder is used).
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.error: str | None = None
        self._tokenizer: Any = None
        self._loaded = path is None
        self._cache: dict[int, str] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str | None:
        return self.path if self._tokenizer is not None else None

    def load(self) -> None:
        """Load the tokenizer now (the first ``decode`` does it otherwise); errors are kept in :attr:`error`."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            try:
                from transformers import AutoTokenizer

                assert self.path is not None
                self._tokenizer = AutoTokenizer.from_pretrained(_model_folder(self.path), local_files_only=True)
            except Exception as exc:  # shown on the page: ids are shown instead of text
                self.error = f"cannot load the tokenizer at {self.path!r}: {type(exc).__name__}: {exc}"
                logger.warning("%s", self.error)

    def __call__(self, ids: Sequence[int]) -> list[str] | None:
        self.load()
        tokenizer = self._tokenizer
        if tokenizer is None:
            return None
        cache = self._cache
        missing = [i for i in set(ids) if i not in cache]
        for token in missing:
            try:
                cache[token] = tokenizer.decode([token], skip_special_tokens=False)
            except Exception:
                cache[token] = f"<{token}>"
        return [cache[i] for i in ids]


def _model_folder(path: str) -> str:
    """``path``, or the newest ``checkpoint-*`` folder in it when ``path`` is a trainer's checkpoint folder."""
    folder = Path(path)
    if folder.is_dir() and not (folder / "tokenizer_config.json").exists():
        checkpoints = sorted(p for p in folder.glob("checkpoint-*") if (p / "tokenizer_config.json").exists())
        if checkpoints:
            return str(checkpoints[-1])
    return path
