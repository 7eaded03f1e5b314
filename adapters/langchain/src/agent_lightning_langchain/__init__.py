"""Agent Lightning adapter for LangChain and LangGraph.

Installed, it is found through the ``agent_lightning`` entry point and switched on when a
:class:`agent_lightning.TrainingContext` opens: a callback handler is then added to every
LangChain run (no change to the user's chain, agent or graph).
"""

from agent_lightning_langchain.adapter import LangChainAdapter
from agent_lightning_langchain.handler import LightningCallbackHandler

__all__ = ["LangChainAdapter", "LightningCallbackHandler"]
__version__ = "0.1.0"
