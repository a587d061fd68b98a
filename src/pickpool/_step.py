"""The one step of every run loop: what to start now, what to retry when, and when to stop.

:class:`Step` wraps a run's :class:`~pickpool._schedule.Schedule` with time: retries wait out
their backoff here, and every start, new or retried, takes its turn from the run's pacer
(``max_rate``). Every loop that runs a plan calls it the same way (``_driver.drive`` over a
backend or inline, ``_aio.adrive`` on the caller's event loop, and through ``drive`` the
Executor's lanes)::

    while True:
        for task in step.starts(): hand the task to the workers
        if step.finished: break
        wait for outcomes, at most step.wait() seconds (step.idle() when none can come)
        hand out step.accept(outcomes)
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Iterable
from typing import Any

from ._cursor import Source
from ._pace import Pacer
from ._plan import Plan
from ._schedule import Block, Done, Schedule
from ._task import Outcome, Task


class Step:
    """A run's schedule, its retries waiting out their backoff, and its pacer.

    ``items``, ``start`` and ``blocks``: as :class:`~pickpool._schedule.Schedule` takes them.
    """

    __slots__ = ("_later", "_now", "_order", "_pacer", "schedule")

    def __init__(
        self, items: Iterable[Any] | Source, plan: Plan, *, start: int = 0, blocks: bool = False
    ) -> None:
        self.schedule = Schedule(items, plan, start=start, blocks=blocks)
        self._pacer = plan.pacer
        # Items to run again (each a task of one item): at once (an item of a chunk that died
        # with its worker; a retry with no backoff), or once their backoff is over: (due,
        # order, task), ``time.monotonic()``.
        self._now: list[Task] = []
        self._later: list[tuple[float, int, Task]] = []
        self._order = itertools.count()

    @property
    def finished(self) -> bool:
        """Nothing in flight and nothing left to start, or the run's failure handed out."""
        return self.schedule.finished

    @property
    def over(self) -> bool:
        """The run ended at a failure (see :attr:`Schedule.over`)."""
        return self.schedule.over

    @property
    def in_flight(self) -> int:
        """Items handed to the workers whose outcome has not come back yet."""
        return self.schedule.outstanding - len(self._now) - len(self._later)

    def starts(self) -> list[Task]:
        """The tasks to start now: items to run again at once, then new chunks the window has
        room for, then retries whose backoff is over (they queue behind what runs); under a
        rate, every item to run again first, and only as many starts as the pace lets."""
        if self._pacer is None:
            now, self._now = self._now, []
            return self._allowed(now) + self.schedule.tasks() + self._allowed(self._due())
        return self._paced(self._pacer)

    def _due(self) -> list[Task]:
        """The retries whose backoff is over, taken out of the waiting ones."""
        later, due = self._later, []
        if later:
            clock = time.monotonic()
            while later and later[0][0] <= clock:
                due.append(heapq.heappop(later)[2])
        return due

    def _allowed(self, tasks: list[Task]) -> list[Task]:
        """``tasks`` (items run again), but those past a failure that ended the run since."""
        return [task for task in tasks if self.schedule.may_start(task)]

    def _paced(self, pacer: Pacer) -> list[Task]:
        """One start at a time, as the pace allows: items to run again first, then new items."""
        schedule, tasks = self.schedule, []
        while pacer.delay() <= 0:
            self._now = self._allowed(self._now or self._due())
            if self._now:
                task = self._now.pop(0)
            else:
                new = schedule.tasks(most=1)
                if not new:
                    break
                task = new[0]
            pacer.reserve()  # (now: its delay was 0)
            tasks.append(task)
        return tasks

    def wait(self) -> float | None:
        """Seconds until :meth:`starts` may give a task with no outcome coming first: a
        retry's backoff, or under a rate the next start; None if only outcomes (or a live
        input's next item) can move the run on."""
        later, pacer = self._later, self._pacer
        at = later[0][0] - time.monotonic() if later else math.inf
        if self._now:
            at = 0.0
        if pacer is not None:
            if self.schedule.has_room():
                at = 0.0  # a new item may start, when the pace lets it
            if at < math.inf:
                at = max(at, pacer.delay())
        return None if at == math.inf else max(0.0, at)

    def idle(self, limit: float | None, cancel: threading.Event | None = None) -> bool:
        """Nothing is in flight: wait until something may start (a retry's backoff, the pace, a
        live input's next item), at most ``limit`` seconds. False if ``cancel`` was set."""
        wait = self.wait()
        if wait is None or (limit is not None and limit < wait):
            wait = limit
        if cancel is not None:
            return not cancel.wait(wait)
        self.schedule.source.wait(wait)
        return True

    def accept(self, outcomes: list[Outcome]) -> list[Done | Block]:
        """Take finished outcomes; what to hand out, in order. Items to run again wait here,
        each for its backoff (none for an item of a chunk that died with its worker)."""
        retries, dones = self.schedule.accept(outcomes)
        if retries:
            clock = time.monotonic()
            for task, delay in retries:
                if delay > 0:
                    heapq.heappush(self._later, (clock + delay, next(self._order), task))
                else:
                    self._now.append(task)
        return dones

    def unrun(self, index: int) -> None:
        """An inline chunk stopped at a failure: item ``index`` and the rest did not run."""
        self.schedule.unrun(index)

    def end(self) -> None:
        """The loop ran to its end: raise what the input raised, as a plain loop would (not
        if the run ended at a failure: that failure is what it raises)."""
        if not self.schedule.over:
            self.schedule.check_source()
