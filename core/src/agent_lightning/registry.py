"""What plugins register: algorithm entries, and lazy ``module:attribute`` references."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from agent_lightning.errors import PluginError


def import_object(reference: str) -> Any:
    """Import ``"package.module:attribute"`` and return the attribute."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise PluginError(f"{reference!r} is not a 'module:attribute' reference")
    module = importlib.import_module(module_name)
    try:
        obj: Any = module
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise PluginError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return obj


@dataclass(frozen=True)
class AlgorithmEntry:
    """A training algorithm a plugin offers.

    :param name: short name used by ``agl train --algorithm NAME`` (``"ppo"``).
    :param algorithm: ``"module:Class"`` of the :class:`~agent_lightning.algorithm.Algorithm`.
    :param config: ``"module:Class"`` of its pydantic config, if it has one.
    :param exports: extra public names (``{"PPOConfig": "module:PPOConfig"}``) made importable
        from ``agent_lightning.algorithms`` and from ``agent_lightning`` itself.
    :param description: one line for ``agl plugins``.
    """

    name: str
    algorithm: str
    config: str | None = None
    exports: dict[str, str] = field(default_factory=dict)
    description: str = ""
    package: str | None = None

    def names(self) -> dict[str, str]:
        """Every public name this entry provides, mapped to its reference."""
        out = {self.algorithm.rpartition(":")[2].rpartition(".")[2]: self.algorithm}
        if self.config:
            out[self.config.rpartition(":")[2].rpartition(".")[2]] = self.config
        out.update(self.exports)
        return out
