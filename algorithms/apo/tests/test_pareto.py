from __future__ import annotations

import random
from collections import Counter

import pytest
from agent_lightning_apo import ParetoFront
from agent_lightning_apo.search import sign_test


def test_front_keeps_candidates_best_on_some_task_and_drops_dominated_ones() -> None:
    front = ParetoFront(4)
    front.add("seed", [1, 0, 0, 0])
    front.add("a", [1, 1, 0, 0])  # dominates seed
    front.add("b", [0, 0, 1, 0])  # worse on average, but alone solves task 2
    front.add("c", [0, 1, 0, 0])  # dominated by a
    assert front.front() == ["a", "b"]
    assert front.wins() == {"a": 3, "b": 2}  # task 3: nobody solves it, every undominated candidate ties
    assert front.best() == "a"
    assert front.task_best() == [1, 1, 1, 0]


def test_identical_scores_keep_the_first_and_selection_follows_the_wins() -> None:
    front = ParetoFront(3)
    front.add("x", [1, 1, 0])
    front.add("y", [1, 1, 0])
    front.add("z", [0, 0, 1])
    assert front.front() == ["x", "z"]
    drawn = Counter(front.select(random.Random(seed)) for seed in range(3000))
    assert set(drawn) == {"x", "z"}
    assert 1.6 < drawn["x"] / drawn["z"] < 2.4  # 2 wins against 1


def test_scores_must_cover_every_task_once() -> None:
    front = ParetoFront(2)
    with pytest.raises(ValueError, match="expected 2"):
        front.add("a", [1.0])
    front.add("a", [1.0, 0.0])
    with pytest.raises(ValueError, match="already"):
        front.add("a", [1.0, 0.0])


def test_sign_test() -> None:
    assert sign_test(0, 0) == 1.0
    assert sign_test(3, 0) == pytest.approx(1 / 8)
    assert sign_test(11, 0) == pytest.approx(1 / 2048)
    assert sign_test(1, 1) == pytest.approx(3 / 4)
