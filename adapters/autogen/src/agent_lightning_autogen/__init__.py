"""Agent Lightning adapter for AutoGen AgentChat (0.7).

Installed, it is found through the ``agent_lightning`` entry point and switched on when a
:class:`agent_lightning.TrainingContext` opens: agent turns, team runs, speaker selection,
model-client calls and tool runs become spans tagged with the agent's name.
"""

from agent_lightning_autogen.adapter import AutoGenAdapter

__all__ = ["AutoGenAdapter"]
__version__ = "0.1.0"
