"""The Adapter base class: instrument()/uninstrument() own idempotence and the framework version check."""

from __future__ import annotations

from collections.abc import Callable, Collection

import agent_lightning as agl
import pytest
from agent_lightning import plugins
from agent_lightning.errors import PluginError
from agent_lightning.instrumentation import adapter as adapters
from agent_lightning.instrumentation.adapter import Adapter, dependency_conflicts


class Recording(Adapter):
    """An adapter of a "framework" that is a list of switch events."""

    def __init__(self, name: str, requirements: Collection[str]) -> None:
        super().__init__()
        self.name = name
        self.requirements = list(requirements)
        self.events: list[str] = []

    def instrumentation_dependencies(self) -> Collection[str]:
        return self.requirements

    def _instrument(self) -> None:
        self.events.append("on")

    def _uninstrument(self) -> None:
        self.events.append("off")


def test_dependency_conflicts_reads_installed_versions() -> None:
    assert dependency_conflicts(["pluggy>=1.5", "pydantic>=2,<3"]) == []
    (too_new,) = dependency_conflicts(["pluggy<1"])
    assert too_new.startswith("pluggy<1: ") and too_new.endswith(" is installed")
    assert dependency_conflicts(["agl-no-such-distribution>=1"]) == ["agl-no-such-distribution>=1: not installed"]


def test_instrument_and_uninstrument_are_idempotent() -> None:
    adapter = Recording("recording", ["pluggy>=1.5"])
    adapter.uninstrument()  # off already: nothing to undo
    adapter.instrument()
    adapter.instrument()
    assert adapter.is_instrumented
    adapter.uninstrument()
    adapter.uninstrument()
    adapter.instrument()
    assert adapter.events == ["on", "off", "on"]


def test_an_unsupported_framework_version_is_refused_before_instrumenting() -> None:
    adapter = Recording("too-new", ["pluggy<1"])
    assert not adapter.is_available()
    with pytest.raises(PluginError, match=r"adapter 'too-new' cannot instrument: .*pluggy<1: .* is installed"):
        adapter.instrument()
    assert adapter.events == [] and not adapter.is_instrumented


class _Registers:
    def __init__(self, *registered: Adapter) -> None:
        self.registered = registered

    @agl.hookimpl
    def agl_register_adapters(self, register: Callable[[Adapter], None]) -> None:
        for adapter in self.registered:
            register(adapter)


def test_contexts_switch_available_adapters_on_and_off_and_skip_unsupported_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AGL_ADAPTERS", raising=False)
    good, unsupported = Recording("good", ["pydantic>=2"]), Recording("unsupported", ["pydantic<1"])
    plugins.register(_Registers(good, unsupported), name="recording-adapters")
    try:
        with agl.TrainingContext(task_id="t", store=agl.InMemoryLightningStore()):
            assert "good" in adapters.active_adapters() and "unsupported" not in adapters.active_adapters()
        assert good.events == ["on", "off"] and unsupported.events == []
        with pytest.raises(PluginError, match="cannot instrument"):
            agl.instrument("unsupported")
        monkeypatch.setenv("AGL_ADAPTERS", "none")
        with agl.TrainingContext(task_id="t", store=agl.InMemoryLightningStore()):
            pass
        assert good.events == ["on", "off"]
    finally:
        plugins.unregister("recording-adapters")


def test_a_registered_object_that_is_not_an_adapter_is_refused() -> None:
    class NotAnAdapter:
        name = "impostor"

    plugins.register(_Registers(NotAnAdapter()), name="impostor-adapters")  # type: ignore[arg-type]
    try:
        with pytest.raises(PluginError, match="takes agent_lightning.instrumentation.adapter.Adapter objects"):
            adapters.adapters()
    finally:
        plugins.unregister("impostor-adapters")
