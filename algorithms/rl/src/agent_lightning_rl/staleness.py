"""Staleness: the policy version behind each sample, and admission control for asynchronous collection.

Versions count updates: the weights trained by update ``k + 1`` are version ``k``, and batch ``k`` is the batch
that update trains. A sample's staleness is ``k`` minus the version that generated it (the version of its first LLM
call; later calls of a rollout that straddles an update are newer). :class:`AdmissionGate` starts batch ``k`` only
once version ``k - max_staleness`` is being served, so no sample can be staler than the bound when it is trained,
and nothing has to be thrown away.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from agent_lightning.types import Sample

STALENESS_KEY = "agl.policy_staleness"
"""``Sample.metadata`` key: how many versions older than the trained weights the sample's first call is."""


class AdmissionGate:
    """Tells the collector when batch ``k`` may start: once the served version is at least ``k - max_staleness``."""

    def __init__(self, version: int, max_staleness: int) -> None:
        self.max_staleness = max_staleness
        self._version = version
        self._closed = False
        self._changed = threading.Condition()

    @property
    def version(self) -> int:
        """The policy version being served."""
        with self._changed:
            return self._version

    def may_start(self, batch: int) -> bool:
        """Whether batch ``batch`` may start now (without waiting)."""
        with self._changed:
            return batch - self._version <= self.max_staleness

    def admit(self, batch: int, timeout: float | None = None) -> bool:
        """Block until batch ``batch`` may start; ``False`` when the gate was closed (or ``timeout`` passed)."""
        with self._changed:
            admitted = self._changed.wait_for(
                lambda: self._closed or batch - self._version <= self.max_staleness, timeout
            )
            return bool(admitted) and not self._closed

    def advance(self, version: int) -> None:
        """Version ``version`` is being served now."""
        with self._changed:
            self._version = max(self._version, version)
            self._changed.notify_all()

    def close(self) -> None:
        """Wake every waiter; later :meth:`admit` calls return ``False``."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()


def tag_staleness(
    samples: Sequence[Sample], versions: Mapping[str, int], trained_version: int
) -> tuple[list[Sample], dict[str, float]]:
    """Copies of ``samples`` with their staleness in ``metadata[STALENESS_KEY]``, and its metrics.

    ``versions`` maps a resources id to its policy version; a sample of an unknown id counts as fresh.
    Metrics: ``train/staleness_mean``, ``train/staleness_max`` and ``train/stale_samples`` (staleness > 0).
    """
    tagged: list[Sample] = []
    ages: list[int] = []
    for sample in samples:
        version = versions.get(sample.resources_id or "")
        age = max(0, trained_version - version) if version is not None else 0
        ages.append(age)
        tagged.append(sample.model_copy(update={"metadata": {**sample.metadata, STALENESS_KEY: age}}))
    metrics = {
        "train/staleness_mean": sum(ages) / len(ages) if ages else 0.0,
        "train/staleness_max": float(max(ages, default=0)),
        "train/stale_samples": float(sum(a > 0 for a in ages)),
    }
    return tagged, metrics


def staleness_of(sample: Sample) -> int:
    """The staleness :func:`tag_staleness` recorded (0 when untagged)."""
    value = sample.metadata.get(STALENESS_KEY, 0)
    return value if isinstance(value, int) else 0
