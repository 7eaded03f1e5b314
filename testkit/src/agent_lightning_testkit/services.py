"""Checks that the PostgreSQL and Redis servers tests use are running.

On a laptop without the service the calling test is skipped, saying how to
start it; under CI (``CI=true``) a missing service fails the test instead, so
CI never passes by skipping. Only a TCP connection is tried (no driver import).
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "DEFAULT_POSTGRES_URL",
    "DEFAULT_REDIS_URL",
    "POSTGRES_START",
    "REDIS_START",
    "is_reachable",
    "require_postgres",
    "require_redis",
    "require_service",
]

DEFAULT_POSTGRES_URL = "postgresql://127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
REDIS_START = 'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no'
_DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "redis": 6379, "rediss": 6380}


def is_reachable(url: str, timeout: float = 1.0) -> bool:
    """Whether a TCP connection to the URL's host and port succeeds."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0].lower()
    host = parts.hostname or "127.0.0.1"
    port = parts.port or _DEFAULT_PORTS.get(scheme)
    if port is None:
        raise ValueError(f"cannot tell which port {url!r} uses; write it in the URL")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_service(name: str, url: str, start_command: str) -> str:
    """Return ``url`` if the service answers; otherwise skip the test (fail it under ``CI=true``)."""
    if is_reachable(url):
        return url
    message = f"{name} is not reachable at {url}; start it with: {start_command}"
    if _in_ci():
        pytest.fail(f"{message} (CI=true: a missing service is a failure, not a skip)", pytrace=False)
    pytest.skip(message)
    raise AssertionError("unreachable")  # pytest.skip raises; this line keeps type checkers content


def require_postgres(url: str | None = None) -> str:
    """The PostgreSQL URL to test against (env ``AGL_TEST_POSTGRES_URL`` overrides the default)."""
    target = url or os.environ.get("AGL_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL
    return require_service("PostgreSQL", target, POSTGRES_START)


def require_redis(url: str | None = None) -> str:
    """The Redis URL to test against (env ``AGL_TEST_REDIS_URL`` overrides the default)."""
    target = url or os.environ.get("AGL_TEST_REDIS_URL") or DEFAULT_REDIS_URL
    return require_service("Redis", target, REDIS_START)
