"""Fixtures: Redis URLs with a fresh key prefix per test, whose keys are deleted afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest
import redis
from agent_lightning_redis.url import parse_url
from agent_lightning_testkit.services import require_redis


def _delete_prefix(url: str) -> None:
    parsed = parse_url(url)
    client = redis.Redis.from_url(parsed.connect_url)
    try:
        keys = list(client.scan_iter(match=parsed.prefix + "*", count=1000))
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start : start + 1000])
    finally:
        client.close()


@pytest.fixture
def new_redis_url() -> Iterator[Callable[[], str]]:
    """Makes URLs of the test server, each with a random key prefix (skips or fails without Redis)."""
    made: list[str] = []

    def make() -> str:
        base = require_redis()
        separator = "&" if urlsplit(base).query else "?"
        made.append(f"{base}{separator}prefix=agltest:{uuid.uuid4().hex[:12]}:")
        return made[-1]

    yield make
    for url in made:
        _delete_prefix(url)


@pytest.fixture
def redis_url(new_redis_url: Callable[[], str]) -> str:
    """One fresh store URL."""
    return new_redis_url()
