"""The one retry policy: capped exponential backoff with jitter, a deadline, a stop event.

Every loop that retries a store (the span emitter, a context creating and completing its
rollout, the HTTP store client, the SQL backends) builds its retrying from :class:`Backoff`
with :func:`retrying` or :func:`async_retrying`, thin wrappers of `tenacity`_::

    for attempt in retrying(Backoff(first=0.1, cap=5.0), stop_event=stopping):
        with attempt:
            store_call()

When the policy gives up, the last exception is raised as it is. Permanent errors
(:func:`is_permanent`: invalid input, unknown ids) are never retried.

.. _tenacity: https://tenacity.readthedocs.io
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import tenacity

from agent_lightning.errors import NotFound

PERMANENT_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, NotFound)
"""Store errors that a retry cannot fix (invalid input, unknown ids); anything else is retried."""


def is_permanent(exc: BaseException) -> bool:
    """Whether ``exc`` from a store call means "invalid, never retry" rather than "try again later"."""
    return isinstance(exc, PERMANENT_ERRORS)


def is_transient(exc: BaseException) -> bool:
    """Whether a retry may fix ``exc``: any ``Exception`` that is not :func:`is_permanent`."""
    return isinstance(exc, Exception) and not is_permanent(exc)


@dataclass(frozen=True)
class Backoff:
    """How to retry: pauses of ``first * 2**n`` (at most ``cap`` seconds) plus up to ``first`` of jitter.

    ``deadline``: give up rather than pause past this many seconds after the first try.
    ``tries``: give up after this many tries. ``None``: no such limit.
    """

    first: float = 0.1
    cap: float = 5.0
    deadline: float | None = None
    tries: int | None = None

    def _kwargs(
        self,
        retry_if: Callable[[BaseException], bool],
        stop_event: threading.Event | None,
        before_sleep: Callable[[BaseException, float], None] | None,
    ) -> dict[str, object]:
        stops: list[tenacity.stop.stop_base] = [tenacity.stop_never]
        if self.deadline is not None:
            stops.append(tenacity.stop_before_delay(self.deadline))
        if self.tries is not None:
            stops.append(tenacity.stop_after_attempt(self.tries))
        if stop_event is not None:
            stops.append(tenacity.stop_when_event_set(stop_event))
        stop = stops[0]
        for extra in stops[1:]:
            stop = stop | extra
        wait = tenacity.wait_exponential(multiplier=self.first, max=self.cap) + tenacity.wait_random(0, self.first)
        kwargs: dict[str, object] = {
            "wait": wait,
            "stop": stop,
            "retry": tenacity.retry_if_exception(retry_if),
            "reraise": True,
        }
        if before_sleep is not None:

            def note(state: tenacity.RetryCallState) -> None:
                outcome = state.outcome
                error = outcome.exception() if outcome is not None else None
                if error is not None:
                    before_sleep(error, state.upcoming_sleep)

            kwargs["before_sleep"] = note
        return kwargs


def retrying(
    backoff: Backoff,
    *,
    retry_if: Callable[[BaseException], bool] = is_transient,
    stop_event: threading.Event | None = None,
    before_sleep: Callable[[BaseException, float], None] | None = None,
) -> tenacity.Retrying:
    """A blocking retry loop for ``backoff``; pauses end early, and retrying stops, once ``stop_event`` is set.

    ``before_sleep(error, pause)`` is called before each pause (to log or count the retry).
    """
    kwargs = backoff._kwargs(retry_if, stop_event, before_sleep)
    if stop_event is not None:
        kwargs["sleep"] = stop_event.wait
    return tenacity.Retrying(**kwargs)  # type: ignore[arg-type]


def async_retrying(
    backoff: Backoff,
    *,
    retry_if: Callable[[BaseException], bool] = is_transient,
    before_sleep: Callable[[BaseException, float], None] | None = None,
) -> tenacity.AsyncRetrying:
    """The asyncio form of :func:`retrying` (pauses with ``asyncio.sleep``)."""
    return tenacity.AsyncRetrying(**backoff._kwargs(retry_if, None, before_sleep))  # type: ignore[arg-type]
