"""Runs inside vLLM's worker processes (``--worker-extension-cls agent_lightning_vllm.worker.WeightSync``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class WeightSync:
    """Mixed into vLLM's worker class: loads weights from safetensors files into the running model in place."""

    model_runner: Any

    def agl_load_weights(self, path: str) -> int:
        """Load every tensor of the safetensors file(s) at ``path`` (a file or a folder) through the model's own
        ``load_weights`` (which maps Hugging Face names onto vLLM's fused layers); returns how many were read."""
        from pathlib import Path

        from safetensors.torch import load_file

        location = Path(path)
        files = sorted(location.glob("*.safetensors")) if location.is_dir() else [location]
        if not files:
            raise FileNotFoundError(f"no *.safetensors weights in {location}")
        model = self.model_runner.get_model() if hasattr(self.model_runner, "get_model") else self.model_runner.model
        count = 0
        with _unwrapped_names(model):
            for file in files:
                state = load_file(str(file))
                count += len(state)
                model.load_weights(weights=iter(state.items()))
        return count


@contextmanager
def _unwrapped_names(model: Any) -> Iterator[None]:
    """With LoRA enabled, vLLM wraps linear layers (``qkv_proj.base_layer.weight``) after loading; its models'
    ``load_weights`` look parameters up under the plain names. Give every module plain parameter names meanwhile."""
    patched = []
    for module in model.modules():
        if any(".base_layer." in f".{name}" for name, _ in module.named_parameters()):
            original = type(module).named_parameters.__get__(module)

            def plain(*args: Any, _original: Any = original, **kwargs: Any) -> Iterator[tuple[str, Any]]:
                for name, param in _original(*args, **kwargs):
                    yield name.replace("base_layer.", ""), param

            module.named_parameters = plain
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.named_parameters
