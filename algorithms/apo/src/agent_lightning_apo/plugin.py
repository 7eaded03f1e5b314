"""Registers the prompt optimizers with Agent Lightning (imports nothing heavy)."""

from __future__ import annotations

from collections.abc import Callable

from agent_lightning.hookspecs import hookimpl
from agent_lightning.registry import AlgorithmEntry

PACKAGE = "agent-lightning-apo"


@hookimpl
def agl_register_algorithms(register: Callable[[AlgorithmEntry], None]) -> None:
    register(
        AlgorithmEntry(
            name="apo",
            algorithm="agent_lightning_apo.demos:DemonstrationSearch",
            config="agent_lightning_apo.config:DemoSearchConfig",
            exports={"APO": "agent_lightning_apo.demos:DemonstrationSearch"},
            description="demonstration search: successful traces and labeled tasks as worked examples, subsets scored",
            package=PACKAGE,
        )
    )
    for name in ("gepa", "apo-reflect"):
        register(
            AlgorithmEntry(
                name=name,
                algorithm="agent_lightning_apo.reflect:ReflectiveEvolution",
                config="agent_lightning_apo.config:ReflectConfig",
                exports={"GEPA": "agent_lightning_apo.reflect:ReflectiveEvolution"},
                description="reflective prompt evolution (GEPA): an optimizer LLM edits the prompt, Pareto front",
                package=PACKAGE,
            )
        )
