"""Reading published weights and copying them into a served model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Union

import torch

WeightsSource = Union[Mapping[str, torch.Tensor], torch.nn.Module, str, Path]
"""A state dict, a module (its state dict is used), or a path: a checkpoint folder (``*.safetensors``, else
``pytorch_model*.bin``), one ``.safetensors`` file, or one ``.pt``/``.bin`` file."""


def read_state_dict(source: WeightsSource) -> Mapping[str, torch.Tensor]:
    """The tensors of ``source``; raises ``FileNotFoundError``/``ValueError`` naming what is wrong."""
    if isinstance(source, torch.nn.Module):
        return source.state_dict()
    if isinstance(source, Mapping):
        return source
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin weights in folder {path}")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"weights path {path} does not exist")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(file)))
        elif file.suffix in (".bin", ".pt", ".pth"):
            loaded = torch.load(file, map_location="cpu", weights_only=True)
            if not isinstance(loaded, Mapping):
                raise ValueError(f"{file} holds a {type(loaded).__name__}, not a state dict")
            state.update(loaded)
        else:
            raise ValueError(f"unsupported weights file {file}: expected .safetensors, .bin, .pt or .pth")
    return state


@torch.no_grad()
def copy_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> int:
    """Copy ``state`` into ``model`` in place (a partial state dict is fine); returns how many tensors were copied.

    Raises ``ValueError`` on keys the model does not have or on shape mismatches, before changing anything.
    """
    own = model.state_dict()
    unknown = sorted(k for k in state if k not in own)
    if unknown:
        raise ValueError(f"weights have {len(unknown)} keys the served model lacks, e.g. {unknown[:5]}")
    if not state:
        raise ValueError("weights are empty: nothing to load")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise ValueError(f"weight {key} has shape {tuple(tensor.shape)}, the model has {tuple(own[key].shape)}")
    for key, tensor in state.items():
        own[key].copy_(tensor)
    return len(state)
