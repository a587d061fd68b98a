"""What the probe's phases measured, gathered as they run and summed up as :class:`Evidence`.

``_probe.Pilot`` decides which phases run; each appends its calls' timings (``_timing``) here,
and sets the readings it takes (the knocker's share, how throughput scaled). :class:`Readings`
also keeps what the finished items show (failures, pickled sizes and times) and, at the end,
makes the :class:`Evidence` the cost model (``_advise``) reads.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _machine
from ._native import Pool
from ._schedule import Done
from ._task import OK
from ._timing import Elsewhere, Record, typical, typical_batched, typical_process_cpu

# A call alone that keeps this many cores busy runs threads of its own (BLAS, OpenMP...).
PARALLEL_CALL = 1.2
# The probe's ramp of calls that wait: latency past this many times a call's alone means
# something they wait on is full; more than this share of a round failing, that it refuses.
RAMP_TOLERANCE = 1.5
RAMP_FAILING = 0.1
# Calls alone that waited, runnable, this share of the time they could run met other programs
# computing on the cores (read from this many seconds of it at least: a scheduler's slices
# are milliseconds long).
BUSY = 0.1
BUSY_SAMPLE = 0.01
# Less computing than this beside the probe is the system's own (daemons, this machine's noise).
BUSY_CORES = 0.5

# Pickling is measured on this many results (and their items), the first ones that succeed.
_PICKLE_SAMPLES = 5
# Seconds per byte of a function already pickled (by an earlier probe of the same run),
# as cloudpickle measured here on large closures: ~2 ns a byte.
FN_PICKLE_PER_BYTE = 2e-9
# Small items are timed again together, as chunks travel: a separate dumps() of a small int
# costs more than its share of a chunk's, and sub-microsecond timings are mostly noise.
_SMALL_SAMPLES = 64
_SMALL_BYTES = 1024


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
    # An async def's CPU time per coroutine when several overlap on one loop (the together
    # phase: the loop's CPU over the phase, shared), None if not measured. Less than ``cpu``,
    # which a call alone on a loop of its own pays, the loop's idle turns included: that is
    # what each call costs on threads or processes, this what it costs on one shared loop.
    loop_cpu: float | None = None
    # Cores' worth of other programs computing beside the probe: from the time calls alone
    # waited, runnable, for a core, and from the kernel's busy time on this process's CPUs
    # less its own (0: under half a core, none to tell from the system's own chores).
    others: float = 0.0

    @property
    def cpu_share(self) -> float:
        """CPU time over wall time of a call alone, its own threads' included: ~1 computes,
        ~0 waits (a call whose native pool computes while it waits for it computes)."""
        if self.wall <= 0:
            return 1.0
        return min(1.0, max(self.cpu, self.process_cpu or 0.0) / self.wall)

    @property
    def demand_share(self) -> float:
        """:attr:`cpu_share` with the CPU of the child processes a call waits for: what it
        asks of this machine's cores. A call that runs a subprocess waits, but not on a far
        side: its child computes on the same cores."""
        if self.wall <= 0:
            return 1.0
        own = max(self.cpu, self.process_cpu or 0.0)
        return min(1.0, (own + self.child_cpu) / self.wall)

    @property
    def cores_used(self) -> float:
        """Cores a call kept busy alone, its native threads included: 1.9 is already parallel."""
        if self.wall <= 0:
            return 1.0
        return max(min(self.cpu, self.wall), self.process_cpu or 0.0) / self.wall


@dataclass(slots=True)
class Readings:
    """The probe's readings so far, for one function on one input.

    The phases append their calls' records to :attr:`alone`, :attr:`capped`, :attr:`together`
    and :attr:`rounds`, and set what they measured over a phase; :meth:`saw` takes each finished
    item; :meth:`evidence` sums it all up.
    """

    fn: Callable[[Any], Any]
    is_async: bool
    length: int | None  # items in the whole input, if known
    timeout: float | None  # the caller's: calls that all overran it took at least this long
    alone: list[Record] = field(default_factory=list)  # one call at a time
    alone_delays: list[float] = field(default_factory=list)  # their run delays
    capped: list[Record] = field(default_factory=list)  # alone, native pools at one thread
    # Tiny calls alone, timed in batches (see _timing.Batched), and how many calls they made.
    batched: list[Record] = field(default_factory=list)
    batched_calls: int = 0
    together: list[Record] = field(default_factory=list)  # several at once
    together_delays: list[float] = field(default_factory=list)  # their run delays (threads)
    rounds: list[tuple[int, float, float]] = field(default_factory=list)  # (n, latency, failed)
    failed: int = 0
    gil: float | None = None  # the knocker's share alone (None: too short to see)
    capped_gil: float | None = None  # the same, capped
    child_cpu: float = 0.0
    pools: tuple[Pool, ...] = ()
    threads: int = 0  # threads at once, together or in the ramp's last clean round
    scaling: float | None = None
    coroutines: int = 0  # coroutines at once on one loop, together
    fn_bytes: bytes | None = None  # the function pickled for processes, once a run
    unpicklable: str | None = None
    _blocked: float | None = None
    _shared_cpu: float | None = None
    _pickled: list[tuple[int, float, int, float]] = field(default_factory=list)
    _small: list[tuple[Any, Any]] = field(default_factory=list)  # small items and results
    _began: float = field(default_factory=time.perf_counter)
    _elsewhere: Elsewhere = field(default_factory=lambda: Elsewhere(_machine.cores()))

    def saw(self, done: Done) -> None:
        """Note one finished item of a probe phase (its result's pickling, or its failure)."""
        if done.status != OK:
            self.failed += 1
        elif self.unpicklable is None:
            if len(self._pickled) < _PICKLE_SAMPLES:
                try:
                    self._pickled.append(_pickling(done.item, done.value))
                except Exception as exc:
                    self.unpicklable = f"an item or its result cannot be pickled ({exc})"
            elif len(self._small) < _SMALL_SAMPLES and self._pickled[-1][0] < _SMALL_BYTES:
                # (Small as the first samples were: the items of one batch tend to be alike.)
                self._small.append((done.item, done.value))

    def typical(self) -> tuple[float, float]:
        """(wall, cpu) of a typical call alone: capped, if that ran (as a run would be)."""
        return typical(self.capped) if self.capped else self._alone_times()

    def _alone_times(self) -> tuple[float, float]:
        """(wall, cpu) of a call alone: in batches, where the calls were too short to time
        one by one."""
        if self.batched:
            return typical_batched(self.batched)[:2]
        return typical(self.alone) if self.alone else (0.0, 0.0)

    def _process_cpu(self) -> float | None:
        """The whole process's CPU time in a call alone (None: no call ran alone)."""
        if self.batched:
            return typical_batched(self.batched)[2]
        return typical_process_cpu(self.alone) if self.alone else None

    def read_together(self) -> None:
        """How the calls of the together phase shared the cores, or the loop."""
        records = self.together
        if len(records) < 2:
            return
        wall, cpu = self.typical()
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
        else:
            self.scaling = _threads_scaling(self, wall, cpu)

    def _fn_pickle(self) -> float:
        """Seconds to pickle the function for worker processes (pickling it, the first time)."""
        from ._pickling import dumps_function

        if self.fn_bytes is not None:
            return len(self.fn_bytes) * FN_PICKLE_PER_BYTE  # pickled by an earlier probe
        if self.unpicklable is not None:
            return 0.0
        began = time.perf_counter()
        try:
            self.fn_bytes = dumps_function(self.fn)
        except TypeError as exc:
            self.unpicklable = str(exc)
        return time.perf_counter() - began

    def _call_times(self) -> tuple[float, float]:
        """(wall, cpu) of one call: alone, or two at once where that showed it truer."""
        wall, cpu = self._alone_times()
        if self.rounds and self.rounds[0][1] < wall:
            # Two at once, with nothing else in flight, time a waiting call as well as one
            # alone, and without the first call's warm-up (imports, a connection, DNS).
            wall, cpu = self.rounds[0][1], cpu * self.rounds[0][1] / wall
        if not self.alone and self.timeout is not None and self.failed:
            wall = self.timeout  # every call overran: at least this long
        return wall, cpu

    def _others(self) -> float:
        """Cores' worth of other programs' computing beside the probe (:func:`_others_of`)."""
        asking = _others_asking(self.alone, self.alone_delays, self.together, self.together_delays)
        got = self._elsewhere.cores(least=BUSY_SAMPLE * 5)
        return _others_of(asking, got, _machine.cores())

    def evidence(self) -> Evidence:
        """What the readings add up to."""
        fn_pickle = self._fn_pickle()
        wall, cpu = self._call_times()
        pickled = self._pickled or [(0, 0.0, 0, 0.0)]
        item_pickle = statistics.median(p[1] for p in pickled)
        result_pickle = statistics.median(p[3] for p in pickled)
        if len(self._small) >= 8 and self.unpicklable is None:
            item_pickle, result_pickle = _pickled_together(self._small)
        return Evidence(
            is_async=self.is_async,
            calls=len(self.alone) + len(self.capped) + self.batched_calls + len(self.together),
            failed=self.failed,
            wall=wall,
            cpu=min(cpu, wall),
            gil_held=self.gil,
            child_cpu=self.child_cpu,
            threads=self.threads if self.scaling is not None else 0,
            scaling=self.scaling,
            coroutines=self.coroutines if self._blocked is not None else 0,
            loop_blocked=self._blocked,
            item_bytes=int(statistics.median(p[0] for p in pickled)),
            item_pickle=item_pickle,
            result_bytes=int(statistics.median(p[2] for p in pickled)),
            result_pickle=result_pickle,
            unpicklable=self.unpicklable,
            fn_bytes=len(self.fn_bytes or b""),
            fn_pickle=fn_pickle,
            length=self.length,
            seconds=time.perf_counter() - self._began,
            process_cpu=self._process_cpu(),
            pools=self.pools,
            capped_wall=typical(self.capped)[0] if self.capped else None,
            # The calling thread's: with every pool at one thread it does the pools' work,
            # and the process's time also counts their threads spinning down (~0.1 s).
            capped_cpu=typical(self.capped)[1] if self.capped else None,
            capped_gil=self.capped_gil if self.capped else None,
            ramp=tuple(self.rounds),
            loop_cpu=None if self._shared_cpu is None else min(cpu, self._shared_cpu),
            others=self._others(),
        )


def _pickling(item: Any, result: Any) -> tuple[int, float, int, float]:
    """(bytes, seconds) to pickle ``item``, then the same for its ``result``."""
    from ._pickling import dumps

    t0 = time.perf_counter()
    item_size = len(dumps(item))
    t1 = time.perf_counter()
    result_size = len(dumps(result))
    t2 = time.perf_counter()
    # Items travel in chunks, pickled together: what counts is each one's share of the
    # work, not the few microseconds every separate dumps() call costs.
    base = _dumps_overhead()
    return item_size, max(0.0, t1 - t0 - base), result_size, max(0.0, t2 - t1 - base)


def _threads_scaling(readings: Readings, wall: float, cpu: float) -> float | None:
    """How much faster the threads of the together phase got calls of ``wall`` seconds alone
    (``cpu`` of them computing) done than one thread would.

    Against calls alone as those ran on this machine (their run delay put back): both then
    share the cores with the same other programs. Over the phase, not per call: calls shorter
    than the GIL's switch interval run whole between switches, so their own times show no
    waiting; and a call's own time reads uncrowded while the other threads start or finish.
    The phase's ragged ends count against the threads: a reading that errs towards the GIL.
    """
    records = readings.together
    span = max(r[0] + r[1] for r in records) - min(r[0] for r in records)
    most = _waited(records, readings.together_delays)
    alone = _as_it_ran(wall, readings.alone, readings.alone_delays, most)
    seen = len(records) * alone / span if span > 0 else None
    return None if seen is None else _scaling(readings.threads, seen, wall, cpu)


def _scaling(threads: int, seen: float, wall: float, cpu: float) -> float:
    """``seen``, no more than ``threads`` and what the cores allow calls that compute ``cpu``
    of each ``wall`` seconds (a reading past that is noise: no sharing is that good)."""
    most = _machine.cores() * wall / cpu if cpu > 0 else math.inf
    return min(float(threads), seen, most)


def _waited(records: list[Record], delays: list[float]) -> float:
    """The share of their time calls (``records`` of their whole wall times) waited for a
    core (with no counts, 1: no bound)."""
    ran = sum(r[1] for r in records)
    return sum(delays) / ran if delays and ran > 0 else 1.0


def _as_it_ran(wall: float, alone: list[Record], delays: list[float], most: float) -> float:
    """A call of ``wall`` seconds (its run delay left out) as long as it took on this machine:
    with the share of their time the calls ``alone`` waited for a core put back, over them
    all (a call of a few milliseconds may run whole on a core, or wait all along), the first
    left out, and no more than ``most``, the share the calls together waited: threads of
    this program that still ran beside the calls alone (a re-decision's probe follows a
    run's last calls) made them wait more than the other programs did."""
    pairs = list(zip(alone, delays, strict=False))
    pairs = pairs[1:] or pairs
    waited = sum(d for _, d in pairs)
    ran = sum(r[1] for r, _ in pairs) + waited
    return wall / (1 - min(0.9, most, waited / ran)) if ran > 0 else wall


def _others_of(asking: float, got: float | None, cores: int) -> float:
    """Cores' worth of other programs' computing: what the run delay of calls alone says they
    asked for (``asking``: :func:`_others_asking`), or what the system counted them using
    (``got``; None: unknown), whichever is more (a program that keeps one of two cores busy
    makes a call alone wait for nothing); under :data:`BUSY_CORES`, none (the system's own
    chores). Programs that got less than half the other cores left cores idle, and made no
    call wait: the calls' run delay was then the scheduler's (a tenth of a call's time
    waiting reads as 70 busy cores on 64), and only what they got counts."""
    if got is not None and got < (cores - 1) / 2:
        asking = 0.0
    others = max(asking, got or 0.0)
    return others if others >= BUSY_CORES else 0.0


def _others_asking(
    alone: list[Record], delays: list[float], together: list[Record], together_delays: list[float]
) -> float:
    """Cores' worth of computing other programs asked for beside the calls ``alone`` (their
    run ``delays``), all but the first: one thread beside ``others`` that compute gets
    cores/(1 + others) of the cores, so waits that share of the time it is runnable (its CPU
    time and its run delay). No wait tells nothing beyond "fewer than the cores less one";
    under :data:`BUSY` of it, the scheduler's noise on a quiet machine. No more than the calls
    together waited, where they did (a re-decision's probe follows a run's last calls, which
    make the calls alone wait as other programs would)."""
    share = _runnable_waited(list(zip(alone, delays, strict=False))[1:])
    if together_delays:
        share = min(share, _runnable_waited(list(zip(together, together_delays, strict=False))))
    if share < BUSY:
        return 0.0
    return _machine.cores() / (1 - min(0.9, share)) - 1


def _runnable_waited(pairs: list[tuple[Record, float]]) -> float:
    """The share of the time calls (records, run delays) were runnable that they waited for a
    core (0 under :data:`BUSY_SAMPLE` of it)."""
    waited = sum(d for _, d in pairs)
    runnable = sum(r[2] for r, _ in pairs) + waited
    return waited / runnable if runnable >= BUSY_SAMPLE else 0.0


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
