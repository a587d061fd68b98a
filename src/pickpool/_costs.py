"""The cost model's shared half: what the evidence means for any model that runs the calls.

Each model predicts its own seconds for a batch (``predict`` in its backend module, found
through the registry); they all read the same :class:`Costs`: the probe's evidence, the
machine, the batch's size and the caller's options, and what those mean for a call run
``k`` at once (:meth:`Costs.view`: the GIL it holds, its native pools capped to fit the cores,
the floor that no parallel model beats). With ``t`` the wall time of a call alone, ``c`` its
CPU time, ``g`` the time it holds the GIL, ``P`` usable cores and ``N`` workers, each model's
time per item is its slowest stage::

    serial     t
    threads    max(t/N, c/P, g + hand-off)            g from the scaling test or the knocker
    asyncio    max(t/N, b + task)                     b: what a coroutine blocks its loop for
    processes  max(parent, worker/N, all CPU/P)       parent: bookkeeping, pickling, pipe

plus each model's start-up and the last chunk's tail. The constants are pickpool's own costs,
measured on a 2-core Linux machine with CPython 3.11 (``benchmarks/overhead.py``,
``benchmarks/auto.py``); what the probe measures of the user's function dominates them
whenever parallelism matters. Nothing here runs anything: it is arithmetic on the evidence.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from . import _chunks, _native
from ._machine import Machine
from ._readings import RAMP_FAILING, RAMP_TOLERANCE, Evidence

if TYPE_CHECKING:
    from ._options import Options

# One coroutine run to the end on a worker's own event loop (an async def outside asyncio).
LOOP_CALL: Final = 30e-6
# Starting one thread of a pool.
THREAD_START: Final = 0.2e-3
# Unpickling takes about twice as long as pickling.
LOADS_PER_DUMPS: Final = 2.0
# Seconds to hand a call to a thread and take its result back, at least: the probe times no
# shorter call side by side (see _probe.Pilot._exhausted_or_enough), so no speedup is measured.
HANDOFF: Final = 5e-6
# A call that computes (at least COMPUTES of it on the CPU) and that the knocker saw holding
# the GIL at least CLEARLY_HELD of the time holds it throughout, as pure Python does: the
# probe runs no calls side by side then (threads cannot help), and the cost model gives
# threads no overlap either. (Beside busy programs the knocker reads pure Python's hold as
# low as 0.63-0.8: read as it stood, threads x8 were predicted 1.3x a loop on it.)
CLEARLY_HELD: Final = 0.7
COMPUTES: Final = 0.8
# A share of its time a coroutine blocks the loop that counts as blocking it.
LOOP_BLOCKED: Final = 0.1
# A more complex option is taken over a simpler one only if it is faster by more than this:
# no pickling, fewer moving parts, and the prediction is no better than that.
TIE: Final = 1.05
# Efficiency under this share of what the cores allow: the calls queue on something (a
# threshold that held in measurements). Above it, a busy machine's noise is as likely as a limit.
QUEUED_EFFICIENCY: Final = 0.6


@dataclass(frozen=True, slots=True)
class Option:
    """One model, sized, with its predicted seconds."""

    model: str
    workers: int
    chunksize: int
    seconds: float
    per_item: float = 0.0  # seconds per item once running: the pace auto watches for drift
    inner: int | None = None  # threads per native pool it assumes (None: as they are)


def better(best: Option | None, new: Option) -> Option:
    """The better of two sizings of one model: ``new`` only if it is faster by more than a
    near tie (fewer workers on a near tie: the prediction is no finer than that)."""
    if best is None or new.seconds < best.seconds / TIE:
        return new
    return best


def usable(demand: float, cores: int, others: float) -> float:
    """The most cores threads asking for ``demand`` cores' worth at once compute on, beside
    ``others`` cores' worth of other programs' computing: what they ask, up to the machine's
    ``cores``, less what the others take (the scheduler shares the cores among the threads
    that can run: ``demand`` beside ``others`` gets demand/(demand + others) of them).

    Under one core's worth counts as one: a thread that computes part of the time computes at
    a whole thread's share while it does. Over the cores counts as the cores: more computing
    threads than cores would take a larger share from the other programs (32 threads beside
    two busy programs get 1.9 of 2 cores), and pickpool does not oversubscribe the cores to
    outrun them."""
    demand = min(float(cores), max(1.0, demand))
    return demand * min(1.0, cores / (demand + others))


def quiet_scaling(ev: Evidence, machine: Machine) -> float | None:
    """The scaling test's reading as a quiet machine would give it. Beside other programs'
    computing, n threads free of the GIL gain usable(n)/usable(1) over one thread, not
    min(n, cores) (two threads beside two busy programs on two cores: 1.5x); a reading in
    that narrower range is stretched onto the quiet one, so that the GIL is not blamed for
    the cores the other programs hold. Calls that compute part of the time ask that share of
    a core each, and a thread's worth or less is not narrowed at all; a reading past the
    narrower range is of calls that wait, which other programs do not slow: at least the
    quiet one's."""
    s, n, others = ev.scaling, ev.threads, ev.others
    if s is None or not n or others <= 0 or s <= 1:
        return s  # (no gain is no gain on any machine)
    quiet = min(n, machine.cores)
    share = ev.demand_share
    busy = usable(n * share, machine.cores, others) / usable(share, machine.cores, others)
    if busy <= 1 or busy >= quiet:
        return s
    if s > busy:
        return max(s, float(quiet))  # (past what computing allows there: the calls wait too)
    return 1 + (s - 1) * (quiet - 1) / (busy - 1)


def _serialised(ev: Evidence, machine: Machine) -> float | None:
    """Seconds per item the scaling test could not beat, if its calls queued on something."""
    scaling = quiet_scaling(ev, machine)
    if scaling is None or not ev.threads:
        return None
    t, c, n = ev.wall, ev.cpu, ev.threads
    measured = t / scaling  # seconds per item with n threads
    bound = max(t / n, c / min(n, machine.cores))
    return measured if measured * QUEUED_EFFICIENCY > bound else None


def gil_free(ev: Evidence, machine: Machine) -> bool:
    """Whether the calls compute free of the GIL: a build without one, or the knocker saw it
    held less than 30% of the time."""
    return not machine.gil or (ev.gil_held is not None and ev.gil_held < 0.3)


def clearly_gil_bound(gil_held: float | None, cpu_share: float) -> bool:
    """Whether calls that compute ``cpu_share`` of their time, seen holding the GIL
    ``gil_held`` of it, hold it throughout (see :data:`CLEARLY_HELD`)."""
    return gil_held is not None and gil_held >= CLEARLY_HELD and cpu_share >= COMPUTES


def gil_time(ev: Evidence, machine: Machine) -> float:
    """Seconds of each call during which it holds the GIL (threads cannot overlap those)."""
    t, c = ev.wall, ev.cpu
    if not machine.gil:
        return 0.0
    if ev.scaling is None and clearly_gil_bound(ev.gil_held, ev.cpu_share):
        return c
    knocked = None if ev.gil_held is None else min(t, ev.gil_held * t)
    if knocked is not None and ev.gil_held is not None and ev.gil_held < 0.3:
        # A low reading is mostly the knocker's noise: a thread holds the GIL only while it runs.
        knocked = min(knocked, c)
    queued = _serialised(ev, machine)
    if queued is not None:
        # The calls queued on something. The knocker tells whether it is the GIL; if it is
        # not, it is something processes share too (see shared_floor).
        return knocked if knocked is not None and gil_free(ev, machine) else queued
    scaling = quiet_scaling(ev, machine)
    if scaling is not None:
        return min(t / scaling, c if knocked is None else knocked)
    if knocked is not None:
        return knocked
    return c  # no evidence: assume computing holds the GIL, as pure Python does


def gil_share(ev: Evidence, machine: Machine) -> float:
    """How much of its computing a call does holding the GIL, 0..1, for telling kinds apart."""
    if not machine.gil:
        return 0.0
    if ev.gil_held is not None:
        return ev.gil_held / max(ev.cpu_share, ev.gil_held, 1e-9)
    scaling = quiet_scaling(ev, machine)
    if scaling is not None and ev.threads:
        # 1x with n threads: held throughout; the ideal min(n, cores)x: never held.
        ideal = min(ev.threads, machine.cores)
        if ideal > 1:
            return min(1.0, max(0.0, (ideal - scaling) / (ideal - 1)))
    return 1.0  # no evidence: assume pure Python


def shared_floor(ev: Evidence, machine: Machine) -> float:
    """Seconds per item no parallel model beats: calls that queue on something not the GIL.

    Memory bandwidth, a lock, a disk or a server: when threads free of the GIL still do not
    scale, processes would meet the same limit.
    """
    queued = _serialised(ev, machine)
    return queued if queued is not None and gil_free(ev, machine) else 0.0


def thread_counts(cores: int) -> set[int]:
    """Thread counts worth predicting: from the cores up to the largest pool, 64."""
    return {cores, 2 * cores, 4 * cores, 8, 16, 32, 64}


@dataclass(frozen=True, slots=True)
class View:
    """One call as an option runs it, ``calls`` at once: its native pools capped or not."""

    ev: Evidence  # wall, CPU of the calling thread and GIL reading of such a call
    cpu: float  # CPU of the whole process per call, its native threads included
    g: float  # seconds of it holding the GIL
    floor: float  # seconds per item no parallel model beats (see shared_floor)
    inner: int | None  # threads per native pool (None: as they are)


def _interpolate(one: float, full: float, k: int, pool: int) -> float:
    """A call's cost with ``k`` threads per pool, from its cost with 1 and with ``pool``.

    Amdahl's law makes the time linear in 1 - 1/k: exact at both ends, and where more threads
    made the call slower (spinning, memory), it says so in between as well.
    """
    if pool <= 1 or k >= pool:
        return full
    return one + (full - one) * (1 - 1 / k) / (1 - 1 / pool)


class Costs:
    """What the evidence means for ``n`` items on ``machine``, under the caller's ``options``:
    the context each model's prediction reads. (Named so that "model" keeps one meaning in
    pickpool: serial, threads, processes...)"""

    def __init__(self, ev: Evidence, machine: Machine, n: int, options: Options) -> None:
        self.ev, self.m, self.n = ev, machine, n
        self.workers, self.chunksize, self.timeout = (
            options.workers,
            options.chunksize,
            options.timeout,
        )
        self.max_concurrency = options.max_concurrency
        self.inner_threads = options.inner_threads
        self.g = gil_time(ev, machine)
        self.floor = shared_floor(ev, machine)
        self._views: dict[int | None, View] = {}

    def counts(self, candidates: set[int], n: int | None = None) -> list[int]:
        """The worker counts to predict: the caller's, or those of ``candidates`` up to ``n``
        (the items, by default) and ``max_concurrency``."""
        if self.workers is not None:
            return [self.workers]
        most = max(1, self.n if n is None else n)
        counts = sorted(k for k in candidates if 1 <= k <= most) or [1]
        if self.max_concurrency is None:
            return counts
        return [k for k in counts if k <= self.max_concurrency] or [self.max_concurrency]

    def chunk(self, workers: int, target: float) -> int:
        """The chunk a prediction with ``workers`` assumes: the caller's, 1 under a timeout,
        else about ``target`` seconds of calls (``_chunks.advised``)."""
        if self.timeout is not None:
            return 1
        if self.chunksize is not None:
            return self.chunksize
        ev = self.ev
        return _chunks.advised(
            target=target,
            wall=ev.wall,
            items=self.n,
            workers=workers,
            item_bytes=ev.item_bytes + ev.result_bytes,
        )

    def view(self, calls: int) -> View:
        """What one call costs with ``calls`` calls at once, their native pools capped to fit."""
        limit = _native.limit_for(self.inner_threads, calls, cores=self.m.cores)
        view = self._views.get(limit)
        if view is None:
            view = self._views[limit] = self._make_view(limit)
        return view

    def _make_view(self, limit: int | None) -> View:
        ev, m = self.ev, self.m
        # As measured alone: with threads of its own, all of them count against the cores,
        # however few (a library's one helper thread computes on the same cores).
        all_cpu = max(ev.cpu, ev.process_cpu or 0.0)
        pool = max((p.threads for p in ev.pools if p.cappable), default=0)
        if limit is None or ev.capped_wall is None or ev.capped_cpu is None or pool < 2:
            return View(ev, all_cpu, self.g, self.floor, limit)
        k = min(limit, pool)
        # Capped, the calling thread does the pools' work: its CPU time is the call's.
        one_cpu = min(ev.capped_cpu, ev.capped_wall)
        wall = _interpolate(ev.capped_wall, ev.wall, k, pool)
        cpu = _interpolate(one_cpu, all_cpu, k, pool)
        gil = ev.capped_gil if ev.capped_gil is not None else ev.gil_held
        capped = dataclasses.replace(ev, wall=wall, cpu=min(wall, cpu), gil_held=gil)
        return View(capped, cpu, gil_time(capped, m), shared_floor(capped, m), k)

    def usable(self, demand: float) -> float:
        """Cores that calls asking for ``demand`` cores' worth at once get beside the other
        programs the probe met (see :func:`usable`). Every model reads its cores here, so
        that none is given a quiet machine's cores while another is measured on a busy one."""
        return usable(demand, self.m.cores, self.ev.others)

    def computing(self, view: View, k: int) -> float:
        """Seconds per item the computing of ``k`` calls at once takes on the cores they get:
        the calls' own CPU, their native threads' and their child processes', none of which
        runs faster than the cores allow."""
        return self.on_cores(view.cpu + self.ev.child_cpu, view.ev.wall, k)

    def on_cores(self, cpu: float, wall: float, k: int) -> float:
        """Seconds per item that ``cpu`` seconds of computing in each call of ``wall`` seconds
        take, ``k`` calls at once, on the cores they get (asking cores' worth k x cpu/wall)."""
        return cpu / self.usable(k * cpu / max(wall, 1e-12))

    def stretch(self, view: View) -> float:
        """A call's wall time (as ``view`` runs it) beside the other programs: the part its
        thread computes takes longer, at one thread's share of the cores; its waits do not."""
        computed = min(view.ev.cpu, view.ev.wall)
        return view.ev.wall + self.one_core(computed) - computed

    def one_core(self, seconds: float) -> float:
        """``seconds`` of computing on one thread (the one holding the GIL, an event loop's),
        as long as they take beside other programs' computing."""
        return seconds / self.usable(1.0)

    def as_measured(self, k: int) -> float:
        """Seconds per item with ``k`` threads, no better than the scaling test's n threads
        allow.

        Fewer than n: efficiency falls as threads are added, so k < n threads do at least as
        well per thread, but how much better is unknown: when the n threads hit a limit, the
        model cannot tell how few would hit it too, and is kept from trading measured
        throughput for a guess. As many or more, when the n threads already had every core
        computing: more threads share the same cores, so none does better than the n did
        (on free-threaded 3.13, threads that count references to one shared object, such as
        a function's numeric constant, read 1.5x on two cores where processes run 1.9x).
        """
        ev = self.ev
        scaling = quiet_scaling(ev, self.m)
        if scaling is None or not ev.threads:
            return 0.0
        if k < ev.threads:
            efficiency = min(1.0, scaling / ev.threads)
            return ev.wall / (k * efficiency)
        if ev.threads >= self.m.cores and ev.cpu_share >= COMPUTES:
            return ev.wall / scaling
        return 0.0

    def past_the_knee(self, k: int) -> float:
        """Seconds per item with ``k`` calls at once, from where the probe's ramp broke.

        Latency that grew at n at once means the far side serves no faster there: no k beyond
        it does better than n did. Calls that failed at n would fail more at k >= n.
        """
        ramp = self.ev.ramp
        if not ramp:
            return 0.0
        n, latency, failed = ramp[-1]
        refused = failed > RAMP_FAILING
        if k < n or (latency <= RAMP_TOLERANCE * self.ev.wall and not refused):
            return 0.0
        return math.inf if refused else latency / n

    def unmeasured(self, wall: float) -> float:
        """Seconds per item threads are held to when calls of ``wall`` seconds are too short
        to be timed side by side (under :data:`HANDOFF`, so no speedup was measured): as a
        plain loop's, GIL or none. Without a GIL (3.13t) the hand-off and the reference
        counts the threads share cost more than such a call: 100,000 calls of 0.1 µs took
        15 ms on 2 threads against 10 ms in a loop."""
        ev = self.ev
        if ev.is_async or ev.scaling is not None or ev.wall >= HANDOFF:
            return 0.0
        return wall

    def coroutine_call(self) -> float:
        """What running one call costs beyond its own time when it is a coroutine that a
        worker runs on an event loop of its own (0 for a plain function)."""
        return LOOP_CALL if self.ev.is_async else 0.0
