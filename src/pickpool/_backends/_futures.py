"""What the backends built on an executor's futures share (``interpreters``, ``dask``).

Their futures say when a task finished, never when it started, so a per-item ``timeout``
counts from submission (the plan keeps no more tasks in flight than workers, so none waits in
a queue meanwhile), and an overdue task can only be cancelled, not stopped.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

from .._errors import TaskTimeout
from .._task import ERROR, Caller, Outcome, Task, format_traceback, task_indices

F = TypeVar("F")


def run_chunk(fn: Any, task: Task) -> list[Outcome]:
    """What a worker runs for one chunk, wherever it is: the items, as every model runs them."""
    caller = Caller(fn)
    try:
        return caller.run(task)
    finally:
        caller.close()


def run_chunk_pickled(fn: Any, task: Task, started: Any) -> bytes:
    """:func:`run_chunk` in a sub-interpreter, its outcomes pickled as a worker process pickles
    them: an exception that would not load back as itself (an ``__init__`` with keyword-only
    arguments) travels by its state, and a result that cannot travel fails its item alone,
    where the interpreter's own pickling would fail the whole chunk with NotShareableError.
    The task's id goes to ``started`` first (its timeout counts from there).

    Here, not in the interpreters' module: each new interpreter imports the module this
    function lives in, and this one needs neither the cost model nor worker processes."""
    from .._pickling import dumps_outcomes

    started.put(task[0])
    return dumps_outcomes(run_chunk(fn, task))


def failed_task(task: Task, error: BaseException) -> list[Outcome]:
    """Every item of ``task`` failed with ``error`` (its chunk could not run or come back)."""
    return [(i, ERROR, error, format_traceback(error)) for i in task_indices(task)]


def wait_for(
    futures: dict[F, tuple[Task, float]], limit: float | None, timeout: float | None
) -> float | None:
    """How long to wait for a future: ``timeout``, or less if a task falls due sooner."""
    if limit is None or not futures:
        return timeout
    soonest = min(t for _, t in futures.values()) + limit - time.monotonic()
    return max(0.0, soonest if timeout is None else min(timeout, soonest))


def overdue(futures: dict[Any, tuple[Task, float]], limit: float, where: str) -> list[Outcome]:
    """Cancel the tasks past ``limit`` and fail their items with ``TaskTimeout``."""
    now = time.monotonic()
    outcomes: list[Outcome] = []
    for future, (task, submitted) in list(futures.items()):
        if now - submitted < limit:
            continue
        del futures[future]
        future.cancel()
        for index in task_indices(task):
            exc = TaskTimeout(f"item {index} ran longer than timeout={limit:g}s{where}")
            outcomes.append((index, ERROR, exc, format_traceback(exc)))
    return outcomes
