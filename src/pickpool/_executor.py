"""``pickpool.Executor``: the ``concurrent.futures`` interface over pickpool's models.

Data flow::

    submit(fn, *args) ──► Future, call ──► _Lane (a Source) ──(its thread: _driver.drive)──►
        backend.submit(task) ... backend.collect() ──► Done ──► Future.set_result/exception

Each model the executor uses gets one :class:`_Lane`: a source of submitted calls, read by one
thread that runs the ordinary loop (``drive``, the same as ``pickpool.map``'s) over that
model's backend, with a window of as many calls as workers. A call still in the lane is
pending (``cancel()`` works, and ``shutdown(cancel_futures=True)`` cancels it); one handed
over is running. Submitting from another thread while the loop waits for outcomes wakes it
(``Wakeable.wake``).

Under ``model="auto"`` the first call of each distinct function runs alone on threads, timed
as the probe of ``pickpool.map`` times a call (wall and CPU clocks, and how much of the time
the GIL was held); the same cost model (``_advise.decide``) then picks the model for that
function's other calls, among those an executor can run them on side by side.
``Executor.routes`` and the ``pickpool`` logger show each decision.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import inspect
import itertools
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, Final, NamedTuple, TypeVar

from . import _backends
from ._advise import Advice, decide
from ._backends import Backend, Setup, Wakeable
from ._cursor import Source
from ._driver import Cancelled, drive
from ._errors import PickpoolError
from ._log import logger
from ._native import InnerThreads
from ._options import Options, Require, check, default_workers, positive_int
from ._plan import Plan
from ._probe import WAITING_SHARE
from ._readings import Readings
from ._schedule import Done
from ._task import OK, Outcome, Task, chain_remote
from ._timing import Knocker, Record, SchedStat, Timed, typical

T = TypeVar("T")

# Below this much watched time the knocker's reading of a probed call is noise.
_KNOCKER_MIN: Final = 0.01


class _Call(NamedTuple):
    """One submitted call, as it travels to a worker."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __repr__(self) -> str:
        if isinstance(self.fn, _Probe):
            return repr(self.args[0])  # (the call it times)
        shown = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        text = f"{_name(self.fn)}({', '.join(shown)})"
        return text if len(text) <= 80 else text[:77] + "..."


def _run_call(call: _Call) -> Any:
    """What a worker runs for a submitted call (a module-level function: it pickles by name)."""
    return _resolved(call.fn(*call.args, **call.kwargs))


def _resolved(result: Any) -> Any:
    """An ``async def`` function's coroutine is run to its end: nothing else would await it."""
    if inspect.isawaitable(result):
        import asyncio  # here: `import pickpool` stays light

        return asyncio.run(_awaited(result))
    return result


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _run_chunk(fn: Callable[..., T], chunk: list[tuple[Any, ...]]) -> list[T]:
    """``Executor.map`` with ``chunksize`` > 1: one call runs a chunk of argument tuples."""
    return [_resolved(fn(*args)) for args in chunk]


def _unwrapped(fn: object) -> object:
    inner = getattr(fn, "func", fn)  # functools.partial
    return getattr(inner, "__func__", inner)  # bound method


def _name(fn: object) -> str:
    inner = _unwrapped(fn)
    module = getattr(inner, "__module__", None) or ""
    name = getattr(inner, "__qualname__", None) or type(inner).__qualname__
    return f"{module}.{name}" if module and module != "builtins" else name


def _key(fn: object) -> tuple[str, int]:
    """The same key for every call of one function, holding no reference to it."""
    code = getattr(_unwrapped(fn), "__code__", None)
    return (_name(fn), id(code) if code is not None else 0)


class _Probe:
    """A function's first calls, each run alone on a thread and timed as ``pickpool.map``'s
    probe times calls alone: wall and CPU clocks (:class:`~pickpool._timing.Timed`), and the
    share of the time the GIL was held (a :class:`~pickpool._timing.Knocker` that lives as long
    as each call). Calls are timed until they tell enough (:meth:`enough`)."""

    __slots__ = ("_began", "_held", "_lock", "_running", "_watched", "fn", "records", "sample")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn  # the first call's (partials of one function share a probe)
        self.records: list[Record] = []  # of the calls that returned
        self._held = 0.0  # seconds the GIL was seen held, over all the calls
        self._watched = 0.0  # seconds watched
        self._began: float | None = None
        self.sample: tuple[tuple[Any, ...], Any] | None = None  # a call's arguments and result
        # The call running now: its thread's clocks, and what the last look at it saw.
        self._running: tuple[_Busy, list[float]] | None = None
        self._lock = threading.Lock()  # (its clocks are closed as another thread reads them)

    def __call__(self, call: _Call) -> Any:
        """Run ``call``, timed."""
        if self._began is None:
            self._began = time.perf_counter()
        knocker = Knocker(calls=True)
        records: list[Record] = []
        busy = _Busy()
        with self._lock:
            # (when last looked at: wall, busy seconds, looks in a row that saw it wait)
            self._running = (busy, [time.monotonic(), busy.seconds() or 0.0, 0])
        knocker.start()
        try:
            result = Timed(_run_call, records, knocker)(call)
        finally:
            with self._lock:
                self._running = None
                busy.close()
            held, watched = knocker.stop()
        # (A call that raised tells nothing of the work: only those that returned count.)
        self.records += records
        self._held += held * watched
        self._watched += watched
        if self.sample is None:
            self.sample = (call.args, result)
        return result

    def waits(self) -> bool:
        """Whether the call running now has mostly waited (not computed) in each of the last
        two looks at it, :data:`STALL` seconds apart at least: it may be waiting for a call
        held behind it (a barrier, a queue, a result), which does not end. On a busy machine
        a call that computes waits for a core too: that counts as computing; and it may wait
        a while for the GIL, held by a thread that waits for a core: one look does not tell
        that from a stall, and a stall lasts."""
        with self._lock:
            running = self._running
            if running is None:
                return False
            busy, last = running
            wall = time.monotonic()
            if wall - last[0] < STALL:
                return False
            seconds = busy.seconds()
            if seconds is None:  # (no way to read another thread's clocks: assume it waits)
                return wall - last[0] >= 20 * STALL
            waited = seconds - last[1] < 0.5 * (wall - last[0])
            last[:] = [wall, seconds, last[2] + 1 if waited else 0]
            return last[2] >= 2

    def enough(self) -> bool:
        """Whether the calls so far tell enough to decide on, by the rules of the alone phase
        of ``map``'s probe: a call that clearly waits tells it at once; calls that mostly wait
        after two; calls that compute once the GIL has been watched long enough to read, and a
        second call has shown what the first one's warm-up (imports, caches) hid, unless the
        first took long. Never more than :data:`PROBE_CALLS` calls or :data:`PROBE_SECONDS`."""
        records = self.records
        if not records or self._began is None:
            return False
        if len(records) >= PROBE_CALLS or time.perf_counter() - self._began >= PROBE_SECONDS:
            return True
        first_wall, first_cpu = records[0][1:3]
        if first_wall > 1e-3 and first_cpu < 0.1 * first_wall:
            return True
        wall, cpu = typical(records)
        if len(records) >= 2 and wall > 0 and cpu / wall < WAITING_SHARE:
            return True
        return self._watched >= _KNOCKER_MIN and (
            len(records) >= 2 or first_wall >= PROBE_SECONDS / 2
        )

    def readings(self, timeout: float | None) -> Readings:
        """What the calls showed, as the readings ``decide`` takes its evidence from."""
        readings = Readings(self.fn, False, None, timeout)
        # The calls' own thread's CPU time only: an executor's other calls run beside them,
        # and the process's CPU time would count theirs as these calls' native threads.
        readings.alone = [(start, wall, cpu, cpu) for start, wall, cpu, _ in self.records]
        if self._watched >= _KNOCKER_MIN:
            # Calls running beside them hold the GIL too, and the knocker cannot tell whose it
            # is: these calls held it at most while they ran on a CPU.
            wall, cpu = typical(readings.alone)
            held = self._held / self._watched
            readings.gil = min(held, cpu / wall) if wall > 0 else held
        if self.sample is not None:
            args, result = self.sample
            readings.saw(Done(0, args, OK, result, None, 1))  # the pickling of its data
        return readings


# The longest a function's calls are timed alone before auto decides where the rest run (as the
# alone phase of map's probe: a third of its second), and the most calls it times.
PROBE_SECONDS: Final = 0.35
PROBE_CALLS: Final = 16
# A probed call that mostly waited this long lets the calls held behind it run (on threads).
STALL: Final = 0.05


class _Busy:
    """The calling thread's seconds computing, or runnable and waiting for a core to compute
    on (a busy machine's), readable from other threads: its scheduler counts where the system
    has them, else its CPU clock (that is, computing only)."""

    __slots__ = ("_clock", "_stat")

    def __init__(self) -> None:
        self._stat = SchedStat()
        self._clock: int | None = None
        if not self._stat.known:
            with contextlib.suppress(AttributeError, OSError):
                self._clock = time.pthread_getcpuclockid(threading.get_ident())

    def seconds(self) -> float | None:
        """None where neither is there."""
        if self._stat.known:
            return sum(self._stat.read())
        return None if self._clock is None else time.clock_gettime(self._clock)

    def close(self) -> None:
        self._stat.close()


_Held = tuple[Future[Any], _Call]


class _Route:
    __slots__ = ("advice", "held", "model", "name", "probe", "probing")

    def __init__(self, name: str, probe: _Probe) -> None:
        self.name = name
        self.model: str | None = None  # None until its first calls have been timed
        self.advice: Advice | None = None
        self.probe: _Probe | None = probe  # its first calls' timings, until it is decided
        self.probing = False  # one of them runs now
        self.held: list[_Held] = []  # its calls submitted meanwhile, waiting for the decision


class _Router:
    """Auto's per-function decisions.

    A function's first calls run alone on threads, one at a time, timed (:class:`_Probe`);
    calls of it submitted meanwhile wait (as ``pickpool.map``'s probe runs calls alone first);
    then the cost model picks the model for them and every later call, and ``dispatch`` sends
    them. Holds no reference to the executor (``dispatch`` is a weak method), nor, once a
    function is decided, to it or to anything its calls took or returned.
    """

    def __init__(
        self,
        dispatch: Callable[[str, list[_Held]], None],
        options: Options,
    ) -> None:
        self._lock = threading.Lock()
        self._routes: dict[tuple[str, int], _Route] = {}
        self._dispatch = dispatch
        # The cost model predicts one call per task (an executor's futures are per call).
        self._options = dataclasses.replace(options, chunksize=1)
        self._choices = _executor_choices(options)
        if not self._choices:
            raise ValueError(
                "require='sharedmem' keeps calls in this process's threads, where the globals "
                "an initializer sets are shared by every worker: drop one of them (with "
                "model='threads' given, the initializer runs in each thread)"
            )
        # One model left by the options (a plain initializer: processes): nothing to time, and
        # no call of it runs anywhere else first (its globals would be set in this process).
        self._only = self._choices[0] if len(self._choices) == 1 else None

    def route(self, fn: Callable[..., Any], held: _Held) -> tuple[str, _Call] | None:
        """The model for a new call, and the call to send (its probe, if it is the function's
        first); None if the call is held until its function's probe ends."""
        key = _key(fn)
        with self._lock:
            route = self._routes.get(key)
            if route is None:
                route = self._routes[key] = _Route(_name(fn), _Probe(fn))
                route.model = self._only
            if route.model is not None:
                return route.model, held[1]
            if not route.probing:
                route.probing = True
                return _backends.THREADS, _probed(route, held[1])
            route.held.append(held)
            return None

    def holding(self) -> bool:
        """Whether calls wait for their function's probe (the threads lane then looks in
        time at whether the probe waits on them: :meth:`release_stalled`)."""
        with self._lock:
            return any(route.held for route in self._routes.values())

    def release_stalled(self) -> None:
        """A decision must never make submitted calls wait on each other: a function whose
        probed call waits, rather than computes, while calls of it are held (two calls that
        meet at a barrier, say) goes to threads now, its held calls with it."""
        with self._lock:
            stalled = [
                route
                for route in self._routes.values()
                if route.held and route.probe is not None and route.probe.waits()
            ]
            released = []
            for route in stalled:
                route.model, route.probe = _backends.THREADS, None
                released.append((route, route.held))
                route.held = []
        for route, held in released:
            logger.info(
                "auto routes %s to %s: its first call waits, maybe for another call of it, "
                "which runs beside it there",
                route.name,
                route.model,
            )
            self._dispatch(_backends.THREADS, held)

    def measured(self, call: _Call) -> None:
        """A probed call ended (or never ran): decide, if the calls so far tell enough; else
        the next held call is timed."""
        probe = call.fn
        assert isinstance(probe, _Probe)
        with self._lock:
            if self._routes[_key(probe.fn)].model is not None:
                self._routes[_key(probe.fn)].probing = False
                return  # decided while it ran (it waited on calls held behind it)
        # (Decided outside the lock: other functions' calls are routed meanwhile. This one's
        # are still held: its route is probing until it is decided.)
        advice = self._decide(probe) if probe.enough() else None
        with self._lock:
            route = self._routes[_key(probe.fn)]
            if advice is not None:
                route.model, route.advice = advice.model, advice
                calls, route.held = route.held, []
                route.probing, route.probe = False, None
            else:
                # (None held: the next call submitted is timed.)
                calls = [(future, _probed(route, held)) for future, held in route.held[:1]]
                del route.held[:1]
                route.probing = bool(calls)
        if advice is not None:
            logger.info("auto routes %s to %s: %s", route.name, advice.model, _why(advice))
        if calls:
            self._dispatch(_backends.THREADS if advice is None else advice.model, calls)

    def _decide(self, probe: _Probe) -> Advice:
        evidence = probe.readings(self._options.timeout).evidence()
        # Among the models that run an executor's calls side by side: its calls may wait on
        # each other (a barrier, a queue), which one at a time would never finish.
        return decide(evidence, items=None, options=self._options, choices=self._choices)

    def abandoned(self, call: _Call) -> None:
        """A probed call never ran (cancelled, or its lane broke): the next held one probes."""
        self.measured(call)

    def forked(self) -> None:
        """In a forked child: its lock may have been held by a parent's thread; calls held or
        probing there never end here (their decision is kept)."""
        self._lock = threading.Lock()
        for route in self._routes.values():
            if route.model is None:
                route.held, route.probing = [], False

    def cancel_held(self) -> None:
        with self._lock:
            held = [h for route in self._routes.values() for h in route.held]
            for route in self._routes.values():
                route.held = []
        for future, _ in held:
            future.cancel()

    def routes(self) -> dict[str, str]:
        with self._lock:
            return {r.name: r.model for r in self._routes.values() if r.model is not None}

    def advice(self) -> dict[str, Advice]:
        with self._lock:
            return {r.name: r.advice for r in self._routes.values() if r.advice is not None}


def _probed(route: _Route, call: _Call) -> _Call:
    """``call``, timed as one of its function's first calls."""
    assert route.probe is not None  # (until it is decided)
    return _Call(route.probe, (call,), {})


def _why(advice: Advice | None) -> str:
    """A decision's reasons, in one line for the log."""
    if advice is None:
        return ""
    return f"{advice.kind}; " + " ".join(advice.reasons)


# A lane's entries: a call's future, and the call.
_Entry = tuple[Future[Any], _Call]


# (Long on purpose: one model's calls, from submit() to the futures, as a Source of the loop.)
class _Lane(Source):
    """One model's backend, fed from submitted calls by a thread running the ordinary loop."""

    def __init__(
        self,
        model: str,
        setup: Setup,
        plan: Plan,
        router: _Router | None,
        on_broken: Callable[[], None],
    ) -> None:
        self.model = model
        self._setup, self._plan = setup, plan
        self._router = router
        self._on_broken = on_broken
        self._cond = threading.Condition()
        # Calls started (their futures running) and not yet taken by the loop, and calls
        # waiting for a free worker (pending: they can still be cancelled).
        self._started: list[_Entry] = []
        self._queue: collections.deque[_Entry] = collections.deque()
        self._running: dict[int, _Entry] = {}  # taken by the loop, by the loop's index
        self._ids = itertools.count()
        self._stopping = False
        self._aborting = False  # stop now: its loop ends, killing what runs where it can
        self.done = False  # stopped, and its thread gone or going
        self._waiting = False  # the loop waits in the backend's collect()
        self._backend: Wakeable | None = None
        self._broken: BaseException | None = None
        self.ended = False
        self.thread = threading.Thread(
            target=self._feed, name=f"pickpool-executor-{model}", daemon=True
        )
        self.thread.start()

    def put(self, future: Future[Any], call: _Call) -> bool:
        """Queue a call; False if this lane takes no more (it was stopped and its loop has
        taken its last call: a new lane serves the model)."""
        with self._cond:
            if self.done or self.ended:
                return False
            if self._broken is not None:
                raise RuntimeError(f"this executor's {self.model} workers could not start") from (
                    self._broken
                )
            if len(self._running) + len(self._started) < self._setup.workers:
                # A worker is free: the call starts now, as in a standard pool, and a
                # shutdown(cancel_futures=True) right after no longer cancels it.
                future.set_running_or_notify_cancel()
                self._started.append((future, call))
            else:
                self._queue.append((future, call))
            self._wake()
        return True

    def stop(self, *, cancel_futures: bool) -> None:
        """Take no more calls; run (or, with ``cancel_futures``, cancel) what is queued."""
        dropped: list[_Entry] = []
        with self._cond:
            self._stopping = True
            if cancel_futures:
                dropped, self._queue = list(self._queue), collections.deque()
            self._wake()
        for future, call in dropped:
            future.cancel()
            self._abandoned(call)

    def abort(self) -> None:
        """Stop now: cancel what is queued, and end the loop, which stops its workers at once
        (worker processes are killed; a thread cannot be, and is left to end on its own). The
        calls that were running get ``CancelledError``."""
        with self._cond:
            self._aborting = True
        self.stop(cancel_futures=True)

    def look(self) -> None:
        """The loop looks at the lane again soon (a call was held behind a probe it runs)."""
        with self._cond:
            self._wake()

    def _wake(self) -> None:
        """(Holding the lock.) The loop looks at the lane again: at once if it waits for
        outcomes, else when it next waits for calls."""
        if self._waiting and self._backend is not None:
            self._backend.wake()
        self._cond.notify()

    def _abandoned(self, call: _Call) -> None:
        """(Not holding the lock: the router may dispatch to this lane.) A call that will
        never run: if it was its function's probe, the next held call probes instead."""
        if self._router is not None and isinstance(call.fn, _Probe):
            self._router.abandoned(call)

    # The loop's side: the lane as its Source ---------------------------------------------------

    def take(self, count: int) -> list[Any]:
        dropped: list[_Call] = []
        with self._cond:
            taken = self._started[:count]
            del self._started[:count]
            while self._queue and len(taken) < count:
                entry = self._queue.popleft()
                if entry[0].set_running_or_notify_cancel():
                    taken.append(entry)
                else:
                    dropped.append(entry[1])  # cancelled while it waited
            for entry in taken:
                self._running[next(self._ids)] = entry
            self.ended = self._stopping and not self._queue and not self._started
        for call in dropped:
            self._abandoned(call)
        return [call for _, call in taken]

    def wait(self, timeout: float | None) -> None:
        with self._cond:
            if not (self._queue or self._started or self._stopping):
                self._cond.wait(timeout)

    def _open(self, setup: Setup) -> Backend:
        # (The plan's model: serial's calls with a timeout run on a thread that can be left.)
        backend = _backends.load(self._plan.model)(setup)
        if not isinstance(backend, Wakeable):  # every model an executor serves is
            backend.close(cancel=True)
            raise TypeError(f"model={self._plan.model!r} cannot serve an Executor")
        self._backend = backend
        return _Watched(backend, self)

    def _feed(self) -> None:
        try:
            for done in drive(self, self._plan, self._setup, self._open):
                self._settle(done)
                del done  # (nothing of a call stays referenced while the loop waits)
        except Cancelled:
            self._end_running(concurrent.futures.CancelledError("aborted: its executor stopped"))
        except BaseException as exc:
            self._break(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            with self._cond:
                self._waiting = False
                self.done = True

    def _settle(self, done: Done) -> None:
        with self._cond:
            future, call = self._running.pop(done.index)
        value = done.value
        if self._router is not None and isinstance(call.fn, _Probe):
            self._router.measured(call)
        if done.status == OK:
            future.set_result(value)
            return
        from ._pickling import NotPicklable  # (imported by then: it made the error)

        if isinstance(value, PickpoolError | NotPicklable) and _ITEM.search(str(value)):
            # The loop's words are for pickpool.map's items: here it is a call, named once.
            text, shown = str(value), repr(call)
            said = "the call" if shown in text else f"the call {shown}"
            value = type(value)(_ITEM.sub(said, text, count=1))
        chain_remote(value, done.traceback)
        future.set_exception(value)

    def _break(self, exc: BaseException) -> None:
        """The backend could not start (an initializer raised under serial, say), or the loop
        failed: every call the lane holds fails with what it raised."""
        with self._cond:
            self._broken = exc
        self._end_running(exc)
        self._on_broken()

    def _end_running(self, exc: BaseException) -> None:
        """Every call the lane holds fails with ``exc``."""
        with self._cond:
            running = list(self._running.values())
            started, self._started = self._started, []
            queued, self._queue = self._queue, collections.deque()
            self._running.clear()
        for future, call in running + started:
            self._fail(future, call, exc)
        for future, call in queued:
            if future.set_running_or_notify_cancel():
                self._fail(future, call, exc)

    def _fail(self, future: Future[Any], call: _Call, exc: BaseException) -> None:
        self._abandoned(call)
        if not future.done():
            future.set_exception(exc)


class _Watched:
    """A lane's backend as its loop uses it: the lane knows when the loop waits for outcomes,
    so that a call submitted meanwhile wakes it."""

    __slots__ = ("_backend", "_lane")

    def __init__(self, backend: Wakeable, lane: _Lane) -> None:
        self._backend, self._lane = backend, lane

    def submit(self, task: Task) -> None:
        self._backend.submit(task)

    def collect(self, timeout: float | None) -> list[Outcome]:
        lane, router = self._lane, self._lane._router
        with lane._cond:
            if lane._aborting:
                raise Cancelled  # (the loop ends here, and its backend closes, cancelled)
            if lane._started or (lane._queue and len(lane._running) < lane._setup.workers):
                timeout = 0.0  # a call came since the loop looked: take it at once
            lane._waiting = True
        holding = router is not None and router.holding()
        if holding:
            timeout = STALL if timeout is None else min(timeout, STALL)
        try:
            outcomes = self._backend.collect(timeout)
        finally:
            with lane._cond:
                lane._waiting = False
            if holding:
                assert router is not None
                router.release_stalled()
        if lane._aborting:
            raise Cancelled
        return outcomes

    def close(self, *, cancel: bool) -> None:
        self._backend.close(cancel=cancel)

    @property
    def inline(self) -> Any:
        return getattr(self._backend, "inline", None)


_ITEM: Final = re.compile(r"\bitem \d+")


# Executors whose lanes the interpreter's exit waits for (as concurrent.futures' own do):
# work submitted and never waited for still runs to its end.
_lanes: weakref.WeakSet[_Lane] = weakref.WeakSet()
_exiting = False
_exit_lock = threading.Lock()
# Every executor, for a fork's child to start afresh (see _forked).
_executors: weakref.WeakSet[Executor] = weakref.WeakSet()


def _forked() -> None:
    """In a forked child: no thread of the parent's lanes exists here, and what they ran is
    the parent's. Each executor starts new lanes, in this process, when next used (the
    standard executors fail there instead)."""
    global _exit_lock, _lanes
    _exit_lock = threading.Lock()
    _lanes = weakref.WeakSet()
    for executor in list(_executors):
        executor._forked()


os.register_at_fork(after_in_child=_forked)


def _at_exit() -> None:
    global _exiting
    with _exit_lock:
        _exiting = True
    joined: set[int] = set()
    while True:
        # A probe that ends may send its function's held calls to a lane started meanwhile.
        with _exit_lock:
            lanes = [lane for lane in _lanes if id(lane) not in joined]
        if not lanes:
            return
        for lane in lanes:
            lane.stop(cancel_futures=False)
        for lane in lanes:
            lane.thread.join()
            joined.add(id(lane))


# Before non-daemon threads are joined, while new threads may still start; the same hook the
# standard executors use.
threading._register_atexit(_at_exit)  # type: ignore[attr-defined]


def _call_if_alive(method: weakref.WeakMethod[Callable[..., None]], *args: Any) -> None:
    bound = method()
    if bound is not None:
        bound(*args)


def _executor_choices(options: Options) -> list[str]:
    """The models an Executor's auto may route to: those that run its calls side by side (its
    calls may wait on each other, a barrier, a queue, which one at a time would never
    finish), among those the options allow (see ``Options.models``)."""
    fits = options.models()
    return [
        m
        for m in _backends.names()
        if _backends.traits(m).executor
        and not _backends.traits(m).inline
        and (fits is None or m in fits)
    ]


def _start_method(mp_context: object) -> str | None:
    """``mp_context`` checked: a multiprocessing context (its start method), or None."""
    if mp_context is None:
        return None
    method = getattr(mp_context, "get_start_method", None)
    if not callable(method):
        raise TypeError(
            "mp_context must be a multiprocessing context, such as "
            f"multiprocessing.get_context('spawn'), not {type(mp_context).__name__}"
        )
    name = method()
    return name if isinstance(name, str) else None


def _broken() -> None:
    if logger.isEnabledFor(logging.WARNING):
        logger.warning("an executor's workers could not start; its calls fail")


def _alive(executor: weakref.ref[Executor]) -> Executor:
    """The executor a ``map`` reads for, or the error ``submit`` after a shutdown gets: calls
    left in its input cannot run once it is gone (they are not dropped unsaid)."""
    alive = executor()
    if alive is None:
        raise RuntimeError(
            "cannot schedule new futures after shutdown: the executor was garbage-collected "
            "while its map() was read and had calls left; keep a reference to it (or use "
            "it as a context manager) until the map is read"
        )
    return alive


def _stop_lanes(lanes: dict[str, _Lane]) -> None:
    for lane in list(lanes.values()):
        lane.stop(cancel_futures=False)


def executor_models() -> tuple[str, ...]:
    """The models an Executor can run calls on: ``"auto"``, and each registered model that
    can (not sub-interpreters or dask, which have executors of their own)."""
    return ("auto", *(m for m in _backends.names() if _backends.traits(m).executor))


def check_executor_model(model: object) -> str:
    """``model=`` of an Executor (and of the joblib backend), checked."""
    models = executor_models()
    if isinstance(model, str) and model in models:
        return model
    instead = ""
    if isinstance(model, str) and model in _backends.names():
        instead = "; " + _backends.traits(model).instead
    raise ValueError(f"model must be one of {', '.join(map(repr, models))}, not {model!r}{instead}")


# (Long on purpose: concurrent.futures.Executor's whole contract, and auto's routes.)
class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` on pickpool's models, with its fault handling.

    A drop-in for ``ThreadPoolExecutor`` and ``ProcessPoolExecutor``: ``submit``, ``map``,
    ``shutdown``, ``with``, and futures that work with ``as_completed``, ``wait`` and
    ``loop.run_in_executor``. What it adds:

    * ``model="auto"`` (the default) times the first call of each function alone on threads
      (its other calls wait for it), then runs them on the model the cost model predicts
      fastest for such calls: processes for Python that computes, threads for calls that
      wait or whose C code releases the GIL (see :attr:`routes`). ``"threads"``,
      ``"processes"``, ``"serial"`` and ``"asyncio"`` fix the model.
    * Under processes a worker that dies fails only its own future, with
      :class:`~pickpool.WorkerCrashed`, and the executor goes on (no ``BrokenProcessPool``);
      with ``timeout=``, a call that runs longer fails with :class:`~pickpool.TaskTimeout`
      and only its worker is killed. Lambdas and functions of ``__main__`` work.
    * ``map`` reads its input lazily, a few calls ahead of the consumer, so it works on an
      endless iterable in bounded memory.
    * Its workers are pickpool's warm ones: it takes the idle worker processes and threads
      that earlier calls and executors left, and gives back those that end idle, so start-up
      and the imports a worker did are paid once per program (as with loky's reusable
      executor). Under an ``initializer`` or ``max_tasks_per_child`` its workers are its own:
      new, and stopped at shutdown.

    Args:
        model: ``"auto"``, ``"threads"``, ``"processes"``, ``"serial"`` or ``"asyncio"``.
        max_workers: workers of each model used (default: as ``pickpool.map`` sizes them).
        initializer: called with ``initargs`` in each new worker before its first call.
        max_tasks_per_child: under processes, a worker runs at most this many calls, then a
            new one replaces it (for C extensions that leak).
        timeout: seconds a call may run; longer, it fails with ``TaskTimeout``.
        inner_threads: native thread pools in calls (see ``pickpool.map``).
        mp_context: under processes, the ``multiprocessing`` context whose start method
            starts the workers (``multiprocessing.get_context("spawn")``), as
            ``ProcessPoolExecutor`` takes it; by default pickpool's (forkserver on Linux).
        thread_name_prefix: under threads, what its worker threads are named while they run
            its calls (``"db_0"``, ``"db_1"``...), as ``ThreadPoolExecutor`` names its own;
            by default ``"pickpool-thread"``.
        require: ``"sharedmem"``: calls must share this process's memory; auto then routes
            them to threads (or asyncio) only, as joblib's ``require="sharedmem"``. A plain
            ``initializer`` keeps auto's routes to processes, where each worker's globals are
            its own.

    Example::

        with pickpool.Executor() as ex:
            pages = [ex.submit(fetch, url) for url in urls]   # waits: routed to threads
            trees = ex.map(parse, (p.result() for p in pages))  # computes: to processes
    """

    def __init__(
        self,
        model: str = "auto",
        max_workers: int | None = None,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        timeout: float | None = None,
        inner_threads: InnerThreads = None,
        require: Require = None,
        mp_context: Any = None,
        thread_name_prefix: str = "",
    ) -> None:
        model = check_executor_model(model)
        start_method = _start_method(mp_context)
        if not isinstance(thread_name_prefix, str):
            raise TypeError(
                f"thread_name_prefix must be a string, not {type(thread_name_prefix).__name__}"
            )
        if max_workers is not None:
            if isinstance(max_workers, bool) or not isinstance(max_workers, int):
                raise TypeError(f"max_workers must be an int, not {type(max_workers).__name__}")
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
        # An executor's calls are its own: none retried, each failure its future's, results
        # as they come. Its workers are warm ones (those an initializer sets up are fresh).
        self._options = dataclasses.replace(
            check(
                model=model,
                workers=max_workers,
                timeout=timeout,
                on_error="collect",
                ordered=False,
                inner_threads=inner_threads,
                initializer=initializer,
                initargs=initargs,
                max_tasks_per_child=max_tasks_per_child,
                require=require,
            ),
            start_method=start_method,
            thread_name_prefix=thread_name_prefix or None,
        )
        self._model = model
        self._max_workers = max_workers
        self._router: _Router | None = None
        if model == "auto":
            dispatch = weakref.WeakMethod(self._dispatch)
            self._router = _Router(lambda *a: _call_if_alive(dispatch, *a), self._options)
        self._lock = threading.Lock()
        self._lanes: dict[str, _Lane] = {}
        self._retired: list[_Lane] = []  # lanes that took their last call, still finishing
        self._shutdown = False
        # Collected unshut, it still runs what was submitted, then its workers stop.
        weakref.finalize(self, _stop_lanes, self._lanes)
        _executors.add(self)

    def _forked(self) -> None:
        """In a forked child (see ``_forked``): the parent's lanes and locks are not ours."""
        self._lock = threading.Lock()
        self._lanes.clear()
        self._retired.clear()
        if self._router is not None:
            self._router.forked()

    @property
    def routes(self) -> dict[str, str]:
        """Under ``model="auto"``: each function routed so far, and the model it runs on.

        ``{"mymodule.parse": "processes", "mymodule.fetch": "threads"}``; the reasons, with
        the times measured, go to the ``pickpool`` logger at INFO.
        """
        return self._router.routes() if self._router is not None else {}

    @property
    def advice(self) -> dict[str, Advice]:
        """Under ``model="auto"``: each function routed so far, and the
        :class:`~pickpool.Advice` it was routed by (what its first call measured, each model's
        predicted seconds, and why).

        ``print(executor.advice["mymodule.parse"])``
        """
        return self._router.advice() if self._router is not None else {}

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; a :class:`concurrent.futures.Future` of its result.

        Example::

            future = executor.submit(pow, 2, 8)
            future.result()  # 256
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        return self._submit(fn, fn, args, kwargs)

    def _submit(
        self, fn: Callable[..., Any], by: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[Any]:
        """Submit ``fn``; under auto, route it as the function ``by`` (what map runs per chunk)."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            future: Future[Any] = Future()
            call = _Call(fn, args, kwargs)
            if self._router is None:
                self._put(self._model, future, call)
                return future
            routed = self._router.route(by, (future, call))
            if routed is not None:
                model, call = routed
                self._put(model, future, call)
            elif (probing := self._lanes.get(_backends.THREADS)) is not None:
                probing.look()  # (its probe may wait on the call just held: see release_stalled)
            return future

    def _put(self, model: str, future: Future[Any], call: _Call) -> None:
        """Queue a call on ``model``'s lane (holding ``_lock``)."""
        while not self._lane(model).put(future, call):
            # Its lane was stopped (a shutdown, the interpreter's exit) and took its last call
            # before auto routed these calls to it: a new one runs them (the old one is still
            # waited for).
            self._retired.append(self._lanes.pop(model))

    def _dispatch(self, model: str, held: list[_Held]) -> None:
        """Send calls that waited for their function's probe (from a lane's thread)."""
        with self._lock:
            for future, call in held:
                self._put(model, future, call)
            if self._shutdown:
                self._lanes[model].stop(cancel_futures=False)

    def _lane(self, model: str) -> _Lane:
        lane = self._lanes.get(model)
        if lane is None:
            options = self._options
            workers = self._max_workers or default_workers(model, is_async=False)
            # Exactly as many calls in flight as workers: the rest stay pending.
            plan = options.plan(model, is_async=False, workers=workers, chunksize=1, adaptive=False)
            plan = dataclasses.replace(plan, window=plan.workers, fatal_ends_run=False)
            setup = options.setup(_run_call, plan, is_async=False)
            # (Nothing of the executor itself in the lane: its threads must not keep it alive.)
            lane = self._lanes[model] = _Lane(model, setup, plan, self._router, _broken)
            with _exit_lock:
                _lanes.add(lane)
        return lane

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """Like :func:`map`, run on the executor: results in order, as a lazy iterator.

        The input is read lazily, at most ``buffersize`` calls ahead of the consumer (default:
        4 per worker), so an endless iterable works in bounded memory. ``timeout`` counts from
        this call, as in ``concurrent.futures``; ``chunksize`` > 1 sends calls in chunks.

        Example::

            list(executor.map(pow, [2, 3], [5, 2]))  # [32, 9]
        """
        size = positive_int("chunksize", chunksize) or 1
        # (The standard library's own words, which code written for 3.14's map may match.)
        if buffersize is not None and (
            isinstance(buffersize, bool) or not isinstance(buffersize, int)
        ):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        ahead = buffersize
        if ahead is None:
            ahead = 4 * (self._max_workers or default_workers(_backends.THREADS, is_async=False))
        end = None if timeout is None else timeout + time.monotonic()
        calls: Iterator[tuple[Any, ...]] = zip(*iterables, strict=False)
        # The iterator holds the executor weakly, as the standard library's does: an executor
        # dropped while its map is still read shuts down (what was submitted still runs and
        # can be read), rather than living as long as the iterator.
        executor = weakref.ref(self)
        if size > 1:
            chunks = iter(lambda: list(itertools.islice(calls, size)), [])

            def submit_next() -> Future[Any] | None:
                chunk = next(chunks, None)
                return (
                    None
                    if chunk is None
                    else _alive(executor)._submit(_run_chunk, fn, (fn, chunk), {})
                )
        else:

            def submit_next() -> Future[Any] | None:
                args = next(calls, None)
                return None if args is None else _alive(executor)._submit(fn, fn, args, {})

        futures: collections.deque[Future[Any]] = collections.deque()
        while len(futures) < ahead:
            future = submit_next()
            if future is None:
                break
            futures.append(future)
        return _results(futures, submit_next, end, chunked=size > 1)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more calls, and stop the workers once what was submitted is done.

        ``cancel_futures=True`` cancels the calls that have not started. ``wait=True`` returns
        once every call has ended and the executor's threads have stopped (idle worker
        processes and threads go back to the warm pools, for the next executor or call).
        """
        with self._lock:
            self._shutdown = True
            lanes = list(self._lanes.values())
        if cancel_futures and self._router is not None:
            self._router.cancel_held()
        for lane in lanes:
            lane.stop(cancel_futures=cancel_futures)
        joined: set[int] = set()
        while wait:
            # A probe that ends may send its function's held calls to a lane started since.
            with self._lock:
                every = [*self._retired, *self._lanes.values()]
                lanes = [lane for lane in every if id(lane) not in joined]
            if not lanes:
                break
            for lane in lanes:
                lane.stop(cancel_futures=cancel_futures)
                lane.thread.join()
                joined.add(id(lane))

    def _abort(self) -> None:
        """Shut down at once: cancel the calls not started, and stop those running (worker
        processes are killed; their futures get ``CancelledError``). For the joblib backend,
        whose call raises as soon as a task fails, as loky's does; ``shutdown()`` then waits
        for what could not be killed (threads)."""
        with self._lock:
            self._shutdown = True
            lanes = [*self._retired, *self._lanes.values()]
        if self._router is not None:
            self._router.cancel_held()
        for lane in lanes:
            lane.abort()

    def __repr__(self) -> str:
        lanes = ", ".join(self._lanes) or "none started"
        state = "shut down" if self._shutdown else "running"
        return f"<pickpool.Executor model={self._model!r} ({state}; workers: {lanes})>"


def _results(
    futures: collections.deque[Future[Any]],
    submit_next: Callable[[], Future[Any] | None],
    end: float | None,
    *,
    chunked: bool,
) -> Iterator[Any]:
    """Yield ``futures``' results in order, topping the buffer up as each is taken."""
    try:
        while futures:
            if (future := submit_next()) is not None:
                futures.append(future)
            del future
            # The future is passed, not bound to a name of this generator, and the result
            # yielded as it comes: once the consumer lets go of it, nothing here keeps it.
            if chunked:
                yield from _result_or_cancel(futures.popleft(), end)
            else:
                yield _result_or_cancel(futures.popleft(), end)
    finally:
        for future in futures:
            future.cancel()


def _result_or_cancel(future: Future[T], end: float | None) -> T:
    try:
        try:
            return future.result(None if end is None else end - time.monotonic())
        finally:
            future.cancel()
    finally:
        del future
