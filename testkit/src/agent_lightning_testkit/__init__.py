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


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'agent_lightning_testkit' has no attribute {name!r}")
    suite = "adapter_conformance" if name == "AdapterConformanceSuite" else "conformance"
    module_name = f"agent_lightning_testkit.{suite}"
    pytest = sys.modules.get("pytest")
    if pytest is not None and module_name not in sys.modules:
        pytest.register_assert_rewrite(module_name)  # failed asserts then show their values
    return getattr(importlib.import_module(module_name), name)
