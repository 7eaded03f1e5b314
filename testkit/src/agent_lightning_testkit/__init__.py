"""Agent Lightning's test kit: the store conformance suite, the scripted upstream, fault and service helpers.

``StoreConformanceSuite`` needs pytest; it is loaded on first use so that importing
other helpers of this package does not.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_lightning_testkit.conformance import StoreConformanceSuite, snapshot, store_test

__all__ = ["StoreConformanceSuite", "snapshot", "store_test"]
_SUITE = "agent_lightning_testkit.conformance"


def __getattr__(name: str) -> Any:
    if name in __all__:
        pytest = sys.modules.get("pytest")
        if pytest is not None and _SUITE not in sys.modules:
            pytest.register_assert_rewrite(_SUITE)  # failed asserts then show their values
        from agent_lightning_testkit import conformance

        return getattr(conformance, name)
    raise AttributeError(f"module 'agent_lightning_testkit' has no attribute {name!r}")
