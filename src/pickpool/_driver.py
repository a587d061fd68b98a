"""The one run loop, the same for every model.

:class:`Schedule` is the bookkeeping, free of I/O and clocks: it reads the input lazily, cuts it
into chunks, keeps a bounded window of items in flight, puts outcomes back in input order (or
not), and decides retries. :func:`drive` (sync) and ``_aio.adrive`` (on the caller's event loop)
move tasks and outcomes between it and a backend, and always close the backend: normally when
the input is done, with ``cancel=True`` on any exception, on ``break`` in an ``imap`` loop, or
when the consumer's generator is garbage-collected.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any

from ._backends import Backend, Setup
from ._task import ERROR, FATAL, OK, Caller, Outcome, Task


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the driver needs to know, already checked and defaulted by ``_api``."""

    model: str  # the backend that runs it
    workers: int
    chunksize: int
    window: int  # items submitted but not yet handed to the consumer, at most
    ordered: bool
    timeout: float | None
    retries: int
    fail_fast: bool  # on_error="raise": start nothing after the first final failure


@dataclass(slots=True)
class Done:
    """One item's final outcome, as the driver hands it to the API layer.

    Not frozen: one is made per item, and a frozen dataclass's ``__init__`` costs 3x more.
    """

    index: int
    item: Any
    status: int
    value: Any  # the result, or the exception
    traceback: str | None
    attempts: int


class Cancelled(Exception):
    """The caller asked the run to stop (``amap``'s task was cancelled)."""


class Schedule:
    """What to submit next and what to hand out, given the outcomes so far."""

    def __init__(self, items: Iterable[Any], plan: Plan, *, start: int = 0) -> None:
        # ``start``: the index of the first item, when an earlier run already took the ones
        # before it (``model="auto"`` continues where its probe stopped).
        self._source = enumerate(items, start)
        self._plan = plan
        self._outstanding: dict[int, Any] = {}  # index -> item: submitted, not yet handed out
        self._attempts: dict[int, int] = {}  # only items tried more than once
        self._buffer: dict[int, Done] = {}  # ordered: finished, waiting for earlier items
        self._next_out = start
        self._next_task = 0
        self._exhausted = False
        self._failed_at: int | None = None

    @property
    def finished(self) -> bool:
        """Nothing in flight and nothing left to submit."""
        return not self._outstanding and (self._exhausted or self._failed_at is not None)

    def tasks(self) -> list[Task]:
        """Chunks to submit now: as many as the window has room for."""
        plan, tasks = self._plan, []
        while not self._exhausted and self._failed_at is None:
            room = plan.window - len(self._outstanding)
            if room < min(plan.chunksize, plan.window):
                break
            chunk = list(itertools.islice(self._source, min(plan.chunksize, room)))
            if not chunk:
                self._exhausted = True
                break
            self._outstanding.update(chunk)
            tasks.append(self._task(chunk))
        return tasks

    def accept(self, outcomes: list[Outcome]) -> tuple[list[Task], list[Done]]:
        """Take finished outcomes; return (retries to submit, items to hand out in order)."""
        plan, retries, out = self._plan, [], []
        outstanding, attempts, buffer = self._outstanding, self._attempts, self._buffer
        ordered, fail_fast = plan.ordered, plan.fail_fast
        for index, status, value, text in outcomes:
            if status == OK and not attempts:
                # The common case, kept short: one item's first and only try worked.
                done = Done(index, outstanding[index], OK, value, None, 1)
            else:
                if status == FATAL:
                    raise value
                tries = attempts.get(index, 1)
                if status == ERROR and tries <= plan.retries:
                    attempts[index] = tries + 1
                    retries.append(self._task([(index, outstanding[index])]))
                    continue
                attempts.pop(index, None)
                done = Done(index, outstanding[index], status, value, text, tries)
                # As in the serial loop, the lowest failing index is the one raised: items
                # before it still run, nothing after it is started any more.
                if (
                    ordered
                    and status == ERROR
                    and fail_fast
                    and (self._failed_at is None or index < self._failed_at)
                ):
                    self._failed_at = index
            if not ordered:
                del outstanding[index]
                out.append(done)
            elif index == self._next_out and not buffer:
                del outstanding[index]
                out.append(done)
                self._next_out = index + 1
            else:
                buffer[index] = done
        while self._next_out in buffer:
            out.append(buffer.pop(self._next_out))
            del outstanding[self._next_out]
            self._next_out += 1
        return retries, out

    def _task(self, chunk: list[tuple[int, Any]]) -> Task:
        self._next_task += 1
        return (self._next_task, chunk)


# How often a run that can be cancelled from another thread looks at its cancel flag.
_CANCEL_POLL = 0.05


def drive(
    items: Iterable[Any],
    plan: Plan,
    setup: Setup,
    open_backend: Callable[[Setup], Backend],
    *,
    cancel: threading.Event | None = None,
    start: int = 0,
) -> Generator[Done, None, None]:
    """Run ``setup.fn`` over ``items`` under ``plan``; yield each item's :class:`Done` once."""
    backend = open_backend(setup)
    finished = False
    inline: Caller | None = getattr(backend, "inline", None)
    if inline is not None:
        try:
            yield from _loop(items, plan, inline, cancel, start)
            finished = True
        finally:
            backend.close(cancel=not finished)
        return
    schedule = Schedule(items, plan, start=start)
    poll = _CANCEL_POLL if cancel is not None else None
    try:
        while True:
            for task in schedule.tasks():
                backend.submit(task)
            if schedule.finished:
                finished = True
                return
            outcomes = backend.collect(poll)
            if cancel is not None and cancel.is_set():
                raise Cancelled
            retries, dones = schedule.accept(outcomes)
            for task in retries:
                backend.submit(task)
            yield from dones
    finally:
        backend.close(cancel=not finished)


def _loop(
    items: Iterable[Any],
    plan: Plan,
    caller: Caller,
    cancel: threading.Event | None,
    start: int,
) -> Generator[Done, None, None]:
    """The serial model: the plain loop itself, with retries, and nothing run after a failure.

    Exactly what ``for x in items: fn(x)`` calls, at a third of the scheduler's cost per item.
    """
    retries, fail_fast = plan.retries, plan.fail_fast
    for index, item in enumerate(items, start):
        if cancel is not None and cancel.is_set():
            raise Cancelled
        tries = 1
        _, status, value, text = caller.call(index, item)
        while status != OK:
            if status == FATAL:
                raise value
            if tries > retries:
                break
            tries += 1
            _, status, value, text = caller.call(index, item)
        yield Done(index, item, status, value, text, tries)
        if status != OK and fail_fast:
            return
