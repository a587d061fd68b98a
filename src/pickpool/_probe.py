"""Measuring the user's function on its first items: the evidence behind ``advise`` and auto.

The probe never calls the function on made-up input, and never twice on one item: it runs the
first real items through the ordinary driver, so errors, retries and timeouts behave as in any
run and every result is kept. The function is wrapped in a timer (wall and thread CPU time per
call) and run in up to two *phases*:

1. ``alone``: one call at a time, while a *knocker* thread measures how much of the time the GIL
   is held (it naps 0.5 ms in a loop: when another thread holds the GIL it wakes up to a switch
   interval late);
2. ``together``: several calls at once — threads for a plain function, one event loop for a
   coroutine function — to measure how throughput scales.

:class:`Pilot` hands each phase to its caller to run (``drive`` or ``adrive``), reads the timings,
decides whether the next phase is worth its cost, and finally turns them into
:class:`Evidence`. What to make of the evidence is ``_advise``'s business.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from . import _inner, _machine
from ._backends import Setup
from ._driver import Done, Plan
from ._inner import InnerThreads, Pool
from ._options import make_plan
from ._pace import Pacer
from ._task import OK

# (start, wall seconds, CPU seconds of the calling thread, CPU seconds of the whole process)
# of one call. Alone, the process's CPU time is the call's own with its native threads (BLAS):
# 2 s of it in 1 s of wall time is a call that used two cores.
Record = tuple[float, float, float, float]


def _clocks() -> tuple[float, float, float]:
    """Wall, this thread's CPU and the process's CPU clocks, now."""
    return time.perf_counter(), time.thread_time(), time.process_time()


def _since(began: tuple[float, float, float]) -> Record:
    """The :data:`Record` of a call that began at ``began`` (see :func:`_clocks`)."""
    start, cpu, all_cpu = began
    wall, cpu_now, all_now = _clocks()
    return start, wall - start, cpu_now - cpu, all_now - all_cpu


class _Timed:
    """``fn`` with each call's wall, thread CPU and process CPU time appended to ``records``;
    a :class:`Knocker`, if given, is told when each call runs."""

    __slots__ = ("fn", "knocker", "records")

    def __init__(
        self, fn: Callable[[Any], Any], records: list[Record], knocker: Knocker | None = None
    ) -> None:
        self.fn = fn
        self.records = records
        self.knocker = knocker

    def __call__(self, item: Any) -> Any:
        knocker = self.knocker
        if knocker is not None:
            knocker.enter()
        began = _clocks()
        try:
            return self.fn(item)
        finally:
            self.records.append(_since(began))
            if knocker is not None:
                knocker.leave()


class _AsyncTimed(_Timed):
    """:class:`_Timed` for a coroutine function (CPU time is the loop thread's over the await)."""

    __slots__ = ()

    async def __call__(self, item: Any) -> Any:
        knocker = self.knocker
        if knocker is not None:
            knocker.enter()
        began = _clocks()
        try:
            return await self.fn(item)
        finally:
            self.records.append(_since(began))
            if knocker is not None:
                knocker.leave()


class Knocker:
    """Measures the share of time some other thread holds the GIL.

    A thread naps :attr:`NAP` seconds in a loop. Waking, it needs the GIL: when the GIL is free it
    runs on at once, when a thread holds it (pure Python) it waits until the interpreter forces a
    switch, up to ``sys.getswitchinterval()`` (5 ms). Lateness beyond the nap's usual oversleep,
    over the time watched, scaled so that a GIL held throughout reads 1.0, is the held share.
    It costs the measured code one GIL hand-off per ~5 ms.

    A thread also wakes late when every core is busy (native threads of the measured call, other
    programs): it is then runnable but waits for a core, which is not the GIL. The kernel counts
    that wait (``/proc/thread-self/schedstat``, "run delay"), and it is taken off the lateness.
    Waiting for the GIL is a sleep on a condition variable, which that count leaves out.

    With ``calls=True`` only the time inside calls counts (:meth:`enter` and :meth:`leave`
    mark them): what runs between calls (the consumer of the results, the probe's own
    bookkeeping, a first import of the pickler) holds the GIL too, but is not the call's.
    A nap counts from a call's start, less the time it spent between calls.
    """

    NAP = 0.0005

    def __init__(self, *, calls: bool = False) -> None:
        self._stop = threading.Event()
        self._late = 0.0
        self._watched = 0.0
        self._baseline = 0.0
        self._thread: threading.Thread | None = None
        self._calls = calls
        self._inside = 0  # calls running now
        self._left_at = 0.0  # when the last one ended
        self._between = 0.0  # seconds so far with no call running, after the first call

    def enter(self) -> None:
        """A call begins (with ``calls=True``)."""
        if self._inside == 0 and self._left_at:
            self._between += time.perf_counter() - self._left_at
        self._inside += 1

    def leave(self) -> None:
        """A call ends."""
        self._inside -= 1
        if self._inside == 0:
            self._left_at = time.perf_counter()

    def start(self) -> None:
        self._baseline = _oversleep(self.NAP)
        self._thread = threading.Thread(target=self._run, name="pickpool-knocker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        nap, baseline = self.NAP, self._baseline
        queued = _RunDelay()
        try:
            while not self._stop.is_set():
                watching = not self._calls or self._inside > 0
                between = self._between
                t0 = time.perf_counter()
                q0 = queued.seconds()
                time.sleep(nap)
                woke = time.perf_counter()
                waited_for_core = queued.seconds() - q0
                if not watching:
                    continue
                elapsed = woke - t0
                if self._calls:
                    # Time between calls is not a call's, whoever held the GIL in it.
                    between = self._between - between
                    if self._inside == 0:
                        between += woke - self._left_at
                    elapsed -= min(elapsed, max(0.0, between))
                self._late += max(0.0, elapsed - nap - baseline - waited_for_core)
                self._watched += elapsed
        finally:
            queued.close()

    def stop(self) -> tuple[float, float]:
        """(held share 0..1, seconds watched)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._watched <= 0:
            return 0.0, 0.0
        switch = sys.getswitchinterval()
        full = switch / (switch + self.NAP)  # what a GIL held throughout reads
        return min(1.0, self._late / self._watched / full), self._watched


class _RunDelay:
    """Seconds the calling thread has waited, runnable, for a core (0 where unknown)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        try:
            self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            self.seconds()
        except (OSError, ValueError, IndexError):
            self.close()

    def seconds(self) -> float:
        if self._fd is None:
            return 0.0
        # "<ns on a core> <ns waiting for one> <timeslices>"
        return int(os.pread(self._fd, 128, 0).split()[1]) / 1e9

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


@functools.cache
def _oversleep(nap: float) -> float:
    """How late a nap of ``nap`` seconds wakes with nothing else running: the lateness that is
    not the GIL's. A fact of the machine, measured once per process (it costs ~3 ms)."""
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        time.sleep(nap)
        samples.append(time.perf_counter() - t0 - nap)
    return max(0.0, statistics.median(samples))


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the probe measured on the first items of a batch. Times are seconds per call.

    Example::

        >>> advice = pickpool.advise(fn, items)
        >>> advice.evidence.cpu_share
        0.99
    """

    is_async: bool
    calls: int  # calls the probe made (alone and together)
    failed: int  # of which raised or timed out
    wall: float  # one call alone, wall clock (median)
    cpu: float  # one call alone, CPU time of its thread (median)
    gil_held: float | None  # share of a call's wall time the GIL was held (None: too short to see)
    child_cpu: float  # CPU time of child processes a call ran and waited for
    threads: int  # calls run at once in threads in the scaling test (0: not run)
    scaling: float | None  # throughput with `threads` at once / throughput alone
    coroutines: int  # coroutines run at once on one loop (0: not run)
    loop_blocked: float | None  # share of a coroutine's time it blocks its event loop
    item_bytes: int  # pickled size of an item (median)
    result_bytes: int  # pickled size of a result (median)
    item_pickle: float  # seconds to pickle an item (median)
    result_pickle: float  # seconds to pickle a result (median)
    unpicklable: str | None  # why the function or its data cannot go to a process (None: it can)
    length: int | None  # items in the whole batch, if known
    seconds: float  # the probe's own wall time
    # Native thread pools inside a call (BLAS, OpenMP...). process_cpu: CPU time of the whole
    # process per call alone, its native threads included (None: not measured, as cpu).
    process_cpu: float | None = None
    pools: tuple[Pool, ...] = ()  # the pools loaded, with their sizes, when a call used them
    # One call alone with each pool at one thread (None: not measured): wall, CPU of the whole
    # process, and the GIL's held share then.
    capped_wall: float | None = None
    capped_cpu: float | None = None
    capped_gil: float | None = None
    # Calls that wait, run n at once, doubling, while latency held: (n, median latency, share
    # that failed) per round; the last one is where latency grew or calls failed, if they did.
    ramp: tuple[tuple[int, float, float], ...] = ()
    # The function pickled for worker processes, once per run and sent once to each worker:
    # its size, and the seconds its pickling took (what it closes over counts: a big table).
    fn_bytes: int = 0
    fn_pickle: float = 0.0

    @property
    def cpu_share(self) -> float:
        """CPU time over wall time of a call alone, its own threads' included: ~1 computes,
        ~0 waits (a call whose native pool computes while it waits for it computes)."""
        if self.wall <= 0:
            return 1.0
        return min(1.0, max(self.cpu, self.process_cpu or 0.0) / self.wall)

    @property
    def cores_used(self) -> float:
        """Cores a call kept busy alone, its native threads included: 1.9 is already parallel."""
        if self.wall <= 0:
            return 1.0
        return max(min(self.cpu, self.wall), self.process_cpu or 0.0) / self.wall


@dataclass(frozen=True, slots=True)
class Wishes:
    """The caller's own ``map`` options, checked: what every phase and the rest must honour."""

    workers: int | None = None
    chunksize: int | None = None
    timeout: float | None = None
    retries: int = 0
    on_error: str = "raise"
    ordered: bool = True
    fresh_workers: bool = False
    inner_threads: InnerThreads = None
    backoff: float = 0.0
    max_concurrency: int | None = None
    initializer: Callable[..., object] | None = None
    initargs: tuple[Any, ...] = ()
    max_tasks_per_child: int | None = None
    # ``max_rate``, as the one pacer every phase of the run shares.
    pacer: Pacer | None = None

    def workers_setup(self) -> dict[str, Any]:
        """What each new worker is set up with, for every :class:`Setup` of the run."""
        return {
            "initializer": self.initializer,
            "initargs": self.initargs,
            "max_tasks_per_child": self.max_tasks_per_child,
        }

    def plan(
        self,
        model: str,
        *,
        is_async: bool,
        workers: int,
        chunksize: int | None,
        adaptive: bool = False,
        length: int | None = None,
    ) -> Plan:
        """The plan for running some of the items on ``model``, with these options.

        ``adaptive``: chunks start at ``chunksize`` and follow the measured pace, unless the
        caller fixed the chunk size; ``length``: how many items the plan runs, if known.
        """
        # Each item on its own: its timeout runs from its start, its start is paced.
        one_by_one = self.timeout is not None or self.pacer is not None
        plan = make_plan(
            model=model,
            is_async=is_async,
            length=length,
            workers=workers,
            chunksize=None if one_by_one else chunksize,
            ordered=self.ordered,
            timeout=self.timeout,
            retries=self.retries,
            on_error=self.on_error,
            backoff=self.backoff,
            max_concurrency=self.max_concurrency,
            max_rate=None if self.pacer is None else self.pacer.rate,
        )
        return dataclasses.replace(
            plan,
            adaptive=adaptive and not one_by_one and self.chunksize is None,
            pacer=self.pacer,
        )


@dataclass(frozen=True, slots=True)
class Phase:
    """Items to run under ``plan`` (with a timing ``setup``), numbered from ``start``."""

    name: str  # "alone", "together" or "run"
    plan: Plan
    setup: Setup
    items: Iterator[Any]
    start: int


class _Gate:
    """Hands a phase the next items of the shared input while ``allow()`` says so."""

    def __init__(self, pilot: Pilot, allow: Callable[[], bool]) -> None:
        self._pilot = pilot
        self._allow = allow
        self._closed = False

    def __iter__(self) -> _Gate:
        return self

    def __next__(self) -> Any:
        if self._closed or not self._allow():
            self._closed = True
            raise StopIteration
        try:
            item = next(self._pilot.source)
        except StopIteration:
            self._pilot.exhausted = True
            self._closed = True
            raise
        self._pilot.taken += 1
        return item


# Pickling is measured on this many results (and their items), the first ones that succeed.
_PICKLE_SAMPLES = 5
# Seconds per byte of a function already pickled (by an earlier probe of the same run),
# as cloudpickle measured here on large closures: ~2 ns a byte.
FN_PICKLE_PER_BYTE = 2e-9
_HANDOFF = 5e-6  # seconds to hand a call to a thread and take its result back, at least
# Small items are timed again together, as chunks travel: a separate dumps() of a small int
# costs more than its share of a chunk's, and sub-microsecond timings are mostly noise.
_SMALL_SAMPLES = 64
_SMALL_BYTES = 1024
# The alone phase stops once it has seen this much of a run that is mostly waiting: waiting
# is measured faster and better together.
WAITING_SHARE = 0.3
# A call alone that keeps this many cores busy runs threads of its own (BLAS, OpenMP...).
_PARALLEL_CALL = 1.2
# Below this much watched time the knocker's reading is noise.
_KNOCKER_MIN = 0.01
_MAX_PROBE_THREADS = 16
# Calls that wait are run up to this many at once, doubling, while their latency stays within
# this many times its value alone.
_MAX_RAMP_THREADS = 32
RAMP_TOLERANCE = 1.5
RAMP_FAILING = 0.1  # a share of a round's calls that failed: the far side refuses
# advise's share: its only job is to measure, so it may take a larger part of the batch.
ADVISE_SHARE = 0.1
_MAX_PROBE_COROUTINES = 16


class Pilot:
    """Plans the probe's phases, one after the other, and gathers their :class:`Evidence`.

    ``share``: the part of the whole batch's serial time the alone phase may take (auto keeps
    it small; ``advise``, whose only job is to measure, may take more).
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        source: Iterator[Any],
        *,
        is_async: bool,
        length: int | None,
        budget: float,
        share: float,
        wishes: Wishes,
        start: int = 0,
        ramp: bool = True,
    ) -> None:
        self.fn = fn
        # False: calls that wait are not ramped here, the run's limiter ramps them itself.
        self.ramp = ramp
        self.source = source
        self.is_async = is_async
        self.length = length
        self.budget = budget
        self.share = share
        self.wishes = wishes
        # The index of the next item. A probe that starts mid-run (auto re-deciding after a
        # drift) starts at the first item it has not run.
        self.first = self.taken = start
        self.exhausted = False
        self.evidence: Evidence | None = None
        self._began = time.perf_counter()
        self._alone: list[Record] = []
        self._capped: list[Record] = []  # alone, with native pools at one thread
        self._capped_gil: float | None = None
        self._pools: tuple[Pool, ...] = ()
        self._together: list[Record] = []
        self._rounds: list[tuple[int, float, float]] = []  # (at once, latency, failed share)
        self._failed = 0
        self._pickled: list[tuple[int, float, int, float]] = []
        self._small: list[tuple[Any, Any]] = []  # small items and results, timed together
        self.fn_bytes: bytes | None = None  # the function pickled for processes, once
        self._unpicklable: str | None = None
        self._gil: float | None = None
        self._child_cpu = 0.0
        self._scaling: float | None = None
        self._threads = 0
        self._coroutines = 0
        self._blocked: float | None = None
        self._shared_cpu: float | None = None

    # What the caller does with the phases --------------------------------------------------

    def saw(self, done: Done) -> None:
        """Note one finished item of a probe phase (its result's pickling, or its failure)."""
        if done.status != OK:
            self._failed += 1
        elif self._unpicklable is None:
            if len(self._pickled) < _PICKLE_SAMPLES:
                self._measure_pickling(done.item, done.value)
            elif len(self._small) < _SMALL_SAMPLES and self._pickled[-1][0] < _SMALL_BYTES:
                # (Small as the first samples were: the items of one batch tend to be alike.)
                self._small.append((done.item, done.value))

    def phases(self) -> Generator[Phase, None, None]:
        """The probe's phases; each is yielded once the one before it has run to the end."""
        yield from self._alone_phase()
        if self._inner_parallel():
            yield from self._alone_phase(self._capped, capped=True)
        if self._exhausted_or_enough():
            self.evidence = self._evidence()
            return
        if self._waits():
            if self.ramp:
                yield from self._ramp()
        else:
            together = self._together_phase()
            if together is not None:
                yield together
                self._read_together()
        self.evidence = self._evidence()

    def _clearly_waiting(self, record: Record) -> bool:
        """A call that spent under a tenth of its time on the CPU, long enough to matter."""
        _, wall, cpu, all_cpu = record
        return not self.is_async and wall > 1e-3 and max(cpu, all_cpu) < 0.1 * wall

    def _waits(self) -> bool:
        """Whether calls alone mostly waited (on a server, a disk, a child process), rather
        than for threads of their own that computed meanwhile."""
        wall, cpu = _typical(self._alone)
        cpu = max(cpu, _typical_process_cpu(self._alone))
        return not self.is_async and wall > 0 and cpu / wall < WAITING_SHARE

    def _ramp(self) -> Generator[Phase, None, None]:
        """Calls that wait, run 2, 4, 8... at once (a round of that many calls each) while
        their latency holds: a far side with a finite capacity (a server's backlog, a pool of
        connections, a quota) shows its knee as latency that grows, or as failures."""
        wall, _ = _typical(self._alone)
        most = min(
            _MAX_RAMP_THREADS,
            self.wishes.workers or _MAX_RAMP_THREADS,
            self.wishes.max_concurrency or _MAX_RAMP_THREADS,
        )
        cap = self._item_cap()
        n = 2
        while n <= most and not self.exhausted:
            room = cap - (self.taken - self.first) if cap != sys.maxsize else sys.maxsize
            left = self.remaining()
            if left is not None:
                room = min(room, left)
            if room < n or (self._rounds and self._spent() > 0.3 * self.budget):
                break
            records: list[Record] = []
            failed = self._failed
            start = self.taken
            yield Phase(
                "together",
                self._plan("threads", n, 1),
                Setup(
                    self._timed(records),
                    n,
                    False,
                    self.wishes.timeout,
                    fresh=self.wishes.fresh_workers,
                    inner_threads=self.wishes.inner_threads,
                    **self.wishes.workers_setup(),
                ),
                _Gate(self, lambda start=start, n=n: self.taken - start < n),  # type: ignore[misc]
                start,
            )
            if not records:
                break
            self._together += records
            latency = statistics.median(r[1] for r in records)
            share = (self._failed - failed) / len(records)
            self._rounds.append((n, latency, share))
            if len(self._rounds) == 1:
                wall = min(wall, latency)  # (the one call alone may have warmed things up)
            if latency > RAMP_TOLERANCE * wall or share > RAMP_FAILING:
                break
            self._threads, self._scaling = n, min(n, n * wall / latency)
            # Fourfold: each round costs about one call's time, and the run's limit goes on
            # doubling from where the ramp held.
            n *= 4

    def _spent(self) -> float:
        return time.perf_counter() - self._began

    def remaining(self) -> int | None:
        """Items not yet taken, if the input's length is known."""
        if self.exhausted:
            return 0
        return None if self.length is None else max(0, self.length - self.taken)

    # The phases ---------------------------------------------------------------------------

    def _plan(self, model: str, workers: int, chunksize: int | None) -> Plan:
        return self.wishes.plan(model, is_async=self.is_async, workers=workers, chunksize=chunksize)

    def _timed(self, records: list[Record], knocker: Knocker | None = None) -> Callable[[Any], Any]:
        return (_AsyncTimed if self.is_async else _Timed)(self.fn, records, knocker)

    def _alone_phase(
        self, records: list[Record] | None = None, *, capped: bool = False
    ) -> Generator[Phase, None, None]:
        """One call at a time: as the caller's settings run it, or (``capped``) with every
        native thread pool at one thread, to see what the pools' threads bring."""
        records = self._alone if records is None else records
        # A coroutine function runs on an event loop even alone, as it would under asyncio.
        model = "asyncio" if self.is_async else "serial"
        # A window of one: the next item is taken only once the last one is timed, so that the
        # phase stops as soon as it has seen enough.
        plan = dataclasses.replace(self._plan(model, 1, 1), window=1)
        knocker = Knocker(calls=True)
        setup = Setup(
            self._timed(records, knocker),
            1,
            self.is_async,
            self.wishes.timeout,
            inner_threads=1 if capped else self.wishes.inner_threads,
            fresh=self.wishes.fresh_workers,
            **self.wishes.workers_setup(),
        )
        cap = self._item_cap()
        typical: list[tuple[float, float]] = []  # the last estimate, redone as calls add up

        def allow() -> bool:
            n = len(records)
            if self.taken - self.first >= cap or (
                self.length is not None and n >= 3 and 2 * n >= self.length - self.first
            ):
                return False  # (and half a known batch is left to run together)
            elapsed = time.perf_counter() - began
            if n < 2:
                # A second call shows what the first one's warm-up (imports, caches) hid,
                # unless the first alone took most of the budget, or clearly waited: the
                # ramp that follows times waiting calls again, two at once.
                if n == 1 and not capped and self._clearly_waiting(records[0]):
                    return False
                return n == 0 or elapsed < 0.35 * self.budget
            if n <= 16 or n % 64 == 0 or not typical:
                # (A median per call would cost tiny calls more than the calls themselves.)
                typical[:] = [_typical(records)]
            wall, cpu = typical[0]
            if elapsed >= 0.35 * self.budget:
                return False
            if wall > 0 and cpu / wall < WAITING_SHARE:
                return False  # mostly waiting: together tells more, sooner
            return n < 3 or elapsed < self._alone_target(wall)

        knocker.start()
        began = time.perf_counter()
        children = _children_cpu()
        try:
            yield Phase("alone", plan, setup, _Gate(self, allow), self.taken)
        finally:
            held, watched = knocker.stop()
        reading = held if watched >= _KNOCKER_MIN and records else None
        if capped:
            self._capped_gil = reading
            return
        self._gil = reading
        if records:
            self._child_cpu = max(0.0, _children_cpu() - children) / len(records)

    def _inner_parallel(self) -> bool:
        """Whether calls alone kept more than one core busy, with native pools that can be
        capped: then a few more calls alone, capped, show what those threads are worth."""
        left = self.remaining()
        if (
            self.is_async
            or self.wishes.inner_threads is not None  # the caller's cap holds in every model
            or self.wishes.workers == 1
            or self.exhausted
            or len(self._alone) < 2
            or _machine.cores() < 2
        ):
            return False
        wall = _typical(self._alone)[0]
        if left is not None and left * wall < 0.01:
            return False  # too little left for any other model to pay
        used = _typical_process_cpu(self._alone) / wall if wall > 0 else 0.0
        if used < _PARALLEL_CALL:
            return False
        self._pools = tuple(_inner.pools())
        return any(p.cappable and p.threads > 1 for p in self._pools)

    def _alone_target(self, wall: float) -> float:
        """How long the alone phase should run, given the time of one call."""
        total = math.inf if self.length is None else (self.length - self.first) * wall
        target = min(self.share * total, 0.35 * self.budget)
        if wall < _HANDOFF and not self.is_async:
            # No together phase follows (see _exhausted_or_enough): a few milliseconds give
            # the time per call and the pickling, which is all the cost model needs.
            return 0.002
        if wall < 20e-6:
            # Calls this short take milliseconds to time: just enough for the knocker to tell
            # whether they hold the GIL, which settles whether running them together can pay.
            target = min(target, 1.2 * _KNOCKER_MIN)
        return max(target, 0.002)

    def _item_cap(self) -> int:
        """The most items the probe may take: a small part of a known batch."""
        if self.length is None:
            return sys.maxsize
        if self.share >= ADVISE_SHARE:
            return self.length - self.first  # advise: measuring is all it does
        return max(4, math.ceil(0.1 * (self.length - self.first)))

    def _exhausted_or_enough(self) -> bool:
        if self.exhausted or not self._alone:
            return True
        if self.wishes.workers == 1:
            return True  # the caller allows one at a time: nothing to scale
        wall, cpu = _typical(self._capped or self._alone)
        share = cpu / wall if wall > 0 else 1.0
        gil = self._capped_gil if self._capped else self._gil
        # Clearly GIL-bound computing: threads cannot help, and the knocker has shown it.
        if gil is not None and gil >= 0.7 and share >= 0.8 and not self.is_async:
            return True
        # A call shorter than handing it to a thread: threads cannot gain, and processes are
        # judged from this phase alone.
        if wall < _HANDOFF and not self.is_async:
            return True
        # So little work left that running it together cannot save what measuring costs.
        left = self.remaining()
        return left is not None and left * wall < 0.01

    def _together_phase(self) -> Phase | None:
        # Calls together run with their native pools capped to fit the cores, as a run would.
        wall, cpu = _typical(self._capped or self._alone)
        cap = self._item_cap()
        room = cap - (self.taken - self.first) if cap != sys.maxsize else sys.maxsize
        left = self.remaining()
        if left is not None:
            room = min(room, left)
        if self.is_async:
            k = min(
                _MAX_PROBE_COROUTINES,
                room,
                self.wishes.workers or _MAX_PROBE_COROUTINES,
                self.wishes.max_concurrency or _MAX_PROBE_COROUTINES,
            )
            if k < 2:
                return None
            self._coroutines = k
            plan = self._plan("asyncio", k, 1)
            setup = Setup(
                self._timed(self._together),
                k,
                True,
                self.wishes.timeout,
                fresh=self.wishes.fresh_workers,
                **self.wishes.workers_setup(),
            )
            limit = k
        else:
            cores = _machine.cores()
            # Enough threads that, if the GIL were free, the cores would be busy.
            wanted = max(2, cores, math.ceil(cores * wall / max(cpu, wall / 64)))
            n = min(
                _MAX_PROBE_THREADS,
                wanted,
                self.wishes.workers or _MAX_PROBE_THREADS,
                self.wishes.max_concurrency or _MAX_PROBE_THREADS,
                room,
            )
            if n < 2:
                return None
            target = min(0.2 * self.budget, max(0.02, 4 * wall))
            per_thread = max(1, min(1000, round(target / wall) if wall > 0 else 1000))
            per_thread = min(per_thread, room // n)
            self._threads = n
            plan = self._plan("threads", n, per_thread)
            setup = Setup(
                self._timed(self._together),
                n,
                False,
                self.wishes.timeout,
                fresh=self.wishes.fresh_workers,
                inner_threads=self.wishes.inner_threads,
                **self.wishes.workers_setup(),
            )
            limit = n * per_thread
        start = self.taken
        return Phase(
            "together", plan, setup, _Gate(self, lambda: self.taken - start < limit), start
        )

    def _read_together(self) -> None:
        records = self._together
        if len(records) < 2:
            return
        wall, _ = _typical(self._capped or self._alone)
        if wall <= 0:
            return
        if self.is_async:
            # k coroutines that overlap take about one call's time; ones that block the loop
            # take k calls' time. The excess over one call, spread over the other k-1, is what
            # each one blocks.
            span = max(r[0] + r[1] for r in records) - min(r[0] for r in records)
            k = len(records)
            self._blocked = min(1.0, max(0.0, (span - wall) / (k - 1) / wall))
            if self._blocked < 0.1:
                # Overlapping coroutines: the loop's CPU time over the phase, shared by k, is a
                # truer cost per coroutine than one alone, which also pays the loop's idle turns.
                self._shared_cpu = max(r[2] for r in records) / k
        elif wall >= 2 * sys.getswitchinterval():
            # How much longer a call takes while n run at once: under a held GIL n times as
            # long, when nothing is shared no longer. Per call rather than over the phase's
            # span, so that threads starting or finishing apart do not count.
            crowded = statistics.median(r[1] for r in records)
            self._scaling = min(self._threads, self._threads * wall / crowded)
        else:
            # Calls shorter than the GIL's switch interval run whole between switches, so
            # their own times show no waiting: count what the threads got done together.
            span = max(r[0] + r[1] for r in records) - min(r[0] for r in records)
            self._scaling = min(self._threads, len(records) * wall / span) if span > 0 else None

    # Evidence -----------------------------------------------------------------------------

    def _measure_pickling(self, item: Any, result: Any) -> None:
        from ._pickling import dumps

        try:
            t0 = time.perf_counter()
            item_size = len(dumps(item))
            t1 = time.perf_counter()
            result_size = len(dumps(result))
            t2 = time.perf_counter()
        except Exception as exc:
            self._unpicklable = f"an item or its result cannot be pickled ({exc})"
            return
        # Items travel in chunks, pickled together: what counts is each one's share of the
        # work, not the few microseconds every separate dumps() call costs.
        base = _dumps_overhead()
        self._pickled.append(
            (item_size, max(0.0, t1 - t0 - base), result_size, max(0.0, t2 - t1 - base))
        )

    def _evidence(self) -> Evidence:
        from ._pickling import dumps_function

        fn_pickle = 0.0
        if self._unpicklable is None and self.fn_bytes is None:
            began = time.perf_counter()
            try:
                self.fn_bytes = dumps_function(self.fn)
            except TypeError as exc:
                self._unpicklable = str(exc)
            fn_pickle = time.perf_counter() - began
        elif self.fn_bytes is not None:
            fn_pickle = len(self.fn_bytes) * FN_PICKLE_PER_BYTE  # pickled by an earlier probe
        wall, cpu = _typical(self._alone) if self._alone else (0.0, 0.0)
        if self._rounds and self._rounds[0][1] < wall:
            # Two at once, with nothing else in flight, time a waiting call as well as one
            # alone, and without the first call's warm-up (imports, a connection, DNS).
            wall, cpu = self._rounds[0][1], cpu * self._rounds[0][1] / wall
        if self._shared_cpu is not None:
            cpu = min(cpu, self._shared_cpu)
        if not self._alone and self.wishes.timeout is not None and self._failed:
            wall = self.wishes.timeout  # every call overran: at least this long
        pickled = self._pickled or [(0, 0.0, 0, 0.0)]
        item_pickle = statistics.median(p[1] for p in pickled)
        result_pickle = statistics.median(p[3] for p in pickled)
        if len(self._small) >= 8 and self._unpicklable is None:
            item_pickle, result_pickle = _pickled_together(self._small)
        return Evidence(
            is_async=self.is_async,
            calls=len(self._alone) + len(self._capped) + len(self._together),
            failed=self._failed,
            wall=wall,
            cpu=min(cpu, wall),
            gil_held=self._gil,
            child_cpu=self._child_cpu,
            threads=self._threads if self._scaling is not None else 0,
            scaling=self._scaling,
            coroutines=self._coroutines if self._blocked is not None else 0,
            loop_blocked=self._blocked,
            item_bytes=int(statistics.median(p[0] for p in pickled)),
            item_pickle=item_pickle,
            result_bytes=int(statistics.median(p[2] for p in pickled)),
            result_pickle=result_pickle,
            unpicklable=self._unpicklable,
            fn_bytes=len(self.fn_bytes or b""),
            fn_pickle=fn_pickle,
            length=self.length,
            seconds=time.perf_counter() - self._began,
            process_cpu=_typical_process_cpu(self._alone) if self._alone else None,
            pools=self._pools,
            capped_wall=_typical(self._capped)[0] if self._capped else None,
            # The calling thread's: with every pool at one thread it does the pools' work,
            # and the process's time also counts their threads spinning down (~0.1 s).
            capped_cpu=_typical(self._capped)[1] if self._capped else None,
            capped_gil=self._capped_gil if self._capped else None,
            ramp=tuple(self._rounds),
        )


def _children_cpu() -> float:
    """CPU seconds of this process's finished, waited-for child processes (0 where unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _pickled_together(pairs: list[tuple[Any, Any]]) -> tuple[float, float]:
    """Seconds per item to pickle the items, and their results, a list at a time (best of 3)."""
    from ._pickling import dumps

    items, results = [p[0] for p in pairs], [p[1] for p in pairs]
    best_items = best_results = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        dumps(items)
        t1 = time.perf_counter()
        dumps(results)
        t2 = time.perf_counter()
        best_items, best_results = min(best_items, t1 - t0), min(best_results, t2 - t1)
    return best_items / len(pairs), best_results / len(pairs)


@functools.cache
def _dumps_overhead() -> float:
    """What one ``dumps()`` call costs for nothing: the least of a few on a small int."""
    from ._pickling import dumps

    best = math.inf
    for _ in range(20):
        t0 = time.perf_counter()
        dumps(0)
        best = min(best, time.perf_counter() - t0)
    return best


def _typical_process_cpu(records: list[Record]) -> float:
    """The whole process's CPU time in a typical call (as :func:`_typical` picks)."""
    rest = records[1:] if len(records) >= 3 else records
    return statistics.median(r[3] for r in rest) if rest else 0.0


def _typical(records: list[Record]) -> tuple[float, float]:
    """(wall, cpu) of a typical call: the median, leaving out the first (warm-up) of 3 or more."""
    if not records:
        return 0.0, 0.0
    if len(records) < 3:
        best = min(records, key=lambda r: r[1])
        return best[1], best[2]
    rest = records[1:]
    return statistics.median(r[1] for r in rest), statistics.median(r[2] for r in rest)
