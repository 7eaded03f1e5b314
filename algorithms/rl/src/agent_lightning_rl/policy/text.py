"""Incremental detokenization of one completion: stop strings and safe streaming deltas."""

from __future__ import annotations

from typing import Any

REPLACEMENT_CHAR = "\ufffd"


class CompletionText:
    """Tracks the text of a growing completion.

    The text is always ``decode(all ids so far)`` (special tokens skipped), never pieced together per token, so it
    equals what a client decoding the returned ids gets. :meth:`update` reports whether a stop string appeared;
    :meth:`releasable` says how much text may be streamed now: it holds back a trailing partial UTF-8 character
    and any suffix that could still become a stop string, so streamed text never has to be taken back.
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
        self._longest_stop = max((len(s) for s in stop), default=0)
        self.text = ""
        self.stopped = False

    def update(self, ids: list[int]) -> bool:
        """Re-decode after new ids; returns True (and cuts the text) when a stop string appeared."""
        previous = len(self.text)
        text = self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if self._stop:
            start = max(0, previous - self._longest_stop)
            hits = [pos for s in self._stop if (pos := text.find(s, start)) >= 0]
            if hits:
                self.text = text[: min(hits)]
                self.stopped = True
                return True
        self.text = text
        return False

    def releasable(self) -> int:
        """How many characters of :attr:`text` are final (safe to stream)."""
        if self.stopped:
            return len(self.text)
        end = len(self.text)
        while end and self.text[end - 1] == REPLACEMENT_CHAR:
            end -= 1
        for length in range(min(self._longest_stop - 1, end), 0, -1):
            tail = self.text[end - length : end]
            if any(s.startswith(tail) for s in self._stop):
                return end - length
        return end
