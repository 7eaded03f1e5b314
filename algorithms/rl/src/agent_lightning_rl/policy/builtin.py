"""The built-in inference engine ``transformers``: :class:`~.server.PolicyServer` made through the engine registry."""

from __future__ import annotations

from typing import Any

from .server import PolicyServer


def create(
    model: str,
    *,
    served_name: str | None = None,
    preloaded: tuple[Any, Any] | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    max_batch_size: int = 8,
    default_max_tokens: int = 1024,
    version: str = "v0",
    **options: Any,
) -> PolicyServer:
    """A :class:`PolicyServer` on ``model`` (folder, bundled alias or hub id), or on ``preloaded=(model, tokenizer)``
    (a model object the caller hands over, so the trainer need not load the weights twice).

    Other ``options`` go to :class:`PolicyServer` (``host``, ``port``, ``logprobs_mode``, ``batch_wait_s``).
    """
    options.pop("colocate", None)  # one process: the server shares the learner's device already
    if preloaded is not None:
        policy, tokenizer = preloaded
    else:
        from ..models import load_policy

        policy, tokenizer = load_policy(model, dtype=dtype, device=device)
    policy.eval()
    try:
        return PolicyServer(
            policy,
            tokenizer,
            model_name=served_name or model,
            max_batch_size=max_batch_size,
            default_max_tokens=default_max_tokens,
            version=version,
            **options,
        )
    except TypeError as exc:
        raise ValueError(f"the transformers engine does not take {exc}") from None
