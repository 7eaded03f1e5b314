"""Store URLs: ``redis://[:password@]host[:port][/db][?prefix=agl:]`` (``rediss://`` for TLS)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SCHEMES = ("redis", "rediss")
DEFAULT_PREFIX = "agl:"
START_COMMAND = 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'


@dataclass(frozen=True)
class RedisUrl:
    """A parsed store URL: what redis-py connects to, and the key prefix of this store."""

    url: str
    """The URL as given."""
    connect_url: str
    """The URL without the store's own query options, for redis-py."""
    prefix: str

    @property
    def redacted(self) -> str:
        """The URL with its password replaced by ``***`` (for messages)."""
        return redact(self.url)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def parse_url(url: str, prefix: str | None = None) -> RedisUrl:
    """Split ``url`` into what redis-py needs and this store's options.

    ``prefix`` (keyword or ``?prefix=`` in the URL) namespaces every key, so several
    stores can share one Redis database.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError(f"not a Redis store URL (expected redis:// or rediss://): {redact(url)!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    from_url = [value for key, value in query if key == "prefix"]
    rest = [(key, value) for key, value in query if key != "prefix"]
    if prefix is not None and from_url and from_url[-1] != prefix:
        raise ValueError(f"prefix given twice, as {prefix!r} and in the URL as {from_url[-1]!r}")
    chosen = prefix if prefix is not None else (from_url[-1] if from_url else DEFAULT_PREFIX)
    if not chosen:
        raise ValueError("the key prefix must not be empty (it keeps this store's keys apart from others)")
    try:
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise ValueError(f"the database in a Redis URL is a number, got {db!r}")
        _ = parts.port  # raises ValueError on a non-numeric port
    except ValueError as exc:
        raise ValueError(f"malformed Redis URL {redact(url)!r}: {exc}") from None
    connect_url = urlunsplit(parts._replace(query=urlencode(rest)))
    return RedisUrl(url=url, connect_url=connect_url, prefix=chosen)
