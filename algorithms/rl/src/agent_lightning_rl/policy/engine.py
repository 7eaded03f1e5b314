"""The generation worker: one thread that batches concurrent requests and applies weight swaps between batches.

Batching: the worker takes the oldest waiting request, then gathers every other request that is waiting (or arrives
within ``batch_wait_s``) up to ``max_batch_size`` rows (a request with ``n`` choices and ``p`` prompts is ``n * p``
rows; one request is never split). The rows are left-padded into one batch, prefilled together, then decoded step by
step with a shared KV cache; each row samples with its own parameters and generator and stops on its own (EOS, stop
ids, stop strings, max tokens); finished rows are dropped from the batch. Requests arriving while a batch runs wait
for the next batch (static batching, not continuous batching).

Prefix caching: agents send the same long preamble with every call (system prompt, tool schemas, worked examples),
and on a CPU its prefill dominates generation time. When the rows of a batch share a prefix of at least
``min_prefix_tokens`` tokens, the engine prefills that prefix once (batch of one), keeps its KV cache (a few, least
recently used first out; ``prefix_cache_size=0`` turns this off), and prefills only each row's remainder on top of it:
``[prefix][padding][suffix]``, the padding masked out, positions continuing from the prefix. A later batch whose rows
all start with a cached prefix reuses it, a single request included. The cache is emptied on every weight swap, so
a prefix is never reused across versions. Outputs match a full prefill up to floating-point rounding.

Weight swaps (:meth:`GenerationEngine.update_weights`) are applied by the worker between batches, so every response
is generated entirely by one version: requests in flight finish on the weights they started with, and every batch
that starts after the swap returns uses the new weights and reports the new version.
"""

from __future__ import annotations

import copy
import inspect
import logging
import queue
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

import torch

from ..batching import shared_prefix_length
from .sampling import LogprobsMode, SamplingParams, pick_token
from .text import CompletionText
from .weights import WeightsSource, copy_weights, read_state_dict

logger = logging.getLogger(__name__)


@dataclass
class RequestStarted:
    """The request's batch started; ``version`` is the weights version that generates every token of it."""

    version: str


@dataclass
class ChoiceDelta:
    """New tokens of one choice: ids, their logprobs and top alternatives, and the text they release.

    ``finish_reason`` is set on the last delta of a choice: ``"stop"`` (EOS, stop id or stop string), ``"length"``,
    or ``"abort"`` (cancelled). Concatenating a choice's deltas gives all sampled ids and its final text.
    """

    choice: int
    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]]
    text: str
    finish_reason: str | None = None


@dataclass
class RequestFailed:
    """Generation failed; ``message`` says why."""

    message: str


EngineEvent = Union[RequestStarted, ChoiceDelta, RequestFailed]


@dataclass
class GenerationRequest:
    """Prompts (token ids) to complete ``n`` times each; choice ``p * n + j`` is prompt ``p``'s ``j``-th sample."""

    prompts: list[list[int]]
    params: SamplingParams
    on_event: Callable[[EngineEvent], None]
    n: int = 1
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def rows(self) -> int:
        """Batch rows this request takes."""
        return len(self.prompts) * self.n

    def cancel(self) -> None:
        """Stop generating for this request at the next step (e.g. the client went away)."""
        self.cancelled.set()


@dataclass
class _Row:
    request: GenerationRequest
    choice: int
    prompt: list[int]
    generator: torch.Generator
    text: CompletionText
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    tops: list[list[tuple[int, float]]] = field(default_factory=list)
    sent_ids: int = 0
    sent_chars: int = 0
    finish_reason: str | None = None


@dataclass
class _Swap:
    state: Any
    version: str
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


_WAKE = object()
_STOP = object()


class GenerationEngine:
    """Owns the model; runs generation in one worker thread. See the module docstring for batching and swaps."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        version: str = "v0",
        max_batch_size: int = 8,
        batch_wait_s: float = 0.005,
        logprobs_mode: LogprobsMode = "raw",
        prefix_cache_size: int = 4,
        min_prefix_tokens: int = 32,
    ) -> None:
        if prefix_cache_size < 0 or min_prefix_tokens < 1:
            raise ValueError(
                "prefix_cache_size must be >= 0 and min_prefix_tokens >= 1, "
                f"got {prefix_cache_size} and {min_prefix_tokens}"
            )
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if logprobs_mode not in ("raw", "processed"):
            raise ValueError(f"logprobs_mode must be 'raw' or 'processed', got {logprobs_mode!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.logprobs_mode: LogprobsMode = logprobs_mode
        self._version = version
        self._queue: queue.Queue[Any] = queue.Queue()
        self._carry: GenerationRequest | None = None
        self._swaps: list[_Swap] = []
        self._swaps_lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._device = next(model.parameters()).device
        self._eos_ids = self._find_eos_ids(model, tokenizer)
        self._pad_id = self._find_pad_id(tokenizer, self._eos_ids)
        self._context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        forward_params = inspect.signature(model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in forward_params
        # newer transformers renamed ``past_key_values`` to ``cache`` (input and output)
        self._cache_kwarg = "cache" if "cache" in forward_params else "past_key_values"
        get_embeddings = getattr(model, "get_input_embeddings", None)
        embeddings = get_embeddings() if callable(get_embeddings) else None
        self._vocab: int | None = getattr(embeddings, "num_embeddings", None)
        self._stats_lock = threading.Lock()
        self._batch_rows: Counter[int] = Counter()
        self._batch_requests: Counter[int] = Counter()
        self._tokens_generated = 0
        self.prefix_cache_size = prefix_cache_size
        self.min_prefix_tokens = min_prefix_tokens
        self._prefixes: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._prefix_supported: bool | None = None  # known after the first prefix is computed
        self._prefill_tokens = 0
        self._prefix_tokens_reused = 0

    # ------------------------------------------------------------------ public API
    @property
    def version(self) -> str:
        """The weights version new batches use."""
        return self._version

    @property
    def context_length(self) -> int | None:
        """The model's maximum sequence length (prompt + completion), when its config says."""
        return self._context

    @property
    def running(self) -> bool:
        """Whether the worker thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self.running:
            return
        self._thread = threading.Thread(target=self._loop, name="agl-policy-generation", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the current batch, fail waiting requests, stop the worker."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None
        pending = [self._carry] if self._carry else []
        self._carry = None
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, GenerationRequest):
                pending.append(item)
        for request in pending:
            request.on_event(RequestFailed("the policy server is shutting down"))
        self._fail_swaps(RuntimeError("the policy server stopped before the weight swap was applied"))

    def submit(self, request: GenerationRequest) -> GenerationRequest:
        """Queue a request; events arrive through ``request.on_event`` (called from the worker thread).

        Raises ``ValueError`` when a prompt is empty or leaves no room in the model's context.
        """
        if not self.running:
            raise RuntimeError("the generation engine is not running; call start() first")
        if not request.prompts or request.n < 1:
            raise ValueError("a request needs at least one prompt and n >= 1")
        for prompt in request.prompts:
            if not prompt:
                raise ValueError("prompt is empty: nothing to condition on")
            if self._context is not None and len(prompt) >= self._context:
                raise ValueError(
                    f"prompt has {len(prompt)} tokens; the model's context is {self._context} tokens"
                    " and at least one must be left for the completion"
                )
            if self._vocab is not None and not all(0 <= t < self._vocab for t in prompt):
                raise ValueError(f"prompt has token ids outside the vocabulary [0, {self._vocab})")
        self._queue.put(request)
        return request

    def update_weights(self, source: WeightsSource, version: str, timeout: float | None = None) -> None:
        """Load new weights and make ``version`` the served version; returns once they are in use.

        The tensors are read in the calling thread; the copy happens between batches (see the module docstring).
        Raises ``ValueError`` for weights that do not fit the model (nothing is changed then).
        """
        if not version:
            raise ValueError("version must be a non-empty string")
        state = read_state_dict(source)
        if not self.running:
            with self._model_lock:
                self._apply(state, version)
            return
        swap = _Swap(state, version)
        with self._swaps_lock:
            self._swaps.append(swap)
        self._queue.put(_WAKE)
        if not swap.done.wait(timeout):
            raise TimeoutError(f"weights {version!r} were not applied within {timeout} s (a long batch is running)")
        if swap.error is not None:
            raise swap.error

    def stats(self) -> dict[str, Any]:
        """Counters: batches run, rows and requests per batch (histograms), largest batch, tokens generated."""
        with self._stats_lock:
            return {
                "batches": sum(self._batch_rows.values()),
                "requests": sum(k * v for k, v in self._batch_requests.items()),
                "rows": sum(k * v for k, v in self._batch_rows.items()),
                "max_batch_rows": max(self._batch_rows, default=0),
                "max_batch_requests": max(self._batch_requests, default=0),
                "batch_rows_histogram": dict(sorted(self._batch_rows.items())),
                "tokens_generated": self._tokens_generated,
                "prefill_tokens": self._prefill_tokens,
                "prefix_tokens_reused": self._prefix_tokens_reused,
                "cached_prefixes": len(self._prefixes),
                "version": self._version,
            }

    # ------------------------------------------------------------------ worker
    def _loop(self) -> None:
        while True:
            first = self._carry if self._carry is not None else self._queue.get()
            self._carry = None
            if first is _STOP:
                self._apply_swaps()
                return
            if first is _WAKE:
                self._apply_swaps()
                continue
            batch, stopping = self._gather(first)
            self._apply_swaps()
            live = [r for r in batch if not r.cancelled.is_set()]
            if live:
                with self._model_lock:
                    self._run_batch(live, self._version)
            if stopping:
                self._apply_swaps()
                return

    def _gather(self, first: GenerationRequest) -> tuple[list[GenerationRequest], bool]:
        batch, rows = [first], first.rows
        deadline = time.monotonic() + self.batch_wait_s
        while rows < self.max_batch_size:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            if item is _WAKE:
                continue
            if rows + item.rows > self.max_batch_size:
                self._carry = item
                break
            batch.append(item)
            rows += item.rows
        return batch, False

    def _apply_swaps(self) -> None:
        with self._swaps_lock:
            swaps, self._swaps = self._swaps, []
        for swap in swaps:
            try:
                with self._model_lock:
                    self._apply(swap.state, swap.version)
            except BaseException as exc:  # reported to the caller of update_weights
                swap.error = exc
            finally:
                swap.done.set()

    def _fail_swaps(self, error: BaseException) -> None:
        with self._swaps_lock:
            swaps, self._swaps = self._swaps, []
        for swap in swaps:
            swap.error = error
            swap.done.set()

    def _apply(self, state: Any, version: str) -> None:
        started = time.perf_counter()
        count = copy_weights(self.model, state)
        self._prefixes.clear()  # their keys and values came from the old weights
        self._version = version
        logger.info("policy weights %s applied (%d tensors) in %.2f s", version, count, time.perf_counter() - started)

    # ------------------------------------------------------------------ one batch
    def _new_rows(self, requests: list[GenerationRequest]) -> list[_Row]:
        rows: list[_Row] = []
        for request in requests:
            for p, prompt in enumerate(request.prompts):
                for j in range(request.n):
                    choice = p * request.n + j
                    seed = request.params.seed
                    seed = (seed + choice) % 2**64 if seed is not None else secrets.randbits(63)
                    generator = torch.Generator(device=self._device).manual_seed(seed)
                    text = CompletionText(self.tokenizer, request.params.stop)
                    rows.append(_Row(request, choice, prompt, generator, text))
        return rows

    def _run_batch(self, requests: list[GenerationRequest], version: str) -> None:
        try:
            rows = self._new_rows(requests)
            with self._stats_lock:
                self._batch_rows[len(rows)] += 1
                self._batch_requests[len(requests)] += 1
            for request in requests:
                request.on_event(RequestStarted(version))
            with torch.inference_mode():
                self._decode(rows)
        except Exception as exc:
            logger.exception("generation failed")
            for request in requests:
                request.on_event(RequestFailed(f"generation failed: {type(exc).__name__}: {exc}"))

    def _decode(self, rows: list[_Row]) -> None:
        shared, prefix_cache = self._shared_prefix(rows)
        suffixes = [r.prompt[shared:] for r in rows]
        width = max(len(s) for s in suffixes)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for i, suffix in enumerate(suffixes):
            input_ids[i, width - len(suffix) :] = torch.tensor(suffix, dtype=torch.long)
            mask[i, shared + width - len(suffix) :] = 1
        input_ids, mask = input_ids.to(self._device), mask.to(self._device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        extra: dict[str, Any] = {"logits_to_keep": 1} if self._logits_to_keep else {}
        if prefix_cache is not None:
            extra[self._cache_kwarg] = prefix_cache
        with self._stats_lock:
            self._prefill_tokens += sum(len(s) for s in suffixes)
            self._prefix_tokens_reused += shared * len(rows)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
        cache = self._cache_of(out)
        logits = out.logits[:, -1, :].float()
        last_position = positions[:, -1]
        active = list(range(len(rows)))
        while True:
            raw = torch.log_softmax(logits, dim=-1)
            next_tokens: list[int] = []
            for k, index in enumerate(active):
                row = rows[index]
                pick = pick_token(logits[k], raw[k], row.request.params, row.generator, self.logprobs_mode)
                next_tokens.append(pick.token_id)
                self._advance(row, pick.token_id, pick.logprob, pick.top)
            with self._stats_lock:
                self._tokens_generated += len(active)
            keep = [k for k, index in enumerate(active) if rows[index].finish_reason is None]
            if not keep:
                return
            if len(keep) < len(active):
                selector = torch.tensor(keep, device=self._device)
                cache.batch_select_indices(selector)
                mask, last_position = mask[selector], last_position[selector]
                next_tokens = [next_tokens[k] for k in keep]
                active = [active[k] for k in keep]
            step = torch.tensor(next_tokens, dtype=torch.long, device=self._device)[:, None]
            mask = torch.cat([mask, torch.ones_like(step)], dim=-1)
            last_position = last_position + 1
            out = self.model(
                input_ids=step,
                attention_mask=mask,
                position_ids=last_position[:, None],
                use_cache=True,
                **{self._cache_kwarg: cache},
            )
            cache = self._cache_of(out)
            logits = out.logits[:, -1, :].float()

    def _advance(self, row: _Row, token: int, logprob: float, top: list[tuple[int, float]]) -> None:
        params = row.request.params
        row.ids.append(token)
        row.logprobs.append(logprob)
        row.tops.append(top)
        stopped_by_text = row.text.update(row.ids)
        if row.request.cancelled.is_set():
            row.finish_reason = "abort"
        elif stopped_by_text or token in params.stop_token_ids or (token in self._eos_ids and not params.ignore_eos):
            row.finish_reason = "stop"
        elif len(row.ids) >= params.max_tokens or (
            self._context is not None and len(row.prompt) + len(row.ids) >= self._context
        ):
            row.finish_reason = "length"
        release = len(row.text.text) if row.finish_reason else row.text.releasable()
        if row.finish_reason is None and release < len(row.text.text) and release <= row.sent_chars:
            return  # held back: a partial character or a possible stop string; send these ids with the text
        row.request.on_event(
            ChoiceDelta(
                choice=row.choice,
                token_ids=row.ids[row.sent_ids :],
                logprobs=row.logprobs[row.sent_ids :],
                top_logprobs=row.tops[row.sent_ids :],
                text=row.text.text[row.sent_chars : release],
                finish_reason=row.finish_reason,
            )
        )
        row.sent_ids, row.sent_chars = len(row.ids), release

    # ------------------------------------------------------------------ prefix cache
    def _shared_prefix(self, rows: list[_Row]) -> tuple[int, Any]:
        """``(length, KV cache expanded to the batch)`` of a cached prefix every row starts with, or ``(0, None)``."""
        if not self.prefix_cache_size or self._prefix_supported is False:
            return 0, None
        prompts = [r.prompt for r in rows]
        room = min(len(p) for p in prompts) - 1  # every row keeps at least one token to prefill
        best: tuple[int, ...] | None = None
        for key in self._prefixes:
            longer = best is None or len(key) > len(best)
            if len(key) <= room and longer and all(tuple(p[: len(key)]) == key for p in prompts):
                best = key
        if best is None:
            common = shared_prefix_length(prompts)  # 0 for a single row
            if common >= self.min_prefix_tokens:
                best = self._compute_prefix(tuple(prompts[0][:common]))
        if best is None:
            return 0, None
        self._prefixes.move_to_end(best)
        cache = copy.deepcopy(self._prefixes[best])
        if len(rows) > 1:
            cache.batch_repeat_interleave(len(rows))
        return len(best), cache

    def _compute_prefix(self, tokens: tuple[int, ...]) -> tuple[int, ...] | None:
        ids = torch.tensor([tokens], dtype=torch.long, device=self._device)
        extra = {"logits_to_keep": 1} if self._logits_to_keep else {}
        out = self.model(input_ids=ids, use_cache=True, **extra)
        cache = self._cache_of(out)
        if self._prefix_supported is None:
            layers = getattr(cache, "layers", None)
            # only plain full-attention layers can be copied, repeated and extended (no sliding windows, no states)
            self._prefix_supported = (
                isinstance(layers, list)
                and bool(layers)
                and all(type(layer).__name__ == "DynamicLayer" for layer in layers)
                and hasattr(cache, "batch_repeat_interleave")
            )
            if not self._prefix_supported:
                logger.info("prefix caching is off: %s's KV cache cannot be shared", type(self.model).__name__)
                return None
        with self._stats_lock:
            self._prefill_tokens += len(tokens)
        self._prefixes[tokens] = cache
        while len(self._prefixes) > self.prefix_cache_size:
            self._prefixes.popitem(last=False)
        return tokens

    # ------------------------------------------------------------------ helpers
    def _cache_of(self, out: Any) -> Any:
        cache = out.get(self._cache_kwarg) if self._cache_kwarg in out else out.get("past_key_values")
        if cache is None or not hasattr(cache, "batch_select_indices"):
            raise RuntimeError(f"{type(self.model).__name__} returned no KV cache object; it cannot be served")
        return cache

    @staticmethod
    def _find_eos_ids(model: torch.nn.Module, tokenizer: Any) -> frozenset[int]:
        ids: set[int] = set()
        for source in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return frozenset(ids)

    @staticmethod
    def _find_pad_id(tokenizer: Any, eos_ids: frozenset[int]) -> int:
        pad = getattr(tokenizer, "pad_token_id", None)
        if isinstance(pad, int):
            return pad
        return min(eos_ids) if eos_ids else 0
