"""``PolicyServer``: a Hugging Face causal LM behind the OpenAI API, in background threads of this process."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import torch

from .engine import GenerationEngine
from .sampling import LogprobsMode
from .weights import WeightsSource


class PolicyServer:
    """Serve ``model`` (with ``tokenizer``) at ``{url}/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

    One worker thread generates (batching concurrent requests, see :mod:`.engine`); uvicorn serves HTTP in another.
    :meth:`update_weights` (or ``POST /agl/weights`` from loopback) hot-swaps the weights between batches; every
    response names the version that generated it (``x-agl-model-version`` header and ``system_fingerprint``).

    The server owns ``model`` while it runs: give it its own copy if a trainer updates another one in place.

        with PolicyServer(model, tokenizer, model_name="smollm2-135m-instruct") as server:
            client = openai.OpenAI(base_url=server.url, api_key="none")
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        model_name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        max_batch_size: int = 8,
        batch_wait_s: float = 0.005,
        version: str = "v0",
        default_max_tokens: int = 1024,
        logprobs_mode: LogprobsMode = "raw",
    ) -> None:
        self.model_name = model_name
        self.host = host
        self.port = port
        self.default_max_tokens = default_max_tokens
        self.engine = GenerationEngine(
            model,
            tokenizer,
            version=version,
            max_batch_size=max_batch_size,
            batch_wait_s=batch_wait_s,
            logprobs_mode=logprobs_mode,
        )
        self._http: Any = None  # agent_lightning_proxy.serving.ServerThread, once started

    @property
    def url(self) -> str:
        """The OpenAI ``base_url`` (``http://host:port/v1``); the port is known once started."""
        if self._http is None:
            raise RuntimeError("the policy server is not started; call start() first")
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)  # wildcard: reach it via loopback
        host = host if ":" not in host else f"[{host}]"
        return f"http://{host}:{self.port}/v1"

    @property
    def version(self) -> str:
        """The weights version new requests get."""
        return self.engine.version

    def stats(self) -> dict[str, Any]:
        """Batching and generation counters (see :meth:`GenerationEngine.stats`)."""
        return self.engine.stats()

    def update_weights(
        self, source: WeightsSource, version: str, *, adapter: bool = False, timeout: float | None = None
    ) -> None:
        """Serve ``source`` (state dict, module, or checkpoint path) as ``version``; returns once it is in use.

        Requests already generating finish on the old weights and report the old version; every request whose batch
        starts after this returns gets the new weights and reports ``version``. LoRA adapters are not taken
        (``adapter=True`` raises ``ValueError``): pass the merged state dict.
        """
        if adapter:
            raise ValueError("the transformers engine takes merged weights, not a LoRA adapter")
        self.engine.update_weights(source, version, timeout=timeout)

    def start(self, timeout: float | None = 30.0) -> PolicyServer:
        """Start the generation worker and the HTTP server; returns when it accepts connections."""
        if self._http is not None:
            return self
        from agent_lightning_proxy.serving import ServerThread

        from .app import create_app

        self.engine.start()
        app = create_app(self.engine, self.model_name, default_max_tokens=self.default_max_tokens)
        http = ServerThread(app, self.host, self.port, name="agl-policy-http", graceful_shutdown=5.0)
        try:
            http.start(30.0 if timeout is None else timeout)
        except BaseException:
            self.engine.stop()
            raise
        self._http, self.port = http, http.port
        return self

    def stop(self) -> None:
        """Stop HTTP serving and the generation worker (waiting requests get an error)."""
        if self._http is not None:
            self._http.stop(timeout=15)
        self.engine.stop()
        self._http = None

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
