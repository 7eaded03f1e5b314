"""The Pareto front of candidates over validation tasks (GEPA's candidate pool)."""

from __future__ import annotations

import random
from collections.abc import Sequence


class ParetoFront:
    """Per-task scores of every candidate, and which of them are worth building on.

    A candidate is on the front when it has the best score of all candidates on at least one task and no other
    candidate dominates it (at least as good on every task, better on one). Selection draws from the front with
    probability proportional to the number of tasks on which a candidate is best, so a candidate that alone solves
    some tasks keeps being improved even when its average is lower.
    """

    def __init__(self, num_tasks: int) -> None:
        if num_tasks < 1:
            raise ValueError("a Pareto front needs at least one task")
        self.num_tasks = num_tasks
        self.scores: dict[str, list[float]] = {}

    def add(self, candidate: str, scores: Sequence[float]) -> None:
        """Record ``candidate``'s score on each task."""
        if len(scores) != self.num_tasks:
            raise ValueError(f"expected {self.num_tasks} per-task scores, got {len(scores)}")
        if candidate in self.scores:
            raise ValueError(f"candidate {candidate!r} is already on record")
        self.scores[candidate] = [float(s) for s in scores]

    def mean(self, candidate: str) -> float:
        values = self.scores[candidate]
        return sum(values) / len(values)

    def best(self) -> str:
        """The candidate with the highest mean score (the earliest among equals)."""
        if not self.scores:
            raise ValueError("no candidate has been scored")
        return max(self.scores, key=self.mean)

    def task_best(self) -> list[float]:
        """The best score of any candidate on each task."""
        return [max(s[i] for s in self.scores.values()) for i in range(self.num_tasks)]

    def _dominates(self, a: str, b: str) -> bool:
        sa, sb = self.scores[a], self.scores[b]
        return all(x >= y for x, y in zip(sa, sb, strict=True)) and any(x > y for x, y in zip(sa, sb, strict=True))

    def wins(self) -> dict[str, int]:
        """For each candidate on the front: on how many tasks it has the best score."""
        best = self.task_best()
        counts = {c: sum(s[i] >= best[i] for i in range(self.num_tasks)) for c, s in self.scores.items()}
        undominated = {c for c in self.scores if not any(self._dominates(o, c) for o in self.scores if o != c)}
        # of candidates with identical scores keep the first recorded
        seen: set[tuple[float, ...]] = set()
        out: dict[str, int] = {}
        for candidate in self.scores:
            key = tuple(self.scores[candidate])
            if candidate in undominated and counts[candidate] > 0 and key not in seen:
                seen.add(key)
                out[candidate] = counts[candidate]
        return out

    def front(self) -> list[str]:
        """The candidates on the front, in the order they were recorded."""
        return list(self.wins())

    def select(self, rng: random.Random) -> str:
        """Draw a parent from the front, weighted by the number of tasks it is best on."""
        wins = self.wins()
        if not wins:
            return self.best()
        candidates = list(wins)
        return rng.choices(candidates, weights=[wins[c] for c in candidates], k=1)[0]
