"""Run the store server: in a background thread (:class:`StoreServer`) or in the foreground (:func:`serve`)."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from typing import Any

from agent_lightning.secrets import mask, redact_url, register_secret
from agent_lightning.store.base import LightningStore
from agent_lightning_proxy.serving import ServerThread

from agent_lightning_http.app import DASHBOARD_PATH, create_app
from agent_lightning_http.protocol import API_KEY_ENV, DEFAULT_MAX_BODY_BYTES

logger = logging.getLogger("agent_lightning_http")

DEFAULT_PORT = 4747
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _url(host: str, port: int, tls: bool = False) -> str:
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _warn_if_open(host: str, api_key: str | None, tls: bool = False) -> None:
    if host in LOOPBACK:
        return
    if not api_key:
        logger.warning(
            "the store server listens on %s without an API key: anyone who can reach it can read and change "
            "the store; pass --api-key-file or set %s",
            host,
            API_KEY_ENV,
        )
    elif not tls:
        logger.warning(
            "the store server listens on %s without TLS: its API key and data cross the network in clear; "
            "pass --ssl-certfile/--ssl-keyfile or put a TLS proxy in front (README, Security)",
            host,
        )


class StoreServer:
    """``store`` served over HTTP from a background thread (port 0 picks a free port).

    >>> with StoreServer(InMemoryLightningStore()) as server:
    ...     client = HttpLightningStore(server.url)
    """

    def __init__(
        self,
        store: LightningStore,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        close_store: bool = False,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        **app_options: Any,
    ) -> None:
        self.store = store
        self.app = create_app(store, api_key, max_body_bytes=max_body_bytes, close_store=close_store, **app_options)
        self.tls = ssl_certfile is not None
        self._thread = ServerThread(
            self.app, host, port, name="agl-store-server", ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile
        )
        _warn_if_open(host, api_key, self.tls)

    @property
    def url(self) -> str:
        """``http(s)://HOST:PORT`` (the port picked, once started with port 0)."""
        return _url(self._thread.host, self._thread.port, self.tls)

    @property
    def port(self) -> int:
        return self._thread.port

    @property
    def running(self) -> bool:
        return self._thread.running

    def start(self) -> StoreServer:
        """Serve; returns once the server accepts connections."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (requests in flight get a moment to finish)."""
        self._thread.stop()

    def __enter__(self) -> StoreServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(
    store_url: str,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    log_level: str = "warning",
    token_secret: str | None = None,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    dashboard_path: str | None = DASHBOARD_PATH,
) -> None:
    """Open ``store_url`` and serve it until SIGINT/SIGTERM, then close the store.

    ``ssl_certfile``/``ssl_keyfile`` (PEM) serve HTTPS. Secrets never appear in what it prints or logs.
    The dashboard is served at ``dashboard_path`` when ``agent-lightning-dashboard`` is installed.
    """
    import uvicorn
    from agent_lightning.store import open_store

    register_secret(api_key)
    register_secret(token_secret)
    store = open_store(store_url)
    app = create_app(
        store,
        api_key,
        max_body_bytes=max_body_bytes,
        close_store=True,
        token_secret=token_secret,
        dashboard_path=dashboard_path,
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP: asyncio then sets TCP_NODELAY on accepted connections (see proxy.serving).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise OSError(f"agl store serve: cannot listen on {host}:{port}: {exc}") from exc
    tls = ssl_certfile is not None
    _warn_if_open(host, api_key, tls)
    url = _url(host, sock.getsockname()[1], tls)
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
        timeout_keep_alive=30,
        server_header=False,
        date_header=False,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )
    server = uvicorn.Server(config)

    def stop_early(*_: object) -> None:
        server.should_exit = True  # uvicorn checks it once started

    previous = {}
    if threading.current_thread() is threading.main_thread():
        # Installed before the start-up line, since a supervisor may signal as soon as it reads it: a signal before
        # uvicorn has installed its own handlers stops the server once it is up. After a graceful shutdown uvicorn
        # raises the signal again for this handler, where it changes nothing: the command ends with status 0.
        for number in (signal.SIGINT, signal.SIGTERM):
            previous[number] = signal.signal(number, stop_early)
    try:
        shown = mask(redact_url(store.url or store_url))
        print(f"agl store serve: serving {shown} at {url} (API docs: {url}/docs)", flush=True)
        mounted = getattr(app.state, "dashboard_path", None)
        if mounted is not None:
            print(f"agl store serve: dashboard at {url}{mounted}/", flush=True)
        server.run(sockets=[sock])
    finally:
        sock.close()
        for number, handler in previous.items():
            signal.signal(number, handler)
    print("agl store serve: stopped", file=sys.stderr, flush=True)
