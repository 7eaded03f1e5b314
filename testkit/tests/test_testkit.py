"""The test kit itself: the conformance suite against the core's in-memory store, and the service checks."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from agent_lightning.store import InMemoryLightningStore, LightningStore, open_store
from agent_lightning_testkit import StoreConformanceSuite, services
from agent_lightning_testkit.services import require_redis


class TestInMemoryStore(StoreConformanceSuite):
    async def create_store(self) -> LightningStore:
        return InMemoryLightningStore()


class TestMemoryUrlStore(StoreConformanceSuite):
    """``memory://`` opened through the plugin hook behaves the same."""

    async def create_store(self) -> LightningStore:
        store = open_store("memory://")
        assert isinstance(store, InMemoryLightningStore)
        return store


class _SingleItemStore(InMemoryLightningStore):
    """A backend that implements only the single-item claim and completion: the contract's defaults batch them."""

    _claim_rollouts = LightningStore._claim_rollouts
    _complete_attempts = LightningStore._complete_attempts


class TestContractBatchDefaults(StoreConformanceSuite):
    """``claim_rollouts`` and ``complete_attempts`` as the base class makes them of the single-item methods."""

    async def create_store(self) -> LightningStore:
        return _SingleItemStore()


def test_suite_without_create_store_says_what_to_implement() -> None:
    class Incomplete(StoreConformanceSuite):
        pass

    with pytest.raises(NotImplementedError, match="create_store"):
        Incomplete().test_claim_takes_the_oldest_first_and_none_when_empty()


def test_a_skip_inside_create_store_skips_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    class Unavailable(StoreConformanceSuite):
        async def create_store(self) -> LightningStore:
            require_redis("redis://127.0.0.1:1/0")  # nothing listens on port 1
            raise AssertionError("require_redis should have skipped")

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server --daemonize yes"):
        Unavailable().test_claim_takes_the_oldest_first_and_none_when_empty()


# ---------------------------------------------------------------------- services
@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # released on exit: nothing listens there


def test_reachable_services_return_their_url(listening_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"postgresql://user:pw@127.0.0.1:{listening_port}/test"
    assert services.require_postgres(url) == url
    monkeypatch.setenv("AGL_TEST_REDIS_URL", f"redis://127.0.0.1:{listening_port}/3")
    assert services.require_redis() == f"redis://127.0.0.1:{listening_port}/3"
    monkeypatch.setenv("AGL_TEST_POSTGRES_URL", f"postgresql://127.0.0.1:{listening_port}/other")
    assert services.require_postgres() == f"postgresql://127.0.0.1:{listening_port}/other"


def test_missing_services_skip_with_how_to_start_them(closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    url = f"postgresql://127.0.0.1:{closed_port}/test"
    with pytest.raises(pytest.skip.Exception) as skipped:
        services.require_postgres(url)
    assert url in str(skipped.value) and "pg_ctlcluster --skip-systemctl-redirect" in str(skipped.value)
    monkeypatch.setenv("AGL_TEST_REDIS_URL", f"redis://127.0.0.1:{closed_port}/0")
    with pytest.raises(pytest.skip.Exception, match='--save "" --appendonly no'):
        services.require_redis()


def test_missing_services_fail_under_ci(closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("AGL_TEST_POSTGRES_URL", f"postgresql://127.0.0.1:{closed_port}/test")
    with pytest.raises(pytest.fail.Exception) as failed:
        services.require_postgres()
    assert f"127.0.0.1:{closed_port}" in str(failed.value) and "pg_ctlcluster" in str(failed.value)
    with pytest.raises(pytest.fail.Exception, match="redis-server"):
        services.require_redis(f"redis://127.0.0.1:{closed_port}/0")


def test_service_urls_without_a_known_port_are_refused() -> None:
    with pytest.raises(ValueError, match="port"):
        services.is_reachable("mysterydb://127.0.0.1/x")
    assert services.DEFAULT_POSTGRES_URL == "postgresql://127.0.0.1:5432/test"
    assert services.DEFAULT_REDIS_URL == "redis://127.0.0.1:6379/0"


def test_the_testing_package_loads_pytest_only_for_the_suite() -> None:
    code = (
        "import sys, agent_lightning, agent_lightning_testkit\n"
        "assert 'pytest' not in sys.modules, 'importing agent_lightning_testkit pulled in pytest'\n"
        "from agent_lightning_testkit import StoreConformanceSuite\n"
        "assert 'pytest' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
