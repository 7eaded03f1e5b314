"""Agent Lightning's test kit: the store and adapter conformance suites, the scripted upstream, fault and
service helpers.

The suites need pytest; they are loaded on first use so that importing other helpers of this package does not.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_lightning_testkit.adapter_conformance import AdapterConformanceSuite
    from agent_lightning_testkit.conformance import StoreConformanceSuite, snapshot, store_test

__all__ = ["AdapterConformanceSuite", "StoreConformanceSuite", "snapshot", "store_test"]
_SUITES = {
    "AdapterConformanceSuite": "agent_lightning_testkit.adapter_conformance",
    "StoreConformanceSuite": "agent_lightning_testkit.conformance",
    "snapshot": "agent_lightning_testkit.conformance",
    "store_test": "agent_lightning_testkit.conformance",
}


def __getattr__(name: str) -> Any:
    module_name = _SUITES.get(name)
    if module_name is not None:
        pytest = sys.modules.get("pytest")
        if pytest is not None and module_name not in sys.modules:
            pytest.register_assert_rewrite(module_name)  # failed asserts then show their values
        module = importlib.import_module(module_name)
        return getattr(module, name)
    raise AttributeError(f"module 'agent_lightning_testkit' has no attribute {name!r}")
