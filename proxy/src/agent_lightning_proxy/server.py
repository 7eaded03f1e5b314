"""``LLMProxy``: the proxy app served from a background thread, writing spans to a store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from agent_lightning.secrets import register_secret
from agent_lightning.store.base import LightningStore
from agent_lightning.types import LLM

from agent_lightning_proxy.app import ProxyHandler, ProxySettings, ProxyStats, create_app
from agent_lightning_proxy.attribution import Attributor
from agent_lightning_proxy.auth import ProxyAuth
from agent_lightning_proxy.serving import ServerThread
from agent_lightning_proxy.tokens import TokenSigner


class LLMProxy:
    """An OpenAI-compatible endpoint in front of ``upstream`` that records every call with its token ids.

    >>> with LLMProxy(store, "http://127.0.0.1:8000/v1") as proxy:
    ...     client = openai.OpenAI(base_url=proxy.base_url(rollout_id), api_key="x")
    ...     client.chat.completions.create(model="policy", messages=[...])
    >>> proxy.flush()      # the call's llm span (token ids, logprobs, …) is now in the store

    Calls are attributed to a rollout by URL (``/rollout/{id}[/attempt/{id}]/v1``) or by the
    ``x-agl-rollout-id`` / ``x-agl-attempt-id`` headers; unknown ids get an OpenAI-style 404.
    A call's record is stored (through the store's span emitter, batched with concurrent calls) before
    the call is answered, waiting at most ``store_timeout`` seconds for the store.

    :param store: where the ``llm`` spans go (any :class:`LightningStore`).
    :param upstream: the OpenAI-compatible server to forward to (``http://host:port[/v1]``).
    :param port: ``0`` picks a free port (see :attr:`url`).
    :param model_map: rename requested models before forwarding (``{"gpt-4o": "policy", "*": "policy"}``).
    :param upstream_api_key: sent upstream as ``Authorization: Bearer …`` (default: the agent's own header).
    :param timeout: seconds to wait for the upstream (connect, and each read of a response or stream).
    :param request_token_ids: ask the upstream for token ids and logprobs (turn off for an upstream,
        like the OpenAI API, that rejects unknown request fields; calls are then recorded without ids).
    :param latest_attempt_ttl: how long ``/rollout/{id}/v1`` keeps resolving to the same latest attempt.
    :param store_timeout: the longest a call's answer waits for its record to be stored.
    :param api_key: the proxy's own key; when set, every call (but ``GET /health``) needs it or an
        attempt token (see :mod:`agent_lightning_proxy.auth`).
    :param token_secret: verifies attempt tokens (the store server's; see
        :func:`~agent_lightning_http.auth.derive_token_secret`); when set, attributing a call needs
        its attempt's token or ``api_key``.
    :param ssl_certfile: serve HTTPS with this PEM certificate (and ``ssl_keyfile``).
    """

    def __init__(
        self,
        store: LightningStore,
        upstream: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model_map: Mapping[str, str] | None = None,
        upstream_api_key: str | None = None,
        timeout: float = 300.0,
        request_token_ids: bool = True,
        max_connections: int = 512,
        latest_attempt_ttl: float = 1.0,
        store_timeout: float = 5.0,
        api_key: str | None = None,
        token_secret: str | bytes | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        from agent_lightning.instrumentation.tracer import get_tracer

        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.store = store
        self._tracer = get_tracer(store)
        settings = ProxySettings(
            upstream=upstream,
            model_map=dict(model_map) if model_map else None,
            upstream_api_key=upstream_api_key,
            timeout=timeout,
            request_token_ids=request_token_ids,
            max_connections=max_connections,
            store_timeout=store_timeout,
        )
        attributor = Attributor(store, self._tracer.acall, latest_ttl=latest_attempt_ttl)
        self.handler = ProxyHandler(settings, self._tracer.emitter.emit_stored, attributor)
        signer = TokenSigner(token_secret) if token_secret else None
        register_secret(api_key)
        register_secret(upstream_api_key)
        self.app = ProxyAuth(create_app(self.handler), api_key=api_key, signer=signer)
        self.tls = ssl_certfile is not None
        self._server = ServerThread(
            self.app, host, port, name="agl-llm-proxy", ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile
        )

    @property
    def settings(self) -> ProxySettings:
        return self.handler.settings

    @property
    def upstream(self) -> str:
        """The upstream's ``/v1`` base URL."""
        return self.handler.base

    @property
    def host(self) -> str:
        return self._server.host

    @property
    def port(self) -> int:
        """The port served on (the one picked, after :meth:`start`, when created with ``port=0``)."""
        return self._server.port

    @property
    def url(self) -> str:
        """The OpenAI ``base_url`` of the proxy: ``http://HOST:PORT/v1``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/v1"

    def base_url(self, rollout_id: str, attempt_id: str | None = None, token: str | None = None) -> str:
        """The ``base_url`` that attributes an agent's calls to a rollout (and attempt; with its token)."""
        return self.resource("proxy").base_url(rollout_id, attempt_id, token=token)

    def resource(self, model: str, **sampling_parameters: Any) -> LLM:
        """An :class:`~agent_lightning.types.LLM` resource pointing at this proxy."""
        return LLM(endpoint=self.url, model=model, sampling_parameters=sampling_parameters)

    def stats(self) -> ProxyStats:
        """A snapshot of the proxy's counters."""
        return replace(self.handler.stats)

    def start(self) -> LLMProxy:
        """Serve in a background thread; returns once the proxy accepts connections."""
        self._server.start()
        return self

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every span queued so far reached the store; ``False`` on timeout.

        A call's record is stored before the call is answered; this waits for the rest (records of
        calls whose client hung up, or answered after ``store_timeout``).
        """
        return self._tracer.emitter.flush(timeout)

    def stop(self) -> None:
        """Stop serving and deliver the recorded spans (the store stays open)."""
        self._server.stop()
        self.flush()

    def serve_forever(self) -> None:
        """Serve until interrupted (Ctrl-C)."""
        import threading

        self.start()
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> LLMProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
