"""Agent Lightning APO: optimize the prompt and worked examples an agent reads from its resources.

* :class:`DemonstrationSearch` (``apo``): successful traces and labeled training tasks become worked examples;
  subsets are scored on validation tasks (minibatch first) and the best is kept.
* :class:`ReflectiveEvolution` (``gepa``): an optimizer LLM reads traces and rewards and edits the prompt;
  candidates live on a Pareto front over validation tasks.
"""

from __future__ import annotations

from agent_lightning_apo.config import APOConfig, DemoSearchConfig, ReflectConfig
from agent_lightning_apo.demos import DemonstrationSearch
from agent_lightning_apo.pareto import ParetoFront
from agent_lightning_apo.reflect import ReflectiveEvolution
from agent_lightning_apo.search import BudgetExhausted, Candidate, ResourceNotUsed

__all__ = [
    "APOConfig",
    "BudgetExhausted",
    "Candidate",
    "DemoSearchConfig",
    "DemonstrationSearch",
    "ParetoFront",
    "ReflectConfig",
    "ReflectiveEvolution",
    "ResourceNotUsed",
]
