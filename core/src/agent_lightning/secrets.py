"""Secrets: read keys from a file or the environment, and keep them out of logs and printed lines.

* :func:`redact_url` masks the password of a URL (``postgresql://u:***@host/db``).
* :func:`register_secret` remembers a value; :func:`mask` replaces every remembered value (and URL
  passwords) in a text with ``***``. :class:`SecretFilter` does that to every log record that passes
  through a handler (``agl`` installs it on the root handlers).
* :func:`read_secret` takes a key from a file (``--api-key-file``) or an environment variable.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_MIN_LENGTH = 4
"""Shorter values are not masked (they would mask ordinary words)."""

_lock = threading.Lock()
_secrets: set[str] = set()
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return _URL_PASSWORD.sub(rf"\g<scheme>\g<user>:{MASK}@", url)
    if password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every later :func:`mask` (and so in every log line through :class:`SecretFilter`)."""
    if value and len(value) >= _MIN_LENGTH:
        with _lock:
            _secrets.add(value)


def mask(text: str) -> str:
    """``text`` with URL passwords and every registered secret replaced by ``***``."""
    text = _URL_PASSWORD.sub(rf"\g<scheme>\g<user>:{MASK}@", text)
    with _lock:
        values = sorted(_secrets, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text


class SecretFilter(logging.Filter):
    """Masks secrets (see :func:`mask`) in the message of every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def install_log_filter(logger: logging.Logger | None = None) -> None:
    """Put a :class:`SecretFilter` on every handler of ``logger`` (default: the root logger)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, SecretFilter) for f in handler.filters):
            handler.addFilter(SecretFilter())


def read_secret(
    *, value: str | None = None, file: str | os.PathLike[str] | None = None, env: str | None = None
) -> str | None:
    """A secret from ``value``, else the first line of ``file``, else ``$env`` (``None`` if none is set).

    The result is registered for masking. A file that cannot be read or is empty raises ``ValueError``.
    """
    secret = value
    if not secret and file:
        try:
            lines = Path(file).read_text(encoding="utf-8").strip().splitlines()
        except OSError as exc:
            raise ValueError(f"cannot read a key from {os.fspath(file)!r}: {exc}") from None
        secret = lines[0].strip() if lines else ""
        if not secret:
            raise ValueError(f"the key file {os.fspath(file)!r} is empty")
    if not secret and env:
        secret = os.environ.get(env) or None
    register_secret(secret)
    return secret or None


__all__ = ["MASK", "SecretFilter", "install_log_filter", "mask", "read_secret", "redact_url", "register_secret"]
