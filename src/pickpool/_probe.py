"""The probe's phase policy: which phases measure the user's function, on how many items.

The probe never calls the function on made-up input, and never twice on one item: it runs the
first real items through the ordinary driver, so errors, retries and timeouts behave as in any
run and every result is kept. Its phases take their items from the run's input
(``_cursor.Cursor``), time each call (``_timing``) and leave what they measured in
``_readings.Readings``, which ends as :class:`~pickpool._readings.Evidence`:

1. ``alone``: one call at a time, while a *knocker* thread measures how much of the time the GIL
   is held; again with native thread pools capped at one thread, if calls alone kept several
   cores busy;
2. ``together``: several calls at once (threads for a plain function, one event loop for a
   coroutine function) to measure how throughput scales; or, for calls that mostly wait, a
   ramp of 2, 8, 32 at once while their latency holds.

:class:`Pilot` hands each phase to its caller to run (``drive`` or ``adrive``) and decides
whether the next phase is worth its cost. What to make of the evidence is ``_advise``'s business.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from . import _machine, _native
from ._backends import COROUTINES, LOOP, THREADS, Setup
from ._costs import HANDOFF, clearly_gil_bound
from ._cursor import Cursor, Source
from ._native import InnerThreads
from ._options import Options
from ._plan import Plan
from ._readings import PARALLEL_CALL, RAMP_FAILING, RAMP_TOLERANCE, Evidence, Readings
from ._schedule import Block, Done
from ._task import OK
from ._timing import (
    AsyncTimed,
    Batched,
    Knocker,
    Record,
    Timed,
    batched_overhead,
    children_cpu,
    overhead,
    typical,
    typical_batched,
    typical_process_cpu,
)

# The alone phase stops once it has seen this much of a run that is mostly waiting: waiting
# is measured faster and better together.
WAITING_SHARE = 0.3
# Below this much watched time the knocker's reading is noise.
_KNOCKER_MIN = 0.01
_MAX_PROBE_THREADS = 16
# Calls that wait are run up to this many at once, fourfold, while their latency stays within
# RAMP_TOLERANCE times its value alone and no more than RAMP_FAILING of them fail.
_MAX_RAMP_THREADS = 32
# advise's share: its only job is to measure, so it may take a larger part of the batch.
ADVISE_SHARE = 0.1
_MAX_PROBE_COROUTINES = 16
# Calls alone shorter than this are timed again in batches of many in a row: one by one, the
# clocks' own cost (a few microseconds) and its jitter are most of what is measured. The
# batches run BATCHES at a time, about BATCHED_SECONDS of calls in all, at most BATCHED_MAX
# (a caller that takes results one by one pays microseconds for each).
BATCH_BELOW = 20e-6
BATCHES = 8
BATCHED_SECONDS = 0.002
BATCHED_MAX = 2048


@dataclass(frozen=True, slots=True)
class Phase:
    """Items to run under ``plan`` (with a timing ``setup``), numbered from ``start``."""

    name: str  # "alone", "together" or "run"
    plan: Plan
    setup: Setup
    items: Source
    start: int
    # Its results may come as blocks (_schedule.Block): nothing reads them one by one.
    blocks: bool = False


class _Allowance:
    """How much of the input, and of the time budget, the probe may take.

    ``share``: the part of the whole batch's serial time the alone phase may take (auto keeps
    it small; ``advise``, whose only job is to measure, may take more).
    """

    def __init__(self, cursor: Cursor, *, budget: float, share: float, is_async: bool) -> None:
        self.cursor = cursor
        self.budget = budget
        self.share = share
        self.is_async = is_async
        # A probe that starts mid-run (auto re-deciding after a drift) starts at the first item
        # not run yet.
        self.first = cursor.taken
        self.length = cursor.length
        self._began = time.perf_counter()

    def spent(self) -> float:
        """Seconds since the probe began."""
        return time.perf_counter() - self._began

    def alone_target(self, wall: float) -> float:
        """How long the alone phase should run, given the time of one call."""
        total = math.inf if self.length is None else (self.length - self.first) * wall
        target = min(self.share * total, 0.35 * self.budget)
        if wall < HANDOFF and not self.is_async:
            # No together phase follows (see _exhausted_or_enough): a few milliseconds give
            # the time per call and the pickling, which is all the cost model needs.
            return 0.002
        if wall < 20e-6:
            # Calls this short take milliseconds to time: just enough for the knocker to tell
            # whether they hold the GIL, which settles whether running them together can pay.
            target = min(target, 1.2 * _KNOCKER_MIN)
        return max(target, 0.002)

    def item_cap(self) -> int:
        """The most items the probe may take: a small part of a known batch."""
        if self.length is None:
            return sys.maxsize
        if self.share >= ADVISE_SHARE:
            return self.length - self.first  # advise: measuring is all it does
        return max(4, math.ceil(0.1 * (self.length - self.first)))

    def room(self) -> int:
        """How many more items the probe may take."""
        cap = self.item_cap()
        room = cap - (self.cursor.taken - self.first) if cap != sys.maxsize else sys.maxsize
        left = self.cursor.remaining()
        return room if left is None else min(room, left)

    def alone_allows(
        self, records: list[Record], enough_after_one: Callable[[Record], bool]
    ) -> Callable[[], bool]:
        """Whether the alone phase takes another item, given its ``records`` so far."""
        cap = self.item_cap()
        typical_now: list[tuple[float, float]] = []  # the last estimate, redone as calls add up
        began = time.perf_counter()

        def allow() -> bool:
            n = len(records)
            if self.cursor.taken - self.first >= cap or (
                self.length is not None and n >= 3 and 2 * n >= self.length - self.first
            ):
                return False  # (and half a known batch is left to run together)
            elapsed = time.perf_counter() - began
            if n < 2:
                # A second call shows what the first one's warm-up (imports, caches) hid,
                # unless the first alone took most of the budget, or clearly waited: the
                # ramp that follows times waiting calls again, two at once.
                if n == 0:
                    return True
                if enough_after_one(records[0]):
                    return False
                # A first call that mostly computed may be all warm-up (an import, a cache
                # filled once, read as CPU): a second one while the whole budget allows, as a
                # busy machine stretches a cold call past the alone phase's share of it.
                _, wall, cpu, all_cpu = records[0]
                computed = wall > 0 and max(cpu, all_cpu) >= 0.5 * wall
                return elapsed < (self.budget if computed else 0.35 * self.budget)
            if n <= 16 or n % 64 == 0 or not typical_now:
                # (A median per call would cost tiny calls more than the calls themselves.)
                typical_now[:] = [typical(records)]
            wall, cpu = typical_now[0]
            if elapsed >= 0.35 * self.budget:
                return False
            if wall > 0 and cpu / wall < WAITING_SHARE:
                return False  # mostly waiting: together tells more, sooner
            return n < 3 or elapsed < self.alone_target(wall)

        return allow


# (Long on purpose: the phase policy: three kinds of phase, each sized to what is known.)
class Pilot:
    """Plans the probe's phases, one after the other, over the items of ``cursor``.

    ``budget`` and ``share``: see :class:`_Allowance`. ``ramp``: False when
    the run's limiter ramps calls that wait itself. :attr:`evidence` is set once the last
    phase has run.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        cursor: Cursor,
        *,
        is_async: bool,
        budget: float,
        share: float,
        options: Options,
        ramp: bool = True,
    ) -> None:
        self.fn = fn
        self.cursor = cursor
        self.is_async = is_async
        self.options = options
        self.ramp = ramp
        overhead()  # (measured once per process, before the probe's clock starts)
        self.allowance = _Allowance(cursor, budget=budget, share=share, is_async=is_async)
        self.readings = Readings(fn, is_async, cursor.length, options.timeout)
        self.evidence: Evidence | None = None

    def saw(self, done: Done | Block) -> None:
        """Note one finished item of a probe phase (a phase with ``blocks`` measures its
        calls itself)."""
        if type(done) is Done:
            self.readings.saw(done)

    def phases(self) -> Generator[Phase, None, None]:
        """The probe's phases; each is yielded once the one before it has run to the end."""
        readings = self.readings
        yield from self._alone_phase()
        # (Tiny first: a call of microseconds cannot keep native threads busy, and the process's
        # CPU clock over it reads whatever other threads of the program did meanwhile.)
        if self._tiny():
            yield from self._batched_phases()
        elif self._inner_parallel():
            yield from self._alone_phase(capped=True)
        if not self._exhausted_or_enough():
            if self._waits():
                if self.ramp:
                    yield from self._ramp()
            elif self._may_run_together():
                together = self._together_phase()
                if together is not None:
                    yield together
                    readings.read_together()
        self.evidence = readings.evidence()

    # What the readings so far say ---------------------------------------------------------

    def _clearly_waiting(self, record: Record) -> bool:
        """A call that spent under a tenth of its time on the CPU, long enough to matter."""
        _, wall, cpu, all_cpu = record
        return not self.is_async and wall > 1e-3 and max(cpu, all_cpu) < 0.1 * wall

    def _may_run_together(self) -> bool:
        """Whether calls may be timed side by side here: not where the options keep the run
        off this process's threads (a global an initializer sets, shared by them, would mean
        something else there than where the calls will run)."""
        fits = self.options.models()
        return fits is None or (COROUTINES if self.is_async else THREADS) in fits

    def _waits(self) -> bool:
        """Whether calls alone mostly waited (on a server, a disk, a child process), rather
        than for threads of their own that computed meanwhile."""
        alone = self.readings.alone
        wall, cpu = typical(alone)
        cpu = max(cpu, typical_process_cpu(alone))
        return not self.is_async and wall > 0 and cpu / wall < WAITING_SHARE

    def _inner_parallel(self) -> bool:
        """Whether calls alone kept more than one core busy, with native pools that can be
        capped: then a few more calls alone, capped, show what those threads are worth."""
        alone = self.readings.alone
        left = self.cursor.remaining()
        if (
            self.is_async
            or self.options.inner_threads is not None  # the caller's cap holds in every model
            or self.options.workers == 1
            or self.cursor.exhausted
            or len(alone) < 2
            or _machine.cores() < 2
        ):
            return False
        wall = typical(alone)[0]
        if left is not None and left * wall < 0.01:
            return False  # too little left for any other model to pay
        used = typical_process_cpu(alone) / wall if wall > 0 else 0.0
        if used < PARALLEL_CALL:
            return False
        self.readings.pools = pools = tuple(_native.pools())
        return any(p.cappable and p.threads > 1 for p in pools)

    def _tiny(self) -> bool:
        """Whether calls alone were too short to time one by one, and may run in batches
        (not where each item must go alone: a timeout or a rate)."""
        alone = self.readings.alone
        return (
            not self.is_async
            and bool(alone)
            and not self.cursor.exhausted
            and not self.options.one_by_one
            and typical(alone)[0] < BATCH_BELOW
        )

    def _exhausted_or_enough(self) -> bool:
        readings = self.readings
        if self.cursor.exhausted or not readings.alone:
            return True
        if self.options.workers == 1:
            return True  # the caller allows one at a time: nothing to scale
        wall, cpu = readings.typical()
        share = cpu / wall if wall > 0 else 1.0
        gil = readings.capped_gil if readings.capped else readings.gil
        # Clearly GIL-bound computing: threads cannot help, and the knocker has shown it.
        if clearly_gil_bound(gil, share) and not self.is_async:
            return True
        # A call shorter than handing it to a thread: threads cannot gain, and processes are
        # judged from this phase alone.
        if wall < HANDOFF and not self.is_async:
            return True
        # So little work left that running it together cannot save what measuring costs.
        left = self.cursor.remaining()
        return left is not None and left * wall < 0.01

    # The phases ---------------------------------------------------------------------------

    def _plan(self, model: str, workers: int, chunksize: int | None) -> Plan:
        return self.options.plan(
            model, is_async=self.is_async, workers=workers, chunksize=chunksize, adaptive=False
        )

    def _setup(
        self,
        records: list[Record],
        plan: Plan,
        *,
        knocker: Knocker | None = None,
        inner_threads: InnerThreads = None,
        net: bool = True,
        delays: list[float] | None = None,
    ) -> Setup:
        """A setup for ``plan`` that runs the function timed, its records going to ``records``
        (``net`` and ``delays``: see :class:`~pickpool._timing.Timed`)."""
        timed = (AsyncTimed if self.is_async else Timed)(
            self.fn, records, knocker, net=net, delays=delays
        )
        return self._timed_setup(timed, plan, inner_threads)

    def _timed_setup(self, timed: Timed, plan: Plan, inner_threads: InnerThreads) -> Setup:
        """A setup for ``plan`` that runs ``timed``, native pools at ``inner_threads``."""
        setup = self.options.setup(timed, plan, is_async=self.is_async)
        return dataclasses.replace(setup, inner_threads=inner_threads)

    def _phase(self, name: str, plan: Plan, setup: Setup, most: int) -> Phase:
        """A phase of at most ``most`` items, from the next one."""
        return Phase(name, plan, setup, self.cursor.next(most), self.cursor.taken)

    def _alone_phase(self, *, capped: bool = False) -> Generator[Phase, None, None]:
        """One call at a time: as the caller's settings run it, or (``capped``) with every
        native thread pool at one thread, to see what the pools' threads bring."""
        readings = self.readings
        records = readings.capped if capped else readings.alone
        # A coroutine function runs on an event loop even alone, as it would under asyncio.
        model = COROUTINES if self.is_async else LOOP
        # A window of one: the next item is taken only once the last one is timed, so that the
        # phase stops as soon as it has seen enough.
        plan = dataclasses.replace(self._plan(model, 1, 1), window=1)
        knocker = Knocker(calls=True)
        inner = 1 if capped else self.options.inner_threads
        delays = None if capped else readings.alone_delays
        setup = self._setup(records, plan, knocker=knocker, inner_threads=inner, delays=delays)
        enough = _never if capped else self._clearly_waiting
        knocker.start()
        children = children_cpu()
        try:
            yield Phase(
                "alone",
                plan,
                setup,
                self.cursor.gate(self.allowance.alone_allows(records, enough)),
                self.cursor.taken,
            )
        finally:
            held, watched = knocker.stop()
        reading = held if watched >= _KNOCKER_MIN and records else None
        if capped:
            readings.capped_gil = reading
            return
        readings.gil = reading
        if records:
            readings.child_cpu = max(0.0, children_cpu() - children) / len(records)

    def _batched_phases(self) -> Generator[Phase, None, None]:
        """Tiny calls alone again, in :data:`BATCHES` batches of many calls in a row, as a
        plain loop runs them: sized first by the calls timed one by one (which the clocks'
        cost inflates; a quarter of :data:`BATCHED_MAX` at most), then, if that fell well
        short of :data:`BATCHED_SECONDS`, once more by what the batches measured (their
        records replace the first ones')."""
        readings = self.readings
        estimate = typical(readings.alone)[0]
        batched_overhead()  # (measured once per process, before any batch's clock starts)
        for most in (BATCHED_MAX // 4, BATCHED_MAX):
            wanted = math.ceil(BATCHED_SECONDS / max(estimate, 1e-8))
            size = min(self.allowance.room(), most, wanted) // BATCHES
            if size < 2:
                return
            n = size * BATCHES
            records: list[Record] = []
            # One chunk: the batches run back to back, with nothing of the driver's between.
            plan = dataclasses.replace(self._plan(LOOP, 1, n), window=n)
            timed = Batched(self.fn, records, size=size)
            setup = self._timed_setup(timed, plan, self.options.inner_threads)
            yield dataclasses.replace(self._phase("alone", plan, setup, n), blocks=True)
            for item, value in timed.samples:
                readings.saw(Done(-1, item, OK, value, None, 1))
            if not records:
                return
            readings.batched = records
            readings.batched_calls += len(records) * size
            estimate = typical_batched(records)[0]
            if self.cursor.exhausted or len(records) * size * estimate >= BATCHED_SECONDS / 2:
                return

    def _ramp(self) -> Generator[Phase, None, None]:
        """Calls that wait, run 2, 8, 32 at once (a round of that many calls each) while
        their latency holds: a far side with a finite capacity (a server's backlog, a pool of
        connections, a quota) shows its knee as latency that grows, or as failures."""
        readings = self.readings
        wall, cpu = typical(readings.alone)
        most = min(
            _MAX_RAMP_THREADS,
            self.options.workers or _MAX_RAMP_THREADS,
            self.options.max_concurrency or _MAX_RAMP_THREADS,
        )
        n = 2
        while n <= most and not self.cursor.exhausted:
            if self.allowance.room() < n or (
                readings.rounds and self.allowance.spent() > 0.3 * self.allowance.budget
            ):
                break
            records: list[Record] = []
            failed = readings.failed
            plan = self._plan(THREADS, n, 1)
            setup = self._setup(records, plan, inner_threads=self.options.inner_threads)
            yield self._phase("together", plan, setup, n)
            if not records:
                break
            readings.together += records
            latency = statistics.median(r[1] for r in records)
            share = (readings.failed - failed) / len(records)
            readings.rounds.append((n, latency, share))
            if len(readings.rounds) == 1:
                wall = min(wall, latency)  # (the one call alone may have warmed things up)
            own = own_queueing(wall, cpu, readings.gil, n, _machine.cores())
            if latency > RAMP_TOLERANCE * own or share > RAMP_FAILING:
                break
            readings.threads, readings.scaling = n, min(n, n * wall / latency)
            # Fourfold: each round costs about one call's time, and the run's limit goes on
            # doubling from where the ramp held.
            n *= 4

    def _together_phase(self) -> Phase | None:
        # Calls together run with their native pools capped to fit the cores, as a run would.
        readings = self.readings
        room = self.allowance.room()
        options = self.options
        if self.is_async:
            k = min(
                _MAX_PROBE_COROUTINES,
                room,
                options.workers or _MAX_PROBE_COROUTINES,
                options.max_concurrency or _MAX_PROBE_COROUTINES,
            )
            if k < 2:
                return None
            readings.coroutines = k
            plan = self._plan(COROUTINES, k, 1)
            # (One thread: the loop's. What its coroutines' span shows is how much they block
            # it, a core held by other programs left out, as for a call alone.)
            return self._phase("together", plan, self._setup(readings.together, plan), k)
        wall, cpu = readings.typical()
        cores = _machine.cores()
        # Enough threads that, if the GIL were free, the cores would be busy.
        wanted = max(2, cores, math.ceil(cores * wall / max(cpu, wall / 64)))
        n = min(
            _MAX_PROBE_THREADS,
            wanted,
            options.workers or _MAX_PROBE_THREADS,
            options.max_concurrency or _MAX_PROBE_THREADS,
            room,
        )
        if n < 2:
            return None
        target = min(0.2 * self.allowance.budget, max(0.02, 4 * wall))
        per_thread = max(1, min(1000, round(target / wall) if wall > 0 else 1000))
        per_thread = min(per_thread, room // n)
        readings.threads = n
        plan = self._plan(THREADS, n, per_thread)
        setup = self._setup(
            readings.together,
            plan,
            inner_threads=options.inner_threads,
            net=False,
            delays=readings.together_delays,
        )
        return self._phase("together", plan, setup, n * per_thread)


def own_queueing(wall: float, cpu: float, gil: float | None, n: int, cores: int) -> float:
    """The latency of ``n`` calls started at once (each ``wall`` seconds alone, ``cpu`` of it
    computing, the GIL held ``gil`` of the time) from sharing this process's GIL and the cores
    alone: what they serialise on, each waiting on average for half of the others' turns.

    Latency past it is a far side that queues them; up to it, the calls wait on each other
    (5 ms of Python then a 20 ms wait, 8 at once: ~42 ms each, with no far side at all).

    Example::

        >>> round(own_queueing(0.025, 0.005, 0.2, 8, 2), 4)
        0.0425
    """
    held = cpu if gil is None else min(cpu, gil * wall)  # one call at a time holds it
    turn = max(held, cpu / cores)
    return wall + (n - 1) / 2 * turn


def _never(record: Record) -> bool:
    return False
