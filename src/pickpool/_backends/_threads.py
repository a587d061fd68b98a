"""``model="threads"``: a pool of threads fed from one queue.

Threads suit blocking I/O and C code that releases the GIL: no pickling, ~100 µs per hand-off.
A thread cannot be killed, so an item that overruns ``timeout`` is *abandoned*: its outcome is
reported as :class:`~pickpool.TaskTimeout`, a fresh thread takes its place, and the stuck
thread (a daemon) exits on its own when the call finally returns, its result thrown away.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
from typing import Final

from .. import _chunks, _native
from .._costs import THREAD_START, Costs, Option, better, thread_counts
from .._errors import TaskTimeout
from .._limits import Climber, Limiter
from .._pace import Pacer
from .._task import (
    BLOCK,
    ERROR,
    FATAL,
    Caller,
    Outcome,
    Task,
    failed,
    format_traceback,
    initializer_name,
    outcome_count,
    run_initializer,
    task_indices,
)
from . import Model, Setup, Traits, waiting

# Seconds a run that stops early waits for its running items before it abandons them.
CANCEL_GRACE = 1.0


class _Slot:
    """What one worker thread is running, so that an overrun can be detected and abandoned."""

    __slots__ = ("abandoned", "initializing", "lock", "name", "released", "started", "task")

    def __init__(self, name: str | None = None) -> None:
        self.name = name  # what its thread is called while it serves the run (None: as it is)
        self.lock = threading.Lock()
        self.task: Task | None = None
        self.started = 0.0
        self.abandoned = False
        self.initializing = False  # the thread runs the run's initializer, before its task
        self.released = threading.Event()  # the thread is done with this run


# A thread no run has used for this long exits.
IDLE_LIFETIME = 60.0
THREAD_NAME = "pickpool-thread"
WARM_THREADS = 128


class _Parked:
    """One idle worker thread, waiting for its next run."""

    __slots__ = ("thread", "wake")

    def __init__(self) -> None:
        self.wake: queue.SimpleQueue[tuple[ThreadsBackend, _Slot] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._main, name=THREAD_NAME, daemon=True)

    def _main(self) -> None:
        while True:
            try:
                job = self.wake.get(timeout=IDLE_LIFETIME)
            except queue.Empty:
                if warm.leave(self):
                    return
                job = self.wake.get()  # taken just now: its job is on the way
            if job is None:
                return
            backend, slot = job
            if not backend._work(slot) or not warm.park(self):
                return


class _WarmThreads:
    """Worker threads kept between runs: a run takes idle ones before it starts new ones.

    A thread is kept when its run ended normally, at most :data:`WARM_THREADS` of them, each
    for :data:`IDLE_LIFETIME` seconds unused. They are daemon threads: they never keep the
    interpreter alive.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Parked] = []

    def take(self) -> _Parked | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def park(self, parked: _Parked) -> bool:
        with self._lock:
            if len(self._idle) >= WARM_THREADS:
                return False
            self._idle.append(parked)
            return True

    def leave(self, parked: _Parked) -> bool:
        """An idle thread timed out: True if it may exit (no run took it meanwhile)."""
        with self._lock:
            if parked in self._idle:
                self._idle.remove(parked)
                return True
            return False

    def clear(self) -> None:
        """Stop every idle thread and wait for it (in tests)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for parked in idle:
            parked.wake.put(None)
        for parked in idle:
            parked.thread.join()

    def __len__(self) -> int:
        return len(self._idle)

    def forget(self) -> None:
        """In a forked child: the parent's threads do not exist there."""
        self._lock = threading.Lock()
        self._idle = []


warm = _WarmThreads()
os.register_at_fork(after_in_child=warm.forget)


# Put in the outbox by wake(): makes a waiting collect() return, and is no task's outcome.
_WAKE: list[Outcome] = []


# (Long on purpose: threads: the gate, the limit, timeouts, abandon.)
class ThreadsBackend:
    def __init__(self, setup: Setup) -> None:
        self._setup = setup
        # At most `limit` threads take work at once; without climbing, every thread may.
        self._gate = threading.Condition()
        self._running = 0
        self.peak = 0  # the most calls that ran at once
        self.climber: Climber | None = None
        self.limiter: Limiter | None = None
        self._samples: collections.deque[tuple[float, float, int, int]] = collections.deque()
        climb = setup.climb
        if climb is not None and climb.start < setup.workers:
            if climb.latency is not None:
                self.limiter = Limiter(climb.start, setup.workers, climb.latency)
            else:
                self.climber = Climber(climb.start, setup.workers)
        self._limit = setup.workers
        # Calls under the limiter start spaced out, one every no-load latency / limit: as many
        # as the limit sustains, never in a burst (TCP's pacing), which a far side that takes
        # new connections one by one (a listen backlog) would drop.
        self._pacer: Pacer | None = None
        if self.climber is not None:
            self._limit = self.climber.limit
        elif self.limiter is not None:
            self._limit = self.limiter.limit
            self._pacer = Pacer(self.limiter.pace)
        self._inbox: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[list[Outcome]] = queue.SimpleQueue()
        self._threads: dict[threading.Thread, _Slot] = {}
        self._abandoned: list[threading.Thread] = []
        # Under max_concurrency a call abandoned past its timeout keeps its place until it
        # returns (the far side still serves it): how many do, and since when they fill every
        # place (the items queued behind them then fail after a timeout's wait: no hang).
        self._keeps_places = setup.max_concurrency is not None
        self._stuck = 0
        self._starved_since: float | None = None
        self._in_flight = 0
        self._closed = False
        # The calls running at once share the cores with their native pools (BLAS, OpenMP):
        # capped for the run, in this whole process, then put back.
        self._inner = _native.Held(_native.limit_for(setup.inner_threads, setup.workers))

    # The driver's thread --------------------------------------------------------------------

    def submit(self, task: Task) -> None:
        self._in_flight += 1
        # Threads start as work arrives, so three items never start sixteen threads.
        if len(self._threads) < min(self._limit, self._in_flight):
            self._start_thread()
        self._inbox.put(task)

    # (Complex on purpose: outcomes, deadlines and the limit, read in one pass.)
    def collect(self, timeout: float | None) -> list[Outcome]:  # noqa: C901
        if self._in_flight == 0:
            return []
        limit = self._setup.timeout
        wait = timeout if limit is None else _min(timeout, self._next_deadline(limit))
        if self.limiter is not None:
            # Stuck calls complete nothing: look at them in time all the same (and, while the
            # calls in flight are not yet running or started before the last cut, again
            # within the time a call takes to count as stuck).
            look = self.limiter.next_look(self._starts())
            wait = _min(wait, self.limiter.stuck_after if look is None else look)
        outcomes: list[Outcome] = []
        try:
            batch: list[Outcome] | None = self._outbox.get(timeout=wait)
        except queue.Empty:
            batch = None
        while batch is not None:
            if batch is not _WAKE:
                self._in_flight -= 1
                outcomes += batch
            try:
                batch = self._outbox.get_nowait()
            except queue.Empty:
                batch = None
        if limit is not None:
            outcomes += self._abandon_overdue(limit)
            outcomes += self._starved(limit)
        moved, limit = False, self._limit
        if self.climber is not None and outcomes:
            moved, limit = self.climber.completed(outcome_count(outcomes)), self.climber.limit
        elif self.limiter is not None:
            moved, limit = self._limit_by_latency(), self.limiter.limit
        if moved:
            with self._gate:
                self._limit = limit
                if self._pacer is not None and self.limiter is not None:
                    self._pacer.interval = self.limiter.pace
                self._gate.notify_all()
            while len(self._threads) < min(self._limit, self._in_flight):
                self._start_thread()
        return outcomes

    def wake(self) -> None:
        self._outbox.put(_WAKE)

    def _limit_by_latency(self) -> bool:
        assert self.limiter is not None
        samples = []
        while self._samples:
            samples.append(self._samples.popleft())
        starts = self._starts()
        self.limiter.saw(len(starts))  # running a call (not waiting for one)
        return self.limiter.completed(samples, starts)

    def _starts(self) -> list[float]:
        """When each call running now started, oldest first."""
        return sorted(slot.started for slot in self._threads.values() if slot.task is not None)

    def close(self, *, cancel: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if cancel:
            while True:
                try:
                    self._inbox.get_nowait()
                except queue.Empty:
                    break
        with self._gate:  # every thread must get to its stop message
            self._limit = len(self._threads) + len(self._abandoned) + 1
            self._gate.notify_all()
        for _ in self._threads:
            self._inbox.put(None)
        # Stopping early (an error, Ctrl-C, break): running items get a grace period to return;
        # a thread cannot be killed, so one still running after it is abandoned like a
        # timed-out one, a daemon that exits when its call returns, its result dropped.
        deadline = time.monotonic() + CANCEL_GRACE if cancel else None
        for thread, slot in self._threads.items():
            released = slot.released.wait(
                None if deadline is None else max(0.0, deadline - time.monotonic())
            )
            if not released:
                with slot.lock:
                    slot.abandoned = True
            elif self._setup.fresh:
                thread.join()  # released and not kept: it is returning now
        self._inner.close()

    def __repr__(self) -> str:
        return (
            f"<ThreadsBackend {len(self._threads)} threads, {self._in_flight} tasks in flight, "
            f"{len(self._abandoned)} abandoned>"
        )

    # Timeouts -------------------------------------------------------------------------------

    def _next_deadline(self, limit: float) -> float:
        starts = [slot.started for slot in self._threads.values() if slot.task is not None]
        if self._starved_since is not None:
            starts.append(self._starved_since)
        if not starts:
            return limit  # nothing started yet: look again within a timeout's length
        return max(0.0, min(starts) + limit - time.monotonic())

    def _starved(self, limit: float) -> list[Outcome]:
        """Under max_concurrency, every place held by calls abandoned past their timeout: what
        is queued behind them fails once it has waited a timeout's length (not forever)."""
        if not self._keeps_places:
            return []
        with self._gate:
            full = self._stuck >= self._limit
        now = time.monotonic()
        if not full:
            self._starved_since = None
            return []
        if self._starved_since is None:
            self._starved_since = now
            return []
        if now - self._starved_since < limit:
            return []
        outcomes: list[Outcome] = []
        cap = self._setup.max_concurrency
        while True:
            try:
                task = self._inbox.get_nowait()
            except queue.Empty:
                break
            if task is None:  # (a stop message: put back for its thread)
                self._inbox.put(None)
                break
            self._in_flight -= 1
            for index in task_indices(task):
                exc = TaskTimeout(
                    f"item {index} could not start within timeout={limit:g}s: all "
                    f"max_concurrency={cap} places are held by calls that ran past their own "
                    "timeout and still run (a thread cannot be killed)"
                )
                outcomes.append((index, ERROR, exc, format_traceback(exc)))
        self._starved_since = None
        return outcomes

    def _abandon_overdue(self, limit: float) -> list[Outcome]:
        now = time.monotonic()
        outcomes: list[Outcome] = []
        for thread, slot in list(self._threads.items()):
            with slot.lock:
                task = slot.task
                if task is None or now - slot.started < limit:
                    continue
                slot.abandoned = True
                initializing = slot.initializing
            if self._keeps_places:
                with self._gate:
                    self._stuck += 1  # its place stays taken until its call returns
            else:
                self._leave()  # its place goes to the thread that replaces it
            del self._threads[thread]
            self._abandoned.append(thread)
            self._in_flight -= 1
            outcomes += (
                _timed_out(i, limit, self._setup, initializing) for i in task_indices(task)
            )
            if len(self._threads) < self._limit:
                self._start_thread()
        return outcomes

    # Worker threads -------------------------------------------------------------------------

    def _start_thread(self) -> None:
        prefix = self._setup.thread_name_prefix
        slot = _Slot(None if prefix is None else f"{prefix}_{len(self._threads)}")
        parked = None if self._setup.fresh else warm.take()
        fresh = parked is None
        if parked is None:
            parked = _Parked()
        self._threads[parked.thread] = slot
        parked.wake.put((self, slot))
        if fresh:
            parked.thread.start()

    def _work(self, slot: _Slot) -> bool:
        """Run tasks until told to stop; True if this thread may serve another run."""
        caller = Caller(self._setup.fn)
        init_error: BaseException | None = None
        initialized = self._setup.initializer is None
        if slot.name is not None:
            threading.current_thread().name = slot.name
        try:
            while True:
                self._enter()
                task = self._inbox.get()
                if task is None:
                    self._leave()
                    break
                with slot.lock:
                    slot.task, slot.started = task, time.monotonic()
                if not initialized:
                    # With its first task, so that a timeout counts the initializer too: a
                    # worker that never gets ready fails its task, it does not hang the run.
                    slot.initializing = True
                    init_error = run_initializer(self._setup.initializer, self._setup.initargs)
                    slot.initializing, initialized = False, True
                _native.caps.refresh()  # pools that the last task's imports loaded
                began = time.monotonic()
                try:
                    if init_error is not None:
                        outcomes = [failed(i, init_error) for i in task_indices(task)]
                    else:
                        outcomes = caller.run(task)
                except BaseException as exc:  # KeyboardInterrupt raised inside this thread
                    outcomes = [(i, FATAL, exc, format_traceback(exc)) for i in task_indices(task)]
                if self.limiter is not None:
                    items = len(task[2])
                    bad = sum(1 for o in outcomes if o[1] != BLOCK)
                    latency = (time.monotonic() - began) / items
                    self._samples.append((began, latency, bad, items))
                    if hold := self.limiter.hold(latency, bad > 0):
                        time.sleep(hold)  # (its place is held: see Limiter.hold)
                with slot.lock:
                    abandoned = slot.abandoned
                    slot.task = None
                if abandoned:
                    if self._keeps_places:
                        self._unstuck()
                    return False
                self._leave()
                self._outbox.put(outcomes)
                # Nothing of the task or its results stays referenced while this thread waits
                # for the next one (the caller may be waiting for them to be collected).
                del task, outcomes
        finally:
            caller.close()
            _native.caps.leave_thread()
            threading.current_thread().name = THREAD_NAME
            slot.released.set()
        with slot.lock:
            return not slot.abandoned and not self._setup.fresh

    def _enter(self) -> None:
        with self._gate:
            while self._running >= self._limit:
                self._gate.wait()
            self._running += 1
            self.peak = max(self.peak, self._running)
            delay = 0.0 if self._pacer is None else self._pacer.reserve()
        if delay > 0:
            time.sleep(delay)

    def _leave(self) -> None:
        with self._gate:
            self._running -= 1
            self._gate.notify()

    def _unstuck(self) -> None:
        """A call abandoned past its timeout returned at last: its place is free."""
        with self._gate:
            self._stuck -= 1
            self._running -= 1
            self._gate.notify()


def _timed_out(index: int, limit: float, setup: Setup, initializing: bool) -> Outcome:
    """The outcome of item ``index``, abandoned past ``limit`` seconds (in its thread's run of
    the initializer, if ``initializing``)."""
    if initializing:
        name = initializer_name(setup.initializer)
        exc = TaskTimeout(
            f"item {index} did not start within timeout={limit:g}s: initializer={name} was "
            "still running in its new worker thread, which cannot be killed and was left to "
            "finish in the background"
        )
    else:
        exc = TaskTimeout(
            f"item {index} ran longer than timeout={limit:g}s; its thread cannot be killed and "
            "was left to finish in the background. Use model='processes' to have stuck items "
            "killed"
        )
    return (index, ERROR, exc, format_traceback(exc))


# What the pool's own bookkeeping costs per item beyond calling the function, and per chunk
# (a queue's hand-off and wake-up), with the GIL held. Measured with a function that adds one
# (`benchmarks/overhead.py`), 2 threads: 0.44 µs an item in chunks of 64, 0.10 in 8,192.
THREADS_ITEM: Final = 0.04e-6
THREADS_CHUNK: Final = 22e-6


def predict(costs: Costs) -> Option:
    """Threads: calls overlap their waits, but share the GIL, the cores and what the probe saw
    them queue on; a chunk of calls is cheap to hand over."""
    cores = costs.m.cores
    extra = costs.coroutine_call()
    best: Option | None = None
    for k in costs.counts(thread_counts(cores)):
        view = costs.view(k)
        ev = view.ev
        ch = costs.chunk(k, _chunks.CHEAP_HANDOFF_SECONDS)
        per = max(
            (costs.stretch(view) + extra) / k,
            costs.computing(view, k),
            costs.one_core(view.g) + extra + THREADS_ITEM + THREADS_CHUNK / ch,
            view.floor,
            costs.as_measured(k),
            costs.past_the_knee(k),
            costs.unmeasured(costs.stretch(view)) + THREADS_ITEM + THREADS_CHUNK / ch,
        )
        seconds = k * THREAD_START + costs.n * per + (ch - 1) * ev.wall
        best = better(best, Option(MODEL.name, k, ch, seconds, per, view.inner))
    assert best is not None
    return best


def _min(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


MODEL = Model(
    "threads",
    Traits(
        waiting,
        climbs="calls",
        plain_on_threads=True,
        shares_memory=True,
        names_threads=True,
        rank=(1, 2),
    ),
    ThreadsBackend,
    predict=predict,
)
