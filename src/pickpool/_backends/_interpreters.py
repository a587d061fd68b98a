"""``model="interpreters"``: sub-interpreters, one GIL each (Python 3.14+).

``concurrent.futures.InterpreterPoolExecutor`` runs each worker thread in an interpreter of its
own: pure-Python work runs in parallel as under processes, with no process start-up, though
functions, items and results still cross between interpreters by pickle. Each chunk is one
call of :func:`run_chunk` in a worker interpreter, through the same
:class:`~pickpool._task.Caller` as every other model. A worker thread cannot be killed: an
item past ``timeout`` is reported as :class:`~pickpool.TaskTimeout` and left to finish, as
under threads.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.thread  # (see available)
import importlib.util
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

from .. import _native
from .._costs import Costs, Option
from .._errors import BackendUnavailable
from .._log import logger
from .._pickling import loads_outcomes
from .._task import ERROR, Outcome, Task
from . import Model, Setup, Traits, every_core
from ._futures import failed_task, overdue, run_chunk_pickled, wait_for
from ._processes import ProcessesBackend, predict_pickled
from ._threads import CANCEL_GRACE, IDLE_LIFETIME


def available() -> bool:
    # Asked without importing the pool's module: concurrent.futures imports it on first use,
    # and the thread module it imports registers an exit hook, which fails once the program
    # is exiting (an executor's calls still running then would fail). That module is
    # imported above, with this one, for the pool's first use at exit.
    return (
        importlib.util.find_spec("_interpreters") is not None
        and importlib.util.find_spec("concurrent.futures.interpreter") is not None
    )


def unavailable() -> str | None:
    """Why sub-interpreters cannot run here, or None."""
    if available():
        return None
    return (
        "model='interpreters' needs Python 3.14 or later "
        "(concurrent.futures.InterpreterPoolExecutor); this is Python "
        f"{sys.version.split()[0]}: use model='processes' for pure-Python work"
    )


def check_available() -> None:
    """:class:`~pickpool.BackendUnavailable` with the reason, where there are no interpreters."""
    why = unavailable()
    if why is not None:
        raise BackendUnavailable(why)


# While a chunk waits to start in its interpreter, ``collect`` looks this often for its start.
LOOK: Final = 0.05


class _WarmPool:
    """One pool of sub-interpreters kept between runs, as worker processes are: creating an
    interpreter and importing in it what the calls need (pickpool's running half, the
    function's module) takes ~60 ms a worker on 3.14, most of a short run. A run of the
    same size takes it; what the calls left in their interpreters' modules stays there, as
    in a warm worker process. A pool is kept only after a run that ended normally, its
    chunks all ended (as for processes, not after a cancelled or a ``fresh`` one), and
    for :data:`~pickpool._backends._threads.IDLE_LIFETIME` seconds unused, as kept threads
    and processes are: then its interpreters, and all they imported, are let go."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: tuple[int, Any] | None = None  # (workers, pool)
        self._timer: threading.Timer | None = None  # (the idle pool's end)

    @property
    def workers(self) -> int:
        """Workers of the idle pool (0: none)."""
        idle = self._idle
        return 0 if idle is None else idle[0]

    @property
    def started(self) -> int:
        """Workers of the idle pool that started (its threads: it starts them as chunks come)."""
        idle = self._idle
        return 0 if idle is None else min(idle[0], len(getattr(idle[1], "_threads", ())))

    def take(self, workers: int) -> Any | None:
        with self._lock:
            if self._idle is None or self._idle[0] != workers:
                return None
            pool, self._idle = self._idle[1], None
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        return pool

    def park(self, workers: int, pool: Any) -> None:
        timer = threading.Timer(IDLE_LIFETIME, self._expire, (pool,))
        timer.daemon = True
        with self._lock:
            old, self._idle = self._idle, (workers, pool)
            old_timer, self._timer = self._timer, timer
        timer.start()
        if old_timer is not None:
            old_timer.cancel()
            old_timer.join()
        if old is not None:
            old[1].shutdown(wait=True)

    def _expire(self, pool: Any) -> None:
        with self._lock:
            if self._idle is None or self._idle[1] is not pool:
                return  # (taken, or replaced, in the meantime)
            self._idle = self._timer = None
        pool.shutdown(wait=True)

    def clear(self) -> None:
        """Stop the idle pool's interpreters and threads, and wait for them (in tests)."""
        with self._lock:
            old, self._idle = self._idle, None
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            timer.join()
        if old is not None:
            old[1].shutdown(wait=True)

    def forget(self) -> None:
        """In a forked child: the pool's threads, and its timer's, stayed in the parent."""
        self._idle = self._timer = None
        self._lock = threading.Lock()


warm = _WarmPool()
os.register_at_fork(after_in_child=warm.forget)


class InterpretersBackend:
    def __init__(self, setup: Setup) -> None:
        check_available()
        from concurrent import interpreters  # type: ignore[attr-defined]

        self._setup = setup
        pool_class: Any = concurrent.futures.InterpreterPoolExecutor  # type: ignore[attr-defined]
        parked = None if setup.fresh else warm.take(setup.workers)
        self._pool = parked or pool_class(max_workers=setup.workers)
        # Each chunk's future, its task and when it started in its interpreter (inf until
        # then): a timeout counts from there. Creating an interpreter and importing what the
        # function needs in it (a few tenths of a second on 3.14) is not the items' time.
        self._futures: dict[concurrent.futures.Future[Any], tuple[Task, float]] = {}
        self._started: Any = interpreters.create_queue()  # chunks' ids, as each starts
        self._empty: type[Exception] = interpreters.QueueEmpty
        self._closed = False
        self._left: list[concurrent.futures.Future[Any]] = []  # overdue, left to finish
        # Interpreters share the process, and with it each native library's thread pool.
        self._inner = _native.Held(_native.limit_for(setup.inner_threads, setup.workers))
        # Worker processes, once the function's module refuses to load in a sub-interpreter.
        self._fallback: ProcessesBackend | None = None

    def submit(self, task: Task) -> None:
        if self._fallback is not None:
            self._fallback.submit(task)
            return
        future = self._pool.submit(run_chunk_pickled, self._setup.fn, task, self._started)
        self._futures[future] = (task, math.inf)

    def _note_starts(self) -> None:
        started: set[int] = set()
        while True:
            try:
                started.add(self._started.get_nowait())
            except self._empty:
                break
        if started:
            now = time.monotonic()
            for future, (task, _) in self._futures.items():
                if task[0] in started:  # (a chunk that ended meanwhile is no longer here)
                    self._futures[future] = (task, now)

    def collect(self, timeout: float | None) -> list[Outcome]:
        fallback = self._fallback
        if fallback is not None and not self._futures:
            return fallback.collect(timeout)
        outcomes = [] if fallback is None else fallback.collect(0.0)
        if fallback is not None and not outcomes:
            timeout = LOOK if timeout is None else min(timeout, LOOK)
        return outcomes + self._collect_here(timeout)

    def _collect_here(self, timeout: float | None) -> list[Outcome]:
        if not self._futures:
            return []
        limit = self._setup.timeout
        self._note_starts()
        wait = wait_for(self._futures, limit, timeout)
        if limit is not None and any(t == math.inf for _, t in self._futures.values()):
            wait = LOOK if wait is None else min(wait, LOOK)
        done, _ = concurrent.futures.wait(
            list(self._futures), timeout=wait, return_when=concurrent.futures.FIRST_COMPLETED
        )
        self._note_starts()
        outcomes: list[Outcome] = []
        for future in done:
            task, _ = self._futures.pop(future)
            error = future.exception()
            if error is None:
                outcomes += self._run_refused(loads_outcomes(future.result(), task), task)
            elif refuses_interpreters(error):
                # (Its function could not even load: no item of it ran.)
                self._fall_back(error).submit(task)
            else:  # it could not reach the interpreter, or its result could not come back
                outcomes += failed_task(task, error)
        if limit is not None:
            before = list(self._futures)
            outcomes += overdue(
                self._futures,
                limit,
                "; a sub-interpreter's thread cannot be killed and was left to finish",
            )
            self._left += [future for future in before if future not in self._futures]
        return outcomes

    def _run_refused(self, outcomes: list[Outcome], task: Task) -> list[Outcome]:
        """``outcomes`` of ``task``, but for items whose call imported a module that refused
        the sub-interpreter: those are run again on worker processes (in the interpreter,
        the call got as far as that import)."""
        refused = [o for o in outcomes if o[1] == ERROR and refuses_interpreters(o[2])]
        if not refused:
            return outcomes
        fallback = self._fall_back(refused[0][2])
        for index, *_ in refused:
            fallback.submit((task[0], index, [task[2][index - task[1]]]))
        again = {o[0] for o in refused}
        return [o for o in outcomes if o[0] not in again]

    def _fall_back(self, error: BaseException) -> ProcessesBackend:
        if self._fallback is None:
            logger.warning(
                "model='interpreters' runs %s on worker processes: a module it needs cannot "
                "load in a sub-interpreter (%s)",
                getattr(self._setup.fn, "__qualname__", "the function"),
                _refusal(error),
            )
            self._fallback = ProcessesBackend(self._setup)
        return self._fallback

    def close(self, *, cancel: bool) -> None:
        if self._fallback is not None:
            self._fallback.close(cancel=cancel)
        if self._closed:
            return
        self._closed = True
        running = list(self._futures)
        self._futures.clear()
        ended = all(future.done() for future in (*running, *self._left))
        if ended and not (cancel or self._setup.fresh or getattr(self._pool, "_broken", False)):
            warm.park(self._setup.workers, self._pool)  # (nothing runs in it)
            self._inner.close()
            return
        # A chunk past its timeout was left to finish, as under threads: not waited for.
        overdue = any(not future.done() for future in self._left)
        self._pool.shutdown(wait=not (cancel or overdue), cancel_futures=True)
        if cancel:
            # A chunk that runs cannot be stopped inside its interpreter: as under threads, it
            # gets a grace period to end, and then the pool's threads are waited for; one still
            # running after it is left to finish in the background, its result dropped.
            _, late = concurrent.futures.wait(running, timeout=CANCEL_GRACE)
            if not late:
                self._pool.shutdown(wait=True)
        self._inner.close()

    def __repr__(self) -> str:
        return f"<InterpretersBackend {len(self._futures)} chunks in flight>"


# CPython's words for an extension module that cannot load in an isolated sub-interpreter
# (single-phase initialisation: numpy and many others, as of 2026).
_REFUSES: Final = "does not support loading in subinterpreters"


def _refusal(error: BaseException) -> str | None:
    """The line of ``error`` (or of what it was raised from) that says a module refused to
    load in a sub-interpreter, or None."""
    seen: BaseException | None = error
    for _ in range(8):  # (a chain, not a cycle)
        if seen is None:
            return None
        for line in str(seen).splitlines():
            if _REFUSES in line:
                return line.strip()
        seen = seen.__cause__ or seen.__context__
    return None


def refuses_interpreters(error: BaseException) -> bool:
    """Whether ``error`` says a module refused to load in a sub-interpreter."""
    return _refusal(error) is not None


def prepare(client: Any, workers: Any) -> tuple[Any, Any]:
    """At the call: sub-interpreters exist in this Python, or a clear error says so."""
    check_available()
    return client, workers


# A sub-interpreter starts in this long, computing (creating it, importing what its calls
# need), each in its own thread, so that as many start at a time as there are cores: a
# run of one item a worker took 54, 58, 127 and 260 ms longer on 1, 2, 4 and 8 new workers
# than on kept ones, on 2 cores of 3.14 (`benchmarks/overhead.py`; worker processes: 5, 9,
# 18 and 30 ms).
INTERPRETER_START: Final = 60e-3


@dataclass(frozen=True, slots=True)
class Ready:
    """Sub-interpreters can run here; ``warm``: workers of the idle pool kept from an earlier
    run (0: none), which a run of that size takes, ``started`` of them already running (a
    pool starts its workers as chunks come: a run of 8 workers and 3 items started 3)."""

    warm: int = 0
    started: int = 0


def observe() -> Ready | None:
    """What the cost model reads of sub-interpreters here (None: there are none)."""
    return Ready(warm.workers, warm.started) if available() else None


def predict(costs: Costs) -> Option | None:
    """As worker processes (everything crosses pickled, one GIL each), but each worker starts
    in a thread, with no fork server; None where this Python has no sub-interpreters."""
    ready = costs.m.facts.get(MODEL.name)
    if not ready:
        return None
    kept, started = (ready.warm, ready.started) if isinstance(ready, Ready) else (0, 0)
    return predict_pickled(
        costs,
        MODEL.name,
        start_each=INTERPRETER_START,
        server=0.0,
        started=lambda k: started if k == kept else 0,  # (the idle pool goes whole to a run)
        at_once=costs.m.cores,
    )


MODEL = Model(
    "interpreters",
    Traits(
        every_core,
        batched=True,
        silent_starts=True,
        initializer=False,
        rank=(4, 4),
        executor=False,
        instead="use concurrent.futures.InterpreterPoolExecutor (Python 3.14)",
    ),
    InterpretersBackend,
    predict=predict,
    observe=observe,
    prepare=prepare,
    unavailable=unavailable,
)
