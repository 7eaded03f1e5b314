"""Token log-probs through the LM head in row chunks, never materializing ``[tokens, vocab]`` logits for backward.

The forward keeps only the hidden states; the backward recomputes each chunk's logits, so memory stays at one
chunk of logits and the whole vocabulary projection runs as a few large matmuls (what makes the update fast on
CPU, where the ``[B, T, V]`` softmax and its gradient are memory-bound). Entropy is returned without gradient.
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK_ROWS = 512


class _ChunkedTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, temperature: float, chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = hidden.shape[0]
        dtype = torch.promote_types(hidden.dtype, torch.float32)  # at least float32 for the softmax
        logprobs = torch.empty(rows, dtype=dtype, device=hidden.device)
        entropy = torch.empty(rows, dtype=dtype, device=hidden.device)
        for start in range(0, rows, chunk):
            end = min(rows, start + chunk)
            logits = (hidden[start:end] @ weight.t()).to(dtype)
            if temperature != 1.0:
                logits = logits / temperature
            log_z = torch.logsumexp(logits, dim=-1)
            logprobs[start:end] = logits.gather(-1, labels[start:end, None]).squeeze(-1) - log_z
            probs = torch.exp(logits - log_z[:, None])
            entropy[start:end] = log_z - (probs * logits).sum(-1)
        ctx.save_for_backward(hidden, weight, labels)
        ctx.temperature, ctx.chunk = temperature, chunk
        device = hidden.device.type
        ctx.autocast = (device, torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else None
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx: Any, grad_logprobs: torch.Tensor, _grad_entropy: Any) -> tuple[Any, ...]:  # type: ignore[override]
        if ctx.autocast is None:
            return _ChunkedTokenLogprobs._backward(ctx, grad_logprobs)
        device, dtype = ctx.autocast
        with torch.autocast(device, dtype=dtype):  # the same precision as the forward
            return _ChunkedTokenLogprobs._backward(ctx, grad_logprobs)

    @staticmethod
    def _backward(ctx: Any, grad_logprobs: torch.Tensor) -> tuple[Any, ...]:
        hidden, weight, labels = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        grad_w = torch.zeros_like(weight, dtype=dtype) if need_w else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            end = min(hidden.shape[0], start + ctx.chunk)
            h = hidden[start:end]
            logits = (h @ weight.t()).to(dtype)
            if ctx.temperature != 1.0:
                logits = logits / ctx.temperature
            # d logp(y) / d logits = onehot(y) - softmax(logits)
            grad = torch.softmax(logits, dim=-1).mul_(-grad_logprobs[start:end, None])
            grad.scatter_add_(-1, labels[start:end, None], grad_logprobs[start:end, None].to(dtype))
            if ctx.temperature != 1.0:
                grad = grad / ctx.temperature
            grad = grad.to(hidden.dtype)
            if grad_h is not None:
                grad_h[start:end] = grad @ weight
            if grad_w is not None:
                grad_w.addmm_(grad.t().to(dtype), h.to(dtype))
        return grad_h, grad_w.to(weight.dtype) if grad_w is not None else None, None, None, None


def chunked_token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, chunk: int = CHUNK_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log softmax(hidden @ weight.T / temperature)[labels]`` and the entropy, for ``[N, H]`` rows."""
    result: tuple[torch.Tensor, torch.Tensor] = _ChunkedTokenLogprobs.apply(hidden, weight, labels, temperature, chunk)
    return result
