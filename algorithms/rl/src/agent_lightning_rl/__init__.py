"""Agent Lightning RL: torch-based algorithms and the local policy server.

Importing this package stays light (no torch); import the submodules you need, e.g.
``agent_lightning_rl.models`` (model loading) or ``agent_lightning_rl.policy`` (the policy server).
"""

__version__ = "0.1.0"
