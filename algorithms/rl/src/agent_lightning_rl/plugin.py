"""Registers PPO, GRPO, SFT and the built-in inference engine ``transformers`` (imports nothing heavy)."""

from __future__ import annotations

from collections.abc import Callable

from agent_lightning.engines import EngineEntry
from agent_lightning.hookspecs import hookimpl
from agent_lightning.registry import AlgorithmEntry

PACKAGE = "agent-lightning-rl"


@hookimpl
def agl_register_algorithms(register: Callable[[AlgorithmEntry], None]) -> None:
    register(
        AlgorithmEntry(
            name="ppo",
            algorithm="agent_lightning_rl.ppo:ProximalPolicyOptimization",
            config="agent_lightning_rl.config:PPOConfig",
            exports={"PPO": "agent_lightning_rl.ppo:ProximalPolicyOptimization"},
            description="PPO: clipped objective, value head, GAE, KL to a frozen reference (torch)",
            package=PACKAGE,
        )
    )
    register(
        AlgorithmEntry(
            name="grpo",
            algorithm="agent_lightning_rl.grpo:GroupRelativePolicyOptimization",
            config="agent_lightning_rl.config:GRPOConfig",
            exports={
                "GRPO": "agent_lightning_rl.grpo:GroupRelativePolicyOptimization",
                "LoraSettings": "agent_lightning_rl.config:LoraSettings",
            },
            description="GRPO (also RLOO, REINFORCE++): group-relative advantages, no critic (torch)",
            package=PACKAGE,
        )
    )
    register(
        AlgorithmEntry(
            name="sft",
            algorithm="agent_lightning_rl.sft:SupervisedFineTuning",
            config="agent_lightning_rl.config:SFTConfig",
            exports={"SFT": "agent_lightning_rl.sft:SupervisedFineTuning"},
            description="SFT and rejection-sampling fine-tuning: masked NLL on kept rollouts or a chat dataset (torch)",
            package=PACKAGE,
        )
    )


@hookimpl
def agl_register_engines(register: Callable[[EngineEntry], None]) -> None:
    register(
        EngineEntry(
            name="transformers",
            factory="agent_lightning_rl.policy.builtin:create",
            package=PACKAGE,
            features=frozenset({"full", "colocate"}),
            description="the built-in policy server (torch + transformers, continuous batching, prefix KV cache)",
        )
    )
