from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from agent_lightning.store import open_store
from dashboard_demo_run import DemoRun, build_demo_run

API_KEY = "s3cret-key"


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    return build_demo_run(tmp_path_factory.mktemp("demo-run"))


@dataclass
class Served:
    url: str
    run: DemoRun
    api_key: str | None


class _Server:
    """The dashboard app under uvicorn on its own thread (port 0: a free port)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the dashboard server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _serve(run: DemoRun, api_key: str | None) -> Iterator[Served]:
    from agent_lightning_dashboard import create_app

    app = create_app(
        open_store(run.url), metrics_dirs=[run.folder], api_key=api_key, tokenizer=str(run.tokenizer), close_store=True
    )
    with _Server(app) as url:
        yield Served(url, run, api_key)


@pytest.fixture(scope="session")
def served(demo_run: DemoRun) -> Iterator[Served]:
    """The dashboard of the demo run, without an API key."""
    yield from _serve(demo_run, None)


@pytest.fixture(scope="session")
def served_with_key(demo_run: DemoRun) -> Iterator[Served]:
    yield from _serve(demo_run, API_KEY)
