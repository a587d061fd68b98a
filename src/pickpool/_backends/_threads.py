"""``model="threads"``: a pool of threads fed from one queue.

Threads suit blocking I/O and C code that releases the GIL: no pickling, ~100 µs per hand-off.
A thread cannot be killed, so an item that overruns ``timeout`` is *abandoned*: its outcome is
reported as :class:`~pickpool.TaskTimeout`, a fresh thread takes its place, and the stuck
thread (a daemon) exits on its own when the call finally returns, its result thrown away.
"""

from __future__ import annotations

import collections
import math
import os
import queue
import statistics
import threading
import time

from .. import _inner
from .._errors import TaskTimeout
from .._pace import Pacer
from .._task import (
    BLOCK,
    FATAL,
    Caller,
    Outcome,
    Task,
    failed,
    format_traceback,
    outcome_count,
    run_initializer,
    task_indices,
)
from . import Setup

# Seconds a run that stops early waits for its running items before it abandons them.
CANCEL_GRACE = 1.0


class _Slot:
    """What one worker thread is running, so that an overrun can be detected and abandoned."""

    __slots__ = ("abandoned", "lock", "released", "started", "task")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.task: Task | None = None
        self.started = 0.0
        self.abandoned = False
        self.released = threading.Event()  # the thread is done with this run


# A thread no run has used for this long exits.
IDLE_LIFETIME = 60.0
WARM_THREADS = 128


class _Parked:
    """One idle worker thread, waiting for its next run."""

    __slots__ = ("thread", "wake")

    def __init__(self) -> None:
        self.wake: queue.SimpleQueue[tuple[ThreadsBackend, _Slot] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._main, name="pickpool-thread", daemon=True)

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


class Climber:
    """How many threads may run at once, moved by the throughput it measures (hill climbing).

    As .NET's thread pool does: every :data:`INTERVAL` seconds (and at least a few
    completions), compare items per second with the last interval's; keep moving the limit the
    same way while throughput rises by more than the noise, turn back when it falls, and hold
    when it is flat. Steps are an eighth of the limit, at least one; the limit stays between
    half the start and ``cap``. Blocking I/O's best thread count drifts with the far side's
    latency: the start is Little's law on the probe's numbers, the climb follows the run.
    """

    INTERVAL = 0.1
    NOISE = 0.05

    def __init__(self, start: int, cap: int) -> None:
        self.limit = start
        self._low, self._high = max(1, start // 2), max(start, cap)
        self._direction = 1
        self._last: float | None = None
        self._began = time.monotonic()
        self._done = 0
        self.history: list[tuple[int, float]] = []  # (limit, items per second) per interval

    def completed(self, count: int) -> bool:
        """``count`` more items finished; True if the limit moved."""
        self._done += count
        now = time.monotonic()
        elapsed = now - self._began
        if elapsed < self.INTERVAL or self._done < 2 * self.limit:
            return False
        rate = self._done / elapsed
        self.history.append((self.limit, rate))
        self._began, self._done = now, 0
        last, self._last = self._last, rate
        if last is not None:
            if rate < last * (1 - self.NOISE):
                self._direction = -self._direction  # worse: turn back
            elif rate <= last * (1 + self.NOISE):
                return False  # flat: stay
        step = max(1, self.limit // 8)
        moved = min(self._high, max(self._low, self.limit + self._direction * step))
        if moved == self.limit:
            self._direction = -self._direction
            return False
        self.limit = moved
        return True


class Limiter:
    """How many calls may run at once, moved by their latency and failures, for calls that wait
    on something with a finite capacity (a server, a database, an API with a quota).

    Each call's latency is compared with the no-load latency the probe measured (lowered if a
    window sees less). In windows of a few completions (tens of milliseconds for 20 ms calls):

    * failures rising above :data:`FAILING` of the window: at once, down to as many calls as
      went through (at most halved), and never come back within reach of where it broke (a
      ceiling just below);
    * a call running :data:`STUCK` times the no-load latency (a connection dropped past a
      listen backlog, which the client's kernel retries only after a second, RFC 6298's
      initial timeout): back to half the limit before the last rise, and stay there.
      Each such call costs a second, more than many whole batches: the limit never comes back
      to where they were dropped;
    * latency above :data:`TOLERANCE` times the no-load latency (queueing at the far side): cut
      the limit in proportion, as the gradient of Envoy's adaptive concurrency filter and
      Netflix's concurrency-limits do;
    * otherwise, when the limit was reached: double it (TCP's slow start) until the first
      cut, or until latency begins to rise (past :data:`SLOW_START_EXIT` times the no-load
      latency: the knee is near, as TCP's HyStart reads it), then add about its square root
      per window while latency holds.

    Calls start paced (:attr:`pace`), never in a burst: a far side that takes new connections
    one at a time, through a short listen backlog, drops those of a burst.

    Throughput alone (:class:`Climber`) is too slow and too noisy to see a knee in a run of a
    few seconds; latency rises at the knee within a window.
    """

    TOLERANCE = 2.0
    SLOW_START = 2
    SLOW_START_EXIT = 1.25
    STUCK = 8.0
    FAILING = 0.1
    RECOVER = 8
    MOST_RECOVER = 64

    def __init__(self, start: int, cap: int, baseline: float) -> None:
        self.limit = max(1, min(start, cap))
        self._cap = cap
        self._ceiling = cap
        self._floor = max(baseline, 1e-6)
        self._growing = True
        self._latencies: list[float] = []
        self._failures = 0
        self._calls = 0
        self._busiest = 0
        self._acted = 0.0  # calls started before this tell of an old limit: not judged
        self._at_ceiling = 0  # clean windows spent at the ceiling
        self._recover = self.RECOVER  # of them, before it rises by one
        self._probing = False  # the ceiling just rose: no clean window above the old one yet
        self._below = 0  # the limit before the last rise: its calls all ran clean
        self.history: list[tuple[int, float, float]] = []  # (limit, mean latency, failed share)

    @property
    def pace(self) -> float:
        """Seconds between call starts: twice the rate that keeps ``limit`` calls running
        while the limit grows (it fills within half a latency), 1.25x once it holds, as TCP
        paces its packets."""
        return self._floor / (self.limit * (2.0 if self._growing else 1.25))

    @property
    def stuck_after(self) -> float:
        """Seconds a call may run before it counts as stuck (a dropped connection)."""
        return max(self.STUCK * self._floor, 0.25)

    def next_look(self, oldest: float | None) -> float | None:
        """Seconds until the call started at ``oldest`` would count as stuck, or None if it
        never will (it started before the last cut): a caller waiting for completions looks
        again by then, since stuck calls complete nothing."""
        if oldest is None or oldest <= self._acted:
            return None
        return max(0.0, oldest + self.stuck_after - time.monotonic())

    def saw(self, running: int) -> None:
        """``running`` calls are running now (the window remembers the most)."""
        self._busiest = max(self._busiest, running)

    def completed(self, samples: list[tuple[float, float, int, int]], oldest: float | None) -> bool:
        """Calls finished: (start, seconds per item, failed items, items) each; ``oldest``:
        when the longest-running call started (``time.monotonic()``). True if it moved."""
        for start, latency, bad, items in samples:
            if start < self._acted:
                continue  # started before the last cut: it tells of the old limit, not this one
            self._calls += items
            self._failures += bad
            if not bad:
                # (A failure's latency is no measure of the far side's queue: a 429 is quick.)
                self._latencies += [latency] * items
        # A call stuck that long is one signal, acted on once: the cut that follows lets the
        # calls already running finish, and they cannot be hurried.
        stuck = self.next_look(oldest) == 0.0
        if not stuck and self._calls < max(4, self.limit // 2):
            return False
        window, self._latencies = self._latencies, []
        failures, self._failures = self._failures, 0
        calls, self._calls = self._calls, 0
        busiest, self._busiest = self._busiest, 0
        before = self.limit
        mean = statistics.fmean(window) if window else 0.0
        failed = failures / calls if calls else 0.0
        if window:
            self._floor = min(self._floor, statistics.median(window))
        self.history.append((before, mean, failed))
        if stuck:
            known = self._below if 0 < self._below < before else before
            self._cut(max(1, min(self._ceiling, known // 2)))
            self._ceiling = self.limit
        elif failed > self.FAILING:
            if self._probing:
                # A rise past the ceiling broke again: each time, the ceiling is tried half as
                # often, as an exponential backoff.
                self._recover = min(self.MOST_RECOVER, 2 * self._recover)
                self._probing = False
            self._ceiling = max(1, min(self._ceiling, before - 1))
            # The calls that went through measure what the far side takes: keep that many,
            # and at least half (failures that are not the far side's capacity speaking).
            self._cut(max(1, before // 2, min(before - 1, math.floor(before * (1 - failed)))))
        elif mean > self.TOLERANCE * self._floor:
            self._cut(max(1, round(before * self.TOLERANCE * self._floor / mean)))
        elif busiest >= before - before // 8:  # (paced starts may not quite reach it)
            if mean > self.SLOW_START_EXIT * self._floor:
                self._growing = False  # latency begins to rise: the knee is near (HyStart)
            if self._growing:
                step = (self.SLOW_START - 1) * before
            else:
                step = max(1, round(math.sqrt(before)))
            if before >= self._ceiling:
                # Clean windows at the ceiling: every RECOVER of them it rises by one, so that
                # a far side that recovered (a brief outage, a burst of 429s) is found again,
                # slowly enough that one that did not is not hammered (and more slowly each
                # time it breaks again, up to every MOST_RECOVER).
                self._at_ceiling += 1
                self._probing = False  # (a clean window at the ceiling: it held)
                if self._at_ceiling % self._recover == 0:
                    self._ceiling = min(self._cap, self._ceiling + 1)
                    self._probing = True
            self.limit = min(self._cap, self._ceiling, before + step)
            if self.limit > before:
                self._below = before
        return self.limit != before

    def _cut(self, limit: int) -> None:
        self.limit = limit
        self._growing = False
        # One cut per latency, as TCP cuts once per round trip: the calls that start within
        # one still meet the far side as the old limit left it (busy, queued), and would cut
        # again for what was already acted on.
        self._acted = time.monotonic() + self._floor


# Put in the outbox by wake(): makes a waiting collect() return, and is no task's outcome.
_WAKE: list[Outcome] = []


class ThreadsBackend:
    def __init__(self, setup: Setup) -> None:
        self._setup = setup
        # At most `limit` threads take work at once; without climbing, every thread may.
        self._gate = threading.Condition()
        self._running = 0
        self.climber: Climber | None = None
        self.limiter: Limiter | None = None
        self._samples: collections.deque[tuple[float, float, int, int]] = collections.deque()
        if setup.concurrency is not None and setup.concurrency < setup.workers:
            if setup.latency is not None:
                self.limiter = Limiter(setup.concurrency, setup.workers, setup.latency)
            else:
                self.climber = Climber(setup.concurrency, setup.workers)
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
        self._in_flight = 0
        self._closed = False
        # The calls running at once share the cores with their native pools (BLAS, OpenMP):
        # capped for the run, in this whole process, then put back.
        self._inner = _inner.Held(_inner.limit_for(setup.inner_threads, setup.workers))

    # The driver's thread --------------------------------------------------------------------

    def submit(self, task: Task) -> None:
        self._in_flight += 1
        # Threads start as work arrives, so three items never start sixteen threads.
        if len(self._threads) < min(self._limit, self._in_flight):
            self._start_thread()
        self._inbox.put(task)

    def collect(self, timeout: float | None) -> list[Outcome]:
        if self._in_flight == 0:
            return []
        limit = self._setup.timeout
        wait = timeout if limit is None else _min(timeout, self._next_deadline(limit))
        if self.limiter is not None:
            # Stuck calls complete nothing: look at them in time all the same.
            wait = _min(wait, self.limiter.next_look(self._oldest_start()))
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
        self.limiter.saw(self._running_calls())  # running a call (not waiting for one)
        return self.limiter.completed(samples, self._oldest_start())

    def _running_calls(self) -> int:
        return sum(1 for slot in self._threads.values() if slot.task is not None)

    def _oldest_start(self) -> float | None:
        return min(
            (slot.started for slot in self._threads.values() if slot.task is not None),
            default=None,
        )

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
        if not starts:
            return limit  # nothing started yet: look again within a timeout's length
        return max(0.0, min(starts) + limit - time.monotonic())

    def _abandon_overdue(self, limit: float) -> list[Outcome]:
        now = time.monotonic()
        outcomes: list[Outcome] = []
        for thread, slot in list(self._threads.items()):
            with slot.lock:
                task = slot.task
                if task is None or now - slot.started < limit:
                    continue
                slot.abandoned = True
            self._leave()  # its place goes to the thread that replaces it
            del self._threads[thread]
            self._abandoned.append(thread)
            self._in_flight -= 1
            for index in task_indices(task):
                exc = TaskTimeout(
                    f"item {index} ran longer than timeout={limit:g}s; its thread cannot be "
                    "killed and was left to finish in the background. Use model='processes' "
                    "to have stuck items killed"
                )
                outcomes.append((index, 1, exc, format_traceback(exc)))
            if len(self._threads) < self._limit:
                self._start_thread()
        return outcomes

    # Worker threads -------------------------------------------------------------------------

    def _start_thread(self) -> None:
        slot = _Slot()
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
        init_error = run_initializer(self._setup.initializer, self._setup.initargs)
        try:
            while True:
                self._enter()
                task = self._inbox.get()
                if task is None:
                    self._leave()
                    break
                with slot.lock:
                    slot.task, slot.started = task, time.monotonic()
                _inner.caps.refresh()  # pools that the last task's imports loaded
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
                with slot.lock:
                    if slot.abandoned:
                        return False
                    slot.task = None
                self._leave()
                self._outbox.put(outcomes)
                # Nothing of the task or its results stays referenced while this thread waits
                # for the next one (the caller may be waiting for them to be collected).
                del task, outcomes
        finally:
            caller.close()
            _inner.caps.leave_thread()
            slot.released.set()
        with slot.lock:
            return not slot.abandoned and not self._setup.fresh

    def _enter(self) -> None:
        with self._gate:
            while self._running >= self._limit:
                self._gate.wait()
            self._running += 1
            delay = 0.0 if self._pacer is None else self._pacer.reserve()
        if delay > 0:
            time.sleep(delay)

    def _leave(self) -> None:
        with self._gate:
            self._running -= 1
            self._gate.notify()


def _min(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


backend_class = ThreadsBackend
