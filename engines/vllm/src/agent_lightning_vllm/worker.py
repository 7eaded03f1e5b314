"""Runs inside vLLM's worker processes (``--worker-extension-cls agent_lightning_vllm.worker.WeightSync``)."""

from __future__ import annotations

from typing import Any


class WeightSync:
    """Mixed into vLLM's worker class: loads weights from safetensors files into the running model in place."""

    def agl_load_weights(self, path: str) -> int:
        """Load every tensor of the safetensors file(s) at ``path`` (a file or a folder) with the worker's in-place
        ``reload_weights``: it maps Hugging Face names onto vLLM's fused layers, undoes and redoes the kernel-format
        processing done after loading (the CPU backend repacks linear weights), and sees through LoRA wrappers.
        Returns how many tensors were read."""
        from pathlib import Path

        from safetensors.torch import load_file

        location = Path(path)
        files = sorted(location.glob("*.safetensors")) if location.is_dir() else [location]
        if not files:
            raise FileNotFoundError(f"no *.safetensors weights in {location}")
        state: dict[str, Any] = {}
        for file in files:
            state.update(load_file(str(file)))
        worker: Any = self  # the worker's own in-place reload (vLLM 0.32)
        worker.reload_weights(weights_iterator=iter(state.items()))
        _refresh_cpu_gemm(worker.model_runner.get_model())
        return len(state)


def _refresh_cpu_gemm(model: Any) -> None:
    """On CPU, layers that keep their weight (the embedding, and the LM head tied to it) compute their matmul with a
    oneDNN handle made from the weight at load time; ``reload_weights`` leaves that handle on the old weight. Make
    it again."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    import torch
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    for module in model.modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "cpu_linear") and isinstance(weight, torch.Tensor) and weight.numel() > 0:
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)
