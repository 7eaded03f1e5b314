"""The update step shared by PPO and GRPO: forward passes on captured token ids, losses, optimizer, DDP.

A :class:`PolicyLearner` owns the trainable policy (optionally LoRA-wrapped and with a value head), the frozen
reference used for the KL term, and the optimizer. Samples arrive with one advantage per completion token;
:meth:`PolicyLearner.update` runs ``ppo_epochs`` passes of mini-batches (gradient accumulation over
micro-batches), each optimizer step normalizing the loss by the mini-batch's trainable-token count over all ranks.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from agent_lightning.types import Sample
from torch import nn

from . import losses
from .batching import TokenBatch, collate, pad_rows
from .config import PPOConfig, RLConfig
from .distributed import DistInfo
from .fused import chunked_token_logprobs
from .importance import ImportanceStats, truncated_importance_weights
from .staleness import staleness_of


def _base_model(model: nn.Module) -> Any:
    """The plain transformers model (under a PEFT wrapper, if any); typed ``Any`` for its dynamic API."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def is_peft(model: nn.Module) -> bool:
    return callable(getattr(model, "disable_adapter", None)) and callable(getattr(model, "get_base_model", None))


def apply_lora(model: nn.Module, config: RLConfig) -> nn.Module:
    """Wrap ``model`` with LoRA adapters from ``config.lora`` (needs ``pip install peft``)."""
    assert config.lora is not None
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ImportError("LoRA training needs peft: pip install 'agent-lightning-rl[lora]'") from exc
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)  # type: ignore[no-any-return]


@contextmanager
def merged_weights(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """The full (LoRA-merged) state dict under the plain model's key names; valid inside the ``with`` block."""
    if not is_peft(model):
        yield dict(model.state_dict())
        return
    model.merge_adapter()  # type: ignore[operator]
    try:
        state = {
            key.replace(".base_layer", ""): value
            for key, value in _base_model(model).state_dict().items()
            if "lora_" not in key
        }
        yield state
    finally:
        model.unmerge_adapter()  # type: ignore[operator]


class PolicyModule(nn.Module):
    """The causal LM plus (PPO) a scalar value head; returns the completion tokens' log-probs, entropy and values.

    When the LM head is a plain linear layer, log-probs go through :func:`~agent_lightning_rl.fused.
    chunked_token_logprobs` on the rows that carry loss only (no ``[B, C, vocab]`` logits are kept for backward);
    otherwise, or when the entropy needs a gradient, through the model's full logits.
    """

    def __init__(self, model: nn.Module, value_head: bool = False, fused: bool = True) -> None:
        super().__init__()
        self.model = model
        config: Any = model.config
        hidden = int(config.hidden_size)
        self.value_head = nn.Linear(hidden, 1) if value_head else None
        if self.value_head is not None:
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
            device = next(model.parameters()).device
            self.value_head.to(device)
        base = _base_model(model)
        self._keep = "logits_to_keep" in inspect.signature(base.forward).parameters
        head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        config = getattr(base, "config", None)
        scaled = any(
            getattr(config, name, None) not in (None, 1.0)
            for name in ("final_logit_softcapping", "logit_scale", "output_multiplier", "logits_scaling")
        )
        prefix = getattr(base, "base_model_prefix", "")
        self._share_prefix = True
        backbone = getattr(base, prefix, None)
        # newer transformers renamed ``past_key_values`` to ``cache`` (input and output)
        takes_cache = backbone is not None and "cache" in inspect.signature(backbone.forward).parameters
        self._cache_kwarg = "cache" if takes_cache else "past_key_values"
        self.fused = (
            fused
            and type(head) is nn.Linear
            and head.bias is None
            and not scaled
            and isinstance(getattr(base, prefix, None), nn.Module)
        )

    def _hidden_states(self, backbone: Any, batch: TokenBatch) -> tuple[torch.Tensor, int]:
        """The backbone's last hidden states and the column they start at.

        A prefix shared by every row (``batch.shared_prefix``) runs once, batch of one; its keys and values are
        repeated for each row (a differentiable copy, so the gradient through them is the sum over the rows, as if
        each row had run it) and the rest of each row attends to them. Backward costs shrink the same way.
        """
        shared = (
            batch.shared_prefix if self._share_prefix and not getattr(backbone, "gradient_checkpointing", False) else 0
        )
        if shared:
            prefix = backbone(
                input_ids=batch.input_ids[:1, :shared], position_ids=batch.position_ids[:1, :shared], use_cache=True
            )
            cache = prefix.get(self._cache_kwarg) if self._cache_kwarg in prefix else prefix.get("past_key_values")
            layers = getattr(cache, "layers", None)
            if isinstance(layers, list) and layers and all(type(x).__name__ == "DynamicLayer" for x in layers):
                cache.batch_repeat_interleave(batch.input_ids.shape[0])
                out = backbone(
                    input_ids=batch.input_ids[:, shared:],
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids[:, shared:],
                    use_cache=True,
                    **{self._cache_kwarg: cache},
                )
                return out.last_hidden_state, shared
            self._share_prefix = False  # a cache that cannot be repeated (sliding windows, recurrent state)
        out = backbone(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        )
        return out.last_hidden_state, 0

    def forward(  # type: ignore[override]
        self,
        batch: TokenBatch,
        rows: torch.Tensor | None = None,
        *,
        temperature: float = 1.0,
        want_values: bool = False,
        entropy_grad: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(logprobs, entropy, values)``, each ``[B, C]``; with ``rows`` (a ``[B, C]`` mask) the fused path
        computes only those positions (the others are 0)."""
        want_values = want_values and self.value_head is not None
        width_p = batch.prompt_width
        if self.fused and not entropy_grad:
            base = _base_model(self.model)
            backbone = getattr(base, base.base_model_prefix)
            states, offset = self._hidden_states(backbone, batch)
            hidden = states[:, width_p - 1 - offset : -1]
            select = (rows > 0) if rows is not None else torch.ones_like(batch.completion_ids, dtype=torch.bool)
            head = base.get_output_embeddings()
            lp, ent = chunked_token_logprobs(hidden[select], head.weight, batch.completion_ids[select], temperature)
            logprobs = torch.zeros(batch.completion_ids.shape, dtype=lp.dtype, device=lp.device)
            entropy = torch.zeros_like(logprobs)
            logprobs = logprobs.index_put((select,), lp)
            entropy[select] = ent
            values = self.value_head(hidden.float()).squeeze(-1) if want_values else None  # type: ignore[misc]
            return logprobs, entropy, values
        width_c = batch.completion_width
        kwargs: dict[str, Any] = {"logits_to_keep": width_c + 1} if self._keep else {}
        out = self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            output_hidden_states=want_values,
            **kwargs,
        )
        logits = out.logits[:, -(width_c + 1) : -1] if self._keep else out.logits[:, width_p - 1 : -1]
        if temperature != 1.0:
            logits = logits / temperature
        logprobs = losses.selective_logprobs(logits, batch.completion_ids)
        if entropy_grad:
            entropy = losses.entropy_from_logits(logits)
        else:
            with torch.no_grad():
                entropy = losses.entropy_from_logits(logits)
        values = None
        if want_values:
            assert self.value_head is not None
            values = self.value_head(out.hidden_states[-1][:, width_p - 1 : -1].float()).squeeze(-1)
        return logprobs, entropy, values


@dataclass
class Scored:
    """Per-sample tensors computed without gradients before an update."""

    logprobs: list[torch.Tensor]
    values: list[torch.Tensor] | None
    ref_logprobs: list[torch.Tensor] | None


class PolicyLearner:
    """Trains ``model`` on samples with per-token advantages (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        config: RLConfig,
        *,
        pad_id: int,
        reference: nn.Module | None = None,
        device: torch.device | str = "cpu",
        dist: DistInfo | None = None,
    ) -> None:
        self.config = config
        self.pad_id = pad_id
        self.device = torch.device(device)
        self.dist = dist or DistInfo()
        self.ppo = isinstance(config, PPOConfig)
        if config.lora is not None and not is_peft(model):
            model = apply_lora(model, config)
        self.model = model
        if config.gradient_checkpointing:
            _base_model(model).gradient_checkpointing_enable()  # type: ignore[operator]
            model.train()
        else:
            model.eval()  # no dropout: the ratio must compare like with like
        self.module = PolicyModule(model, value_head=self.ppo).to(self.device)
        self.reference = reference
        if reference is not None:
            reference.eval().requires_grad_(False)
        self.wrapped: nn.Module = self.module
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.module, device_ids=ids)
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.steps = 0
        self._importance = ImportanceStats()
        self.threads: Callable[[], int] | None = None
        """When set, the intra-op threads to use, asked before each micro-batch (asynchronous collection on CPU:
        fewer while the engine generates, all of them while it is idle)."""

    # ------------------------------------------------------------------ forward passes
    def _autocast(self) -> Any:
        if self.config.autocast is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, self.config.autocast))

    @property
    def _temperature(self) -> float:
        return self.config.temperature if self.config.temperature > 0 else 1.0

    def _micro_batches(self, samples: Sequence[Sample]) -> Iterator[tuple[int, int, TokenBatch]]:
        size = self.config.micro_batch_size
        for start in range(0, len(samples), size):
            chunk = samples[start : start + size]
            yield start, start + len(chunk), collate(chunk, self.pad_id, self.device)

    def _reference_logprobs(self, batch: TokenBatch) -> torch.Tensor:
        if self.reference is not None:
            logprobs, _, _ = self._reference_view()(batch, batch.loss_mask, temperature=self._temperature)
        elif is_peft(self.model):
            with self.model.disable_adapter():  # type: ignore[operator]
                logprobs, _, _ = self.module(batch, batch.loss_mask, temperature=self._temperature)
        else:
            raise RuntimeError("KL to a reference needs a reference model (or LoRA, whose base is the reference)")
        return logprobs

    def _reference_view(self) -> PolicyModule:
        if not hasattr(self, "_ref_module"):
            assert self.reference is not None
            self._ref_module = PolicyModule(self.reference)
        return self._ref_module

    @torch.no_grad()
    def score(self, samples: Sequence[Sample], *, logprobs: bool = True, values: bool = False) -> Scored:
        """Current log-probs (and values, and reference log-probs when ``kl_coef > 0``) of each sample's tokens."""
        out_lp: list[torch.Tensor] = []
        out_v: list[torch.Tensor] | None = [] if values else None
        out_ref: list[torch.Tensor] | None = [] if self.config.kl_coef > 0 and logprobs else None
        for start, _, batch in self._micro_batches(samples):
            with self._autocast():
                lp, _, vals = self.module(batch, batch.loss_mask, temperature=self._temperature, want_values=values)
                ref = self._reference_logprobs(batch) if out_ref is not None else None
            for i in range(lp.shape[0]):
                n = len(samples[start + i].completion_token_ids)
                out_lp.append(lp[i, :n].cpu())
                if out_v is not None and vals is not None:
                    out_v.append(vals[i, :n].float().cpu())
                if out_ref is not None and ref is not None:
                    out_ref.append(ref[i, :n].cpu())
        return Scored(out_lp, out_v, out_ref)

    # ------------------------------------------------------------------ the update
    def _global_sum(self, value: float) -> float:
        if not self.dist.enabled:
            return value
        import torch.distributed as tdist

        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        tdist.all_reduce(tensor)
        return float(tensor.item())

    def update(
        self,
        samples: Sequence[Sample],
        advantages: Sequence[torch.Tensor],
        *,
        old: Scored | None = None,
        returns: Sequence[torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """Run ``ppo_epochs`` passes over ``samples`` in mini-batches; returns averaged metrics.

        ``advantages[i]`` has one entry per completion token of ``samples[i]``. ``old`` holds the pre-update
        log-probs (needed when there is more than one optimizer step) and, for PPO, the old values; ``returns``
        the value targets.
        """
        if len(advantages) != len(samples):
            raise ValueError(f"{len(advantages)} advantage rows for {len(samples)} samples")
        cfg = self.config
        mini = cfg.mini_batch_size or len(samples)
        single_step = cfg.ppo_epochs == 1 and mini >= len(samples)
        if old is None and not single_step and not cfg.use_rollout_logprobs:
            raise ValueError("several optimizer steps per iteration need the pre-update log-probs (score() first)")
        started = time.perf_counter()
        sums: dict[str, float] = {}
        weight = 0.0
        tokens = 0
        self._importance = ImportanceStats()
        for _ in range(cfg.ppo_epochs):
            for m_start in range(0, len(samples), mini):
                m_end = min(len(samples), m_start + mini)
                local_tokens = float(sum(s.num_trainable_tokens for s in samples[m_start:m_end]))
                normalizer = max(1.0, self._global_sum(local_tokens)) / self.dist.world_size
                micro = list(self._micro_batches(samples[m_start:m_end]))
                for k, (start, end, batch) in enumerate(micro):
                    if self.threads is not None and (wanted := self.threads()) != torch.get_num_threads():
                        torch.set_num_threads(wanted)
                    lo, hi = m_start + start, m_start + end
                    sync = k == len(micro) - 1
                    context = self.wrapped.no_sync() if (self.dist.enabled and not sync) else nullcontext()  # type: ignore[operator]
                    with context, self._autocast():
                        stats = self._loss_and_backward(
                            batch, samples[lo:hi], advantages[lo:hi], old, returns, lo, normalizer
                        )
                    tokens += batch.num_tokens
                    n = float(batch.loss_mask.sum())
                    weight += n
                    for key, value in stats.items():
                        sums[key] = sums.get(key, 0.0) + value * n
                grad_norm = self._step()
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm
        elapsed = time.perf_counter() - started
        if self.dist.enabled:  # every rank's metrics (token-weighted) and tokens, not just this rank's shard
            import torch.distributed as tdist

            keys = sorted(k for k in sums if k != "grad_norm")
            totals = torch.tensor(
                [sums[k] for k in keys] + [weight, float(tokens)], dtype=torch.float64, device=self.device
            )
            tdist.all_reduce(totals)
            sums.update(zip(keys, totals[: len(keys)].tolist(), strict=True))
            weight, tokens = float(totals[-2]), int(totals[-1])
        steps = cfg.ppo_epochs * math.ceil(len(samples) / mini)
        importance = self._importance
        if self.dist.enabled:
            import torch.distributed as tdist

            sums_is = torch.tensor(
                [importance.ratio_sum, importance.truncated, importance.tokens], dtype=torch.float64, device=self.device
            )
            tdist.all_reduce(sums_is)
            top = torch.tensor([importance.ratio_max], dtype=torch.float64, device=self.device)
            tdist.all_reduce(top, op=tdist.ReduceOp.MAX)
            importance = ImportanceStats(float(sums_is[0]), float(top[0]), float(sums_is[1]), float(sums_is[2]))
        metrics = {f"train/{k}": v / max(weight, 1.0) for k, v in sums.items() if k != "grad_norm"}
        metrics["train/grad_norm"] = sums.get("grad_norm", 0.0) / max(steps, 1)
        metrics["train/optimizer_steps"] = float(steps)
        metrics.update(importance.metrics())
        metrics["perf/update_tokens"] = float(tokens)
        metrics["perf/tokens_per_s"] = tokens / elapsed if elapsed > 0 else 0.0
        metrics["time/update_s"] = elapsed
        return metrics

    def nll_update(self, samples: Sequence[Sample]) -> dict[str, float]:
        """One pass of masked negative log-likelihood (supervised fine-tuning) over ``samples``.

        An optimizer step per mini-batch of ``mini_batch_size`` samples (default: all of them), micro-batches
        accumulated as in :meth:`update`; the loss of a step is the mean NLL of the trainable tokens (``loss_mask``
        1, the same masks as RL: tool output and other text the policy did not choose carry none) over every rank,
        at temperature 1.
        """
        cfg = self.config
        mini = cfg.mini_batch_size or len(samples)
        started = time.perf_counter()
        nll_sum = weight = grad_sum = 0.0
        correct = 0.0
        tokens = 0
        steps = 0
        for m_start in range(0, len(samples), mini):
            m_end = min(len(samples), m_start + mini)
            local_tokens = float(sum(s.num_trainable_tokens for s in samples[m_start:m_end]))
            normalizer = max(1.0, self._global_sum(local_tokens)) / self.dist.world_size
            micro = list(self._micro_batches(samples[m_start:m_end]))
            for k, (_, _, batch) in enumerate(micro):
                sync = k == len(micro) - 1
                context = self.wrapped.no_sync() if (self.dist.enabled and not sync) else nullcontext()  # type: ignore[operator]
                with context, self._autocast():
                    mask = batch.loss_mask
                    logprobs, _, _ = self.wrapped(batch, mask, temperature=1.0)
                    loss = -losses.masked_mean(logprobs, mask, normalizer)
                    loss.backward()
                with torch.no_grad():
                    picked = logprobs.detach().float()
                    nll_sum += float(-(picked * mask).sum())
                    correct += float(((picked > math.log(0.5)).float() * mask).sum())
                weight += float(mask.sum())
                tokens += batch.num_tokens
            grad_sum += self._step()
            steps += 1
        elapsed = time.perf_counter() - started
        if self.dist.enabled:
            import torch.distributed as tdist

            totals = torch.tensor([nll_sum, correct, weight, float(tokens)], dtype=torch.float64, device=self.device)
            tdist.all_reduce(totals)
            nll_sum, correct, weight, tokens = float(totals[0]), float(totals[1]), float(totals[2]), int(totals[3])
        return {
            "train/nll": nll_sum / max(weight, 1.0),
            "train/token_prob_above_half": correct / max(weight, 1.0),
            "train/grad_norm": grad_sum / max(steps, 1),
            "train/optimizer_steps": float(steps),
            "perf/update_tokens": float(tokens),
            "perf/tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0,
            "time/update_s": elapsed,
        }

    def _loss_and_backward(
        self,
        batch: TokenBatch,
        samples: Sequence[Sample],
        advantages: Sequence[torch.Tensor],
        old: Scored | None,
        returns: Sequence[torch.Tensor] | None,
        offset: int,
        normalizer: float,
    ) -> dict[str, float]:
        cfg = self.config
        width = batch.completion_width
        mask = batch.loss_mask
        logprobs, entropy, values = self.wrapped(
            batch,
            mask,
            temperature=self._temperature,
            want_values=self.ppo,
            entropy_grad=cfg.entropy_coef != 0,
        )
        adv = pad_rows(advantages, width).to(self.device)
        rows = range(offset, offset + len(samples))
        if cfg.use_rollout_logprobs and all(s.completion_logprobs is not None for s in samples):
            old_lp = pad_rows([torch.tensor(s.completion_logprobs) for s in samples], width).to(self.device)
        elif old is not None:
            old_lp = pad_rows([old.logprobs[i] for i in rows], width).to(self.device)
        else:
            old_lp = logprobs.detach()
        adv = self._importance_weighted(adv, samples, old_lp, mask, width)
        pg_loss, clip_frac = losses.policy_loss(
            logprobs, old_lp, adv, mask, cfg.clip_range, cfg.clip_range_high, normalizer=normalizer
        )
        loss = pg_loss
        stats: dict[str, float] = {}
        local_norm = float(mask.sum().clamp(min=1.0))
        if cfg.kl_coef > 0:
            if old is not None and old.ref_logprobs is not None:
                ref = pad_rows([old.ref_logprobs[i] for i in rows], width).to(self.device)
            else:
                with torch.no_grad():
                    ref = self._reference_logprobs(batch)
            kl = losses.kl_penalty(logprobs, ref, cfg.kl_estimator)
            kl_loss = losses.masked_mean(kl, mask, normalizer)
            loss = loss + cfg.kl_coef * kl_loss
            stats["kl"] = float(losses.masked_mean(kl.detach(), mask))
        if cfg.entropy_coef != 0:
            loss = loss - cfg.entropy_coef * losses.masked_mean(entropy, mask, normalizer)
        stats["entropy"] = float(losses.masked_mean(entropy.detach(), mask))
        if self.ppo and values is not None and returns is not None and isinstance(cfg, PPOConfig):
            ret = pad_rows([returns[i] for i in rows], width).to(self.device)
            old_v = (
                pad_rows([old.values[i] for i in rows], width).to(self.device)
                if old and old.values
                else values.detach()
            )
            v_loss = losses.value_loss(values, old_v, ret, mask, cfg.value_clip, normalizer=normalizer)
            loss = loss + cfg.value_coef * v_loss
            stats["value_loss"] = float(v_loss.detach()) * normalizer / local_norm
        loss.backward()
        with torch.no_grad():
            stats["policy_loss"] = float(pg_loss.detach()) * normalizer / local_norm
            stats["clip_frac"] = float(clip_frac)
            stats["ratio_mean"] = float(losses.masked_mean(torch.exp(logprobs.detach() - old_lp), mask))
            stats["advantage_mean"] = float(losses.masked_mean(adv, mask))
            # drift from the sampling (old) policy: free, unlike train/kl, which needs the reference's log-probs
            stats["policy_kl"] = float(losses.masked_mean(losses.kl_penalty(logprobs.detach(), old_lp, "k3"), mask))
        return stats

    def _importance_weighted(
        self, adv: torch.Tensor, samples: Sequence[Sample], old_lp: torch.Tensor, mask: torch.Tensor, width: int
    ) -> torch.Tensor:
        """``adv`` times the truncated importance weights of stale samples' tokens (:mod:`.importance`).

        The weight is positive and constant, so weighting the advantage weights the clipped surrogate. Samples
        without sampler log-probs, or trained against them already (``use_rollout_logprobs``), are left alone.
        """
        cap = self.config.importance_cap
        if cap is None or self.config.use_rollout_logprobs:
            return adv
        rows = [staleness_of(s) > 0 and s.completion_logprobs is not None for s in samples]
        if not any(rows):
            return adv
        sampler = pad_rows(
            [
                torch.tensor(s.completion_logprobs if r and s.completion_logprobs else [])
                for s, r in zip(samples, rows, strict=True)
            ],
            width,
        ).to(self.device)
        selected = mask * torch.tensor(rows, dtype=mask.dtype, device=mask.device).unsqueeze(-1)
        weights, stats = truncated_importance_weights(old_lp, sampler, selected, cap)
        self._importance.add(stats)
        return adv * weights.to(adv.dtype)

    def _step(self) -> float:
        params = [p for p in self.module.parameters() if p.requires_grad and p.grad is not None]
        if self.config.max_grad_norm is not None and params:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm))
        elif params:
            norm = float(
                torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params if p.grad is not None]))
            )
        else:
            norm = 0.0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return norm
