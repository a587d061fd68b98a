"""The loop that runs a plan in the caller's thread: :func:`drive`.

It opens the plan's backend and follows the run's :class:`~pickpool._step.Step`: it submits
what the step starts and collects outcomes (or, for a backend that runs each chunk in the
caller's thread, runs the chunk itself: the plain loop), and always closes the backend:
normally when the input is done, with ``cancel=True`` on any exception, on ``break`` in an
``imap`` loop, or when the consumer's generator is garbage-collected.

``map``, ``imap``, auto's phases, ``advise``'s probe and the Executor's lanes all run through
it; ``amap`` on the caller's event loop runs ``_aio.adrive``, the same step awaited. Where this
loop sits in a call is drawn in ``docs/architecture.md``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterable
from typing import Any, Final, Literal, overload

from ._backends import Backend, Inline, Peaked, Setup, Wakeable
from ._cursor import Source
from ._plan import Plan
from ._results import Leg
from ._schedule import Block, Done, Schedule
from ._step import Step
from ._task import Caller, Outcome, Task, failed, outcome_count


class Cancelled(Exception):
    """The caller asked the run to stop (``amap``'s task was cancelled)."""


# How often a run that can be cancelled from another thread looks at its cancel flag, and
# one fed by a live input (see _cursor.Prefetched) at the input, if its backend cannot be woken.
_CANCEL_POLL: Final = 0.05
_LIVE_POLL: Final = 0.05
# How often the main thread looks up while it waits for outcomes. Python runs signal handlers
# in the main thread only, and a signal the kernel hands to another thread (a worker asleep in
# a call) does not wake a main thread blocked on a lock: Ctrl-C waited for the next outcome,
# 30 s away in a test, forever for a call that never returns (1 run in ~100 on a busy machine).
_SIGNAL_POLL: Final = 0.1


@overload
def drive(
    items: Iterable[Any] | Source,
    plan: Plan,
    setup: Setup,
    open_backend: Callable[[Setup], Backend],
    *,
    cancel: threading.Event | None = ...,
    start: int = ...,
    blocks: Literal[False] = ...,
    leg: Leg | None = ...,
) -> Generator[Done, None, None]: ...
@overload
def drive(
    items: Iterable[Any] | Source,
    plan: Plan,
    setup: Setup,
    open_backend: Callable[[Setup], Backend],
    *,
    cancel: threading.Event | None = ...,
    start: int = ...,
    blocks: bool,
    leg: Leg | None = ...,
) -> Generator[Done | Block, None, None]: ...
def drive(
    items: Iterable[Any] | Source,
    plan: Plan,
    setup: Setup,
    open_backend: Callable[[Setup], Backend],
    *,
    cancel: threading.Event | None = None,
    start: int = 0,
    blocks: bool = False,
    leg: Leg | None = None,
) -> Generator[Done | Block, None, None]:
    """Run ``setup.fn`` over ``items`` under ``plan``; account for each item once.

    Yields a :class:`Done` per item, or with ``blocks=True`` a :class:`Block` for consecutive
    items that worked at the first try (and a :class:`Done` for the others). ``cancel``: set
    from another thread, the run stops (raising :class:`Cancelled`). ``leg``: told what ran
    (the items handed out, the most calls at once, the seconds).
    """
    began = time.perf_counter()
    signals = _SIGNAL_POLL if threading.current_thread() is threading.main_thread() else None
    backend = open_backend(setup)
    step = Step(items, plan, start=start, blocks=blocks)
    source = step.schedule.source
    dones: Generator[Done | Block, None, None] | None = None
    try:
        inline = backend.inline if isinstance(backend, Inline) else None
        if inline is not None:
            if leg is not None:
                leg.workers = max(leg.workers, 1)
            dones = _inline(step, inline, cancel)
        else:
            poll = _least(_CANCEL_POLL if cancel is not None else None, signals)
            if source.live:
                # An item that comes while the loop waits for outcomes wakes it.
                if isinstance(backend, Wakeable):
                    source.attach(backend.wake)
                else:
                    poll = _least(poll, _LIVE_POLL)
            dones = _pooled(step, backend, cancel, poll, leg, plan.workers)
        if leg is None:
            yield from dones
        else:
            for done in dones:
                if not leg.items:
                    leg.first = time.perf_counter() - began
                leg.items += len(done.values) if type(done) is Block else 1
                yield done
                del done  # (not held while the next outcome is awaited: see _pooled)
    finally:
        if dones is not None:
            dones.close()
        if source.live:
            source.attach(None)  # (before the backend closes: no wake may reach it after)
        backend.close(cancel=not step.finished or step.over)
        if leg is not None:
            leg.seconds += time.perf_counter() - began
            if isinstance(backend, Peaked) and backend.peak:
                leg.workers = backend.peak  # (counted where the calls run: no estimate)
    step.end()


def _pooled(
    step: Step,
    backend: Backend,
    cancel: threading.Event | None,
    poll: float | None,
    leg: Leg | None = None,
    workers: int = 1,
) -> Generator[Done | Block, None, None]:
    """Submit what the step starts, collect outcomes, hand out what the step says.

    Nothing of a finished call (its item, its result) stays referenced here while the loop
    waits for the next outcome: the caller may be waiting for it to be let go. ``poll``: the
    longest it waits for outcomes before it looks again (at ``cancel``, at a live input).
    ``leg``: told the most calls in flight, at most ``workers`` (for a backend that does not
    count them itself, see ``Peaked``).
    """
    unsent: list[Outcome] = []  # items that could not be sent: failed, not yet accepted
    while True:
        unsent += _send_all(backend, step.schedule, step.starts())
        if leg is not None:
            leg.workers = max(leg.workers, min(step.in_flight, workers))
        if step.finished:
            return
        wait = 0.0 if unsent else _least(step.wait(), poll)
        outcomes = backend.collect(wait)
        if not outcomes and not unsent and not step.in_flight and not step.idle(poll, cancel):
            # (Nothing runs, so collect() returned at once: the step waited instead, for a
            # retry's backoff, the pace, or a live input's next item.)
            raise Cancelled
        if cancel is not None and cancel.is_set():
            raise Cancelled
        if unsent:
            outcomes, unsent = unsent + outcomes, []
        dones = step.accept(outcomes)
        del outcomes
        yield from dones
        del dones


def _inline(
    step: Step, caller: Caller, cancel: threading.Event | None
) -> Generator[Done | Block, None, None]:
    """The plain loop: each chunk the step starts runs here, in the caller's thread, in order.

    Exactly what ``for x in items: fn(x)`` calls, in the same order, one at a time: a chunk
    stops at a failure, which is retried in place (the step starts nothing else meanwhile);
    under ``on_error="raise"`` nothing after a final failure runs. A chunk that all works costs
    no more than ``map(fn, chunk)``.
    """
    poll = _CANCEL_POLL if cancel is not None else None
    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled
        tasks = step.starts()
        if step.finished:
            return
        if not tasks:
            if not step.idle(poll, cancel):  # (a retry's backoff, or the pace)
                raise Cancelled
            continue
        dones = _run_inline(step, caller, tasks)
        del tasks
        yield from dones
        del dones


def _run_inline(step: Step, caller: Caller, tasks: list[Task]) -> list[Done | Block]:
    """Run ``tasks`` here, each stopping at a failure; what the step hands out for them."""
    dones: list[Done | Block] = []
    for _, first, items in tasks:
        outcomes = caller.run_items(first, items, stop=True)
        ran = outcome_count(outcomes)
        if ran < len(items):
            step.unrun(first + ran)
        dones += step.accept(outcomes)
    return dones


def _send_all(backend: Backend, schedule: Schedule, tasks: list[Task]) -> list[Outcome]:
    """Submit each of ``tasks`` (see :func:`send`); the outcomes of items that could not go."""
    unsent: list[Outcome] = []
    for task in tasks:
        unsent += send(backend, schedule, task)
    return unsent


def _least(a: float | None, b: float | None) -> float | None:
    """The shorter of two waits, None standing for no limit."""
    if a is None:
        return b
    return a if b is None else min(a, b)


def send(backend: Backend, schedule: Schedule, task: Task) -> list[Outcome]:
    """Submit ``task``; an item the backend cannot send fails alone, as its outcome here.

    A backend raises ``TypeError`` at once for work it cannot send (an item that cannot be
    pickled for a worker process): the task's items are then sent one by one, so that only
    the culprit fails, under ``on_error="collect"`` and ``"skip"`` as any other failure.
    """
    try:
        backend.submit(task)
    except TypeError as exc:
        if len(task[2]) == 1:
            return [failed(task[1], exc)]
        outcomes: list[Outcome] = []
        for index in range(task[1], task[1] + len(task[2])):
            outcomes += send(backend, schedule, schedule.single(index))
        return outcomes
    return []
