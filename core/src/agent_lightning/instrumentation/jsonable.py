"""Turn framework objects (pydantic models, dataclasses, …) into JSON values span attributes accept."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

_MAX_DEPTH = 32


def jsonable(value: Any, _depth: int = 0) -> Any:
    """A JSON value (str, number, bool, None, list, dict with string keys) standing for ``value``.

    Pydantic models are dumped, dataclasses converted, non-finite floats and unknown
    objects become strings; nothing here raises.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if _depth > _MAX_DEPTH:
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, _depth + 1) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return jsonable(dump(mode="json", exclude_none=True, warnings=False), _depth + 1)
        except TypeError:  # a model_dump without pydantic 2's keywords
            try:
                return jsonable(dump(), _depth + 1)
            except Exception:
                pass
        except Exception:
            pass
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            return jsonable(dataclasses.asdict(value), _depth + 1)
        except Exception:
            pass
    return str(value)


def omitted(value: Any) -> bool:
    """Whether an OpenAI SDK argument was left out (``None``, ``NOT_GIVEN`` or ``omit``)."""
    return value is None or type(value).__name__ in {"NotGiven", "Omit"}


def bounded(value: Any, max_chars: int = 32_000) -> Any:
    """:func:`jsonable`, but a value whose JSON is longer than ``max_chars`` becomes a truncated string."""
    import json

    converted = jsonable(value)
    try:
        text = json.dumps(converted, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)[:max_chars]
    if len(text) <= max_chars:
        return converted
    return text[:max_chars] + f"… [{len(text) - max_chars} characters cut]"
