"""From evidence to advice: a cost model that predicts each model's seconds for the batch.

With ``t`` the wall time of a call alone, ``c`` its CPU time, ``g`` the time it holds the GIL,
``P`` usable cores and ``N`` workers, each model's time per item is its slowest stage::

    serial     t
    threads    max(t/N, c/P, g + hand-off)            g from the scaling test or the knocker
    asyncio    max(t/N, b + task)                     b: what a coroutine blocks its loop for
    processes  max(parent, worker/N, all CPU/P)       parent: bookkeeping, pickling, pipe

plus each model's start-up and the last chunk's tail. The constants below are pickpool's own
costs, measured on a 2-core Linux machine with CPython 3.11 (``benchmarks/overhead.py``,
``benchmarks/auto.py``); what the probe measures of the user's function dominates them
whenever parallelism matters.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from . import _machine, _reasons
from ._inner import LEAVE, InnerThreads
from ._probe import RAMP_FAILING, RAMP_TOLERANCE
from ._readings import Evidence

Kind = Literal["cpu", "cpu-nogil", "blocking-io", "async-io", "tiny", "mixed"]

SERIAL_ITEM: Final = 1.5e-6  # the driver's bookkeeping per item
THREADS_ITEM: Final = 2.5e-6  # the same under threads, GIL held
THREADS_CHUNK: Final = 15e-6  # a chunk's queue hand-off and wake-up, GIL held
THREAD_START: Final = 0.2e-3
ASYNC_ITEM: Final = 8e-6  # one task on the loop, with its bookkeeping
LOOP_START: Final = 1e-3
MAX_COROUTINES: Final = 100_000
INTERPRETER_START: Final = 20e-3  # a sub-interpreter and its thread (measured on 3.13: 19 ms)
DASK_TASK: Final = 1e-3  # what the scheduler and the client spend on each task
LOOP_BLOCKED: Final = 0.1  # a share of its time a coroutine blocks the loop that counts
TO_THREAD_ITEM: Final = 60e-6  # a plain function under asyncio: the loop's trip to a thread
LOOP_CALL: Final = 30e-6  # one coroutine run to the end on a worker's own loop
PROCESS_ITEM: Final = 2.6e-6  # the parent's bookkeeping per item
PROCESS_CHUNK: Final = 25e-6  # a chunk's trip to a worker and back
PIPE_BYTE: Final = 1.5e-9  # seconds per byte through a worker's pipe, paid at both ends
LOADS_PER_DUMPS: Final = 2.0  # unpickling takes about twice as long as pickling
PIPELINED_BYTES: Final = 16 * 1024  # larger chunks wait for an idle worker
WORKER_START: Final = {"fork": 3e-3, "forkserver": 4e-3, "spawn": 80e-3}
FORK_SERVER_START: Final = 70e-3
WORKER_STOP: Final = 1e-3
# A process chunk should run this long, so that its trip (~25 µs) is lost in it.
PROCESS_CHUNK_SECONDS: Final = 5e-3
THREAD_CHUNK_SECONDS: Final = 0.5e-3
MAX_CHUNK_BYTES: Final = 16 * 1024 * 1024
# A simpler model within this much of the fastest one is preferred: no pickling, fewer moving
# parts, and the prediction is no better than that.
TIE: Final = 1.05
# Predictions for an input of unknown length are for this many items.
UNKNOWN_LENGTH: Final = 1000
TINY: Final = 1e-3
QUEUED_EFFICIENCY: Final = 0.6  # under ~10x a pool round trip: parallelism rarely pays

# On a near tie, the first of these: fewer moving parts, no pickling, one machine.
_ORDER_SYNC: Final = ("serial", "threads", "asyncio", "processes", "interpreters", "dask")
_ORDER_ASYNC: Final = ("serial", "asyncio", "threads", "processes", "interpreters", "dask")


@dataclass(frozen=True, slots=True)
class Cluster:
    """An active dask cluster, as the cost model sees it."""

    threads: int  # worker threads across the cluster
    round_trip: float  # seconds for a trivial task, submit to result


@dataclass(frozen=True, slots=True)
class Machine:
    """The facts about this machine that the cost model needs."""

    cores: int
    gil: bool  # False on a free-threaded build running without it
    start_method: str
    server_running: bool
    interpreters: bool = False  # concurrent.futures.InterpreterPoolExecutor (3.14+)
    cluster: Cluster | None = None  # an active dask client's cluster

    @classmethod
    def here(cls) -> Machine:
        from ._backends import _interpreters

        return cls(
            cores=_machine.cores(),
            gil=_machine.gil_enabled(),
            start_method=_machine.start_method(),
            server_running=_machine.fork_server_running(),
            interpreters=_interpreters.available(),
            cluster=_active_cluster(),
        )


def _active_cluster() -> Cluster | None:
    """The active dask client's cluster, measured; None without one (dask is not imported)."""
    if "distributed" not in sys.modules:
        return None  # nobody started a client without importing distributed
    from ._backends import _dask

    try:
        client = _dask.active_client()
    except Exception:
        return None
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        client.submit(_noop, pure=False).result()
        best = min(best, time.perf_counter() - start)
    return Cluster(threads=_dask.cluster_threads(client), round_trip=best)


def _noop() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Option:
    """One model, sized, with its predicted seconds."""

    model: str
    workers: int
    chunksize: int
    seconds: float
    per_item: float = 0.0  # seconds per item once running: the pace auto watches for drift
    inner: int | None = None  # threads per native pool it assumes (None: as they are)


@dataclass(frozen=True)
class Advice:
    """Which model to run a batch on, with how many workers and chunks, and why.

    ``model``, ``workers`` and ``chunksize`` are what to pass to :func:`pickpool.map`
    (:attr:`options` holds them as keyword arguments). ``kind`` names the work:
    ``"cpu"`` (holds the GIL), ``"cpu-nogil"`` (C code that releases it), ``"blocking-io"``,
    ``"async-io"``, ``"tiny"`` (too short for parallelism to pay) or ``"mixed"``.
    ``predicted`` maps each model to its predicted seconds for :attr:`items` items (``sizes``,
    to the workers and chunk size each prediction assumed; ``pace``, the advised model's
    seconds per item once running), ``evidence`` holds the measurements, ``reasons`` says why
    in sentences.

    Example::

        >>> advice = pickpool.advise(crunch, range(200))
        >>> advice.model, advice.kind
        ('processes', 'cpu')
        >>> pickpool.map(crunch, range(200), **advice.options)
    """

    model: str
    workers: int
    chunksize: int
    kind: Kind
    evidence: Evidence
    predicted: Mapping[str, float]
    reasons: tuple[str, ...]
    items: int
    sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict, repr=False)
    pace: float = field(default=0.0, repr=False)  # predicted seconds per item once running
    # Threads per native pool (BLAS, OpenMP...) in each call under the advised model, and
    # under each model (None: the pools as they are).
    inner_threads: int | None = None
    inner: Mapping[str, int | None] = field(default_factory=dict, repr=False)

    @property
    def options(self) -> dict[str, Any]:
        """``model``, ``workers``, ``chunksize`` (and a cap on native thread pools, if the
        advice caps them) as keyword arguments for ``map``."""
        options: dict[str, Any] = {
            "model": self.model,
            "workers": self.workers,
            "chunksize": self.chunksize,
        }
        if self.inner_threads is not None:
            options["inner_threads"] = self.inner_threads
        return options

    def __str__(self) -> str:
        lines = [
            f"Use model={self.model!r} with workers={self.workers}, chunksize={self.chunksize}"
            f" ({_KIND_TEXT[self.kind]})."
        ]
        lines += [f"  - {reason}" for reason in self.reasons]
        lines.append(f"  Predicted for {self.items:,} items:")
        for model, seconds in sorted(self.predicted.items(), key=lambda kv: kv[1]):
            workers, chunk = self.sizes.get(model, (0, 0))
            sizing = f"{_reasons.plural(workers, 'worker')}, chunks of {chunk}" if workers else ""
            inner = self.inner.get(model)
            if inner is not None and self.evidence.pools:
                sizing += f", {_reasons.plural(inner, 'thread')} per native pool"
            mark = "  <- advised" if model == self.model else ""
            lines.append(f"    {model:<10} {_reasons.format_seconds(seconds):>10}   {sizing}{mark}")
        return "\n".join(lines)


_KIND_TEXT: Final[dict[str, str]] = {
    "cpu": "CPU-bound, holding the GIL",
    "cpu-nogil": "CPU-bound in code that releases the GIL",
    "blocking-io": "mostly blocking waits",
    "async-io": "coroutines that mostly await",
    "tiny": "calls too short for parallelism to pay",
    "mixed": "a mix of computing and waiting",
}


def _serialised(ev: Evidence, machine: Machine) -> float | None:
    """Seconds per item the scaling test could not beat, if its calls queued on something."""
    if ev.scaling is None or not ev.threads:
        return None
    t, c, n = ev.wall, ev.cpu, ev.threads
    measured = t / ev.scaling  # seconds per item with n threads
    bound = max(t / n, c / min(n, machine.cores))
    # Efficiency under 0.6 of what the cores allow: the calls queue on something (a threshold
    # that held in measurements). Above it, a busy machine's noise is as likely as a limit.
    return measured if measured * QUEUED_EFFICIENCY > bound else None


def gil_free(ev: Evidence, machine: Machine) -> bool:
    return not machine.gil or (ev.gil_held is not None and ev.gil_held < 0.3)


def gil_time(ev: Evidence, machine: Machine) -> float:
    """Seconds of each call during which it holds the GIL (threads cannot overlap those)."""
    t, c = ev.wall, ev.cpu
    if not machine.gil:
        return 0.0
    knocked = None if ev.gil_held is None else min(t, ev.gil_held * t)
    if knocked is not None and ev.gil_held is not None and ev.gil_held < 0.3:
        # A low reading is mostly the knocker's noise: a thread holds the GIL only while it runs.
        knocked = min(knocked, c)
    queued = _serialised(ev, machine)
    if queued is not None:
        # The calls queued on something. The knocker tells whether it is the GIL; if it is
        # not, it is something processes share too (see shared_floor).
        return knocked if knocked is not None and gil_free(ev, machine) else queued
    if ev.scaling is not None:
        return min(t / ev.scaling, c if knocked is None else knocked)
    if knocked is not None:
        return knocked
    return c  # no evidence: assume computing holds the GIL, as pure Python does


def gil_share(ev: Evidence, machine: Machine) -> float:
    """How much of its computing a call does holding the GIL, 0..1, for telling kinds apart."""
    if not machine.gil:
        return 0.0
    if ev.gil_held is not None:
        return ev.gil_held / max(ev.cpu_share, ev.gil_held, 1e-9)
    if ev.scaling is not None and ev.threads:
        # 1x with n threads: held throughout; the ideal min(n, cores)x: never held.
        ideal = min(ev.threads, machine.cores)
        if ideal > 1:
            return min(1.0, max(0.0, (ideal - ev.scaling) / (ideal - 1)))
    return 1.0  # no evidence: assume pure Python


def shared_floor(ev: Evidence, machine: Machine) -> float:
    """Seconds per item no parallel model beats: calls that queue on something not the GIL.

    Memory bandwidth, a lock, a disk or a server: when threads free of the GIL still do not
    scale, processes would meet the same limit.
    """
    queued = _serialised(ev, machine)
    return queued if queued is not None and gil_free(ev, machine) else 0.0


def _thread_counts(cores: int) -> set[int]:
    """Thread counts worth predicting: from the cores up to the largest pool, 64."""
    return {cores, 2 * cores, 4 * cores, 8, 16, 32, 64}


def _counts(candidates: set[int], given: int | None, n: int) -> list[int]:
    if given is not None:
        return [given]
    return sorted(k for k in candidates if 1 <= k <= max(1, n)) or [1]


# A call alone that keeps this many cores busy runs threads of its own (BLAS, OpenMP...).
PARALLEL_CALL: Final = 1.2


@dataclass(frozen=True, slots=True)
class _View:
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


# (Long on purpose: the cost model: one prediction method per model, sharing the evidence.)
class _Costs:
    """The cost model for one piece of evidence on one machine, for ``n`` items: each model's
    predicted seconds (``options()``). (Named so that "model" keeps one meaning in pickpool:
    serial, threads, processes...)"""

    def __init__(
        self,
        ev: Evidence,
        machine: Machine,
        n: int,
        *,
        workers: int | None,
        chunksize: int | None,
        timeout: float | None,
        inner_threads: InnerThreads = None,
        max_concurrency: int | None = None,
    ) -> None:
        self.ev, self.m, self.n = ev, machine, n
        self.max_concurrency = max_concurrency
        self.workers, self.chunksize, self.timeout = workers, chunksize, timeout
        self.inner_threads = inner_threads
        self.g = gil_time(ev, machine)
        self.floor = shared_floor(ev, machine)
        self._views: dict[int | None, _View] = {}

    def _counts(self, candidates: set[int], given: int | None, n: int) -> list[int]:
        counts = _counts(candidates, given, n)
        if self.max_concurrency is None:
            return counts
        return [k for k in counts if k <= self.max_concurrency] or [self.max_concurrency]

    def inner_limit(self, calls: int) -> int | None:
        """Threads per native pool with ``calls`` calls at once (as ``_inner.limit_for``)."""
        wish = self.inner_threads
        if wish == LEAVE:
            return None
        if isinstance(wish, int):
            return wish
        return None if calls <= 1 else max(1, self.m.cores // calls)

    def view(self, calls: int) -> _View:
        """What one call costs with ``calls`` calls at once, their native pools capped to fit."""
        limit = self.inner_limit(calls)
        view = self._views.get(limit)
        if view is None:
            view = self._views[limit] = self._make_view(limit)
        return view

    def _make_view(self, limit: int | None) -> _View:
        ev, m = self.ev, self.m
        parallel = ev.cores_used >= PARALLEL_CALL
        # As measured alone: with threads of its own, all of them count against the cores.
        all_cpu = max(ev.cpu, ev.process_cpu or 0.0) if parallel else ev.cpu
        pool = max((p.threads for p in ev.pools if p.cappable), default=0)
        if limit is None or ev.capped_wall is None or ev.capped_cpu is None or pool < 2:
            return _View(ev, all_cpu, self.g, self.floor, limit)
        k = min(limit, pool)
        # Capped, the calling thread does the pools' work: its CPU time is the call's.
        one_cpu = min(ev.capped_cpu, ev.capped_wall)
        wall = _interpolate(ev.capped_wall, ev.wall, k, pool)
        cpu = _interpolate(one_cpu, all_cpu, k, pool)
        gil = ev.capped_gil if ev.capped_gil is not None else ev.gil_held
        capped = dataclasses.replace(ev, wall=wall, cpu=min(wall, cpu), gil_held=gil)
        return _View(capped, cpu, gil_time(capped, m), shared_floor(capped, m), k)

    def chunk(self, model: str, workers: int) -> int:
        if self.timeout is not None:
            return 1
        if self.chunksize is not None:
            return self.chunksize
        ev, n = self.ev, self.n
        if model == "processes":
            target = PROCESS_CHUNK_SECONDS
        elif model == "threads":
            target = THREAD_CHUNK_SECONDS
        else:
            return 1
        size = math.ceil(target / max(ev.wall, 1e-7))
        size = min(size, math.ceil(n / (4 * workers)))
        per_item = ev.item_bytes + ev.result_bytes
        if per_item:
            size = min(size, MAX_CHUNK_BYTES // per_item)
        return max(1, size)

    def _fewer_than_measured(self, k: int) -> float:
        """Seconds per item with ``k`` threads, fewer than the scaling test ran, at its efficiency.

        The test saw n threads scale ``scaling``x. Efficiency falls as threads are added, so k < n
        threads do at least as well per thread, but how much better is unknown: when the n
        threads hit a limit, the model cannot tell how few would hit it too, and is kept from
        trading measured throughput for a guess.
        """
        ev = self.ev
        if ev.scaling is None or not ev.threads or k >= ev.threads:
            return 0.0
        efficiency = min(1.0, ev.scaling / ev.threads)
        return ev.wall / (k * efficiency)

    def _past_the_knee(self, k: int) -> float:
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

    def serial(self) -> Option:
        view = self.view(1)
        extra = LOOP_CALL if self.ev.is_async else 0.0
        per = view.ev.wall + SERIAL_ITEM + extra
        return Option("serial", 1, 1, self.n * per, per, view.inner)

    def threads(self) -> Option:
        cores = self.m.cores
        extra = LOOP_CALL if self.ev.is_async else 0.0
        best: Option | None = None
        for k in self._counts(_thread_counts(cores), self.workers, self.n):
            view = self.view(k)
            ev = view.ev
            ch = self.chunk("threads", k)
            per = max(
                (ev.wall + extra) / k,
                (view.cpu + ev.child_cpu) / cores,
                view.g + extra + THREADS_ITEM + THREADS_CHUNK / ch,
                view.floor,
                self._fewer_than_measured(k),
            )
            per = max(per, self._past_the_knee(k))
            seconds = k * THREAD_START + self.n * per + (ch - 1) * ev.wall
            best = _better(best, Option("threads", k, ch, seconds, per, view.inner))
        assert best is not None
        return best

    def asyncio(self) -> Option:
        ev, cores = self.ev, self.m.cores
        best: Option | None = None
        if ev.is_async:
            blocks = ev.cpu
            if ev.loop_blocked is not None and ev.loop_blocked >= LOOP_BLOCKED:
                # It blocks the loop (time.sleep, computing): for as long as that share says.
                # Below it, the together phase's slowdown is mostly the far side's (a server
                # under load), and what a coroutine costs the loop is its own CPU time.
                blocks = max(blocks, ev.loop_blocked * ev.wall)
            # Little's law: enough coroutines waiting that the loop is never idle while one
            # of them is away, twice over; bounded, since each costs ~1 kB while it waits.
            little = min(MAX_COROUTINES, self.n, math.ceil(2 * ev.wall / (blocks + ASYNC_ITEM)))
            for k in self._counts({little}, self.workers, self.n):
                per = max(ev.wall / k, blocks + ASYNC_ITEM)
                best = _better(best, Option("asyncio", k, 1, LOOP_START + self.n * per, per))
        else:
            for k in self._counts(_thread_counts(cores), self.workers, self.n):
                view = self.view(k)
                per = max(
                    view.ev.wall / k,
                    (view.cpu + ev.child_cpu) / cores,
                    view.g + TO_THREAD_ITEM,
                    view.floor,
                    self._past_the_knee(k),
                )
                seconds = LOOP_START + k * THREAD_START + self.n * per
                best = _better(best, Option("asyncio", k, 1, seconds, per, view.inner))
        assert best is not None
        return best

    def processes(self, model: str = "processes") -> Option:
        """Worker processes; or, as ``model="interpreters"``, sub-interpreters, which pickle
        alike but start in a thread (~20 ms each) with no fork server."""
        ev, m = self.ev, self.m
        if ev.unpicklable:
            return Option(model, m.cores, 1, math.inf)
        pipe = (ev.item_bytes + ev.result_bytes) * PIPE_BYTE
        candidates = set(range(1, m.cores + 1))
        if ev.cpu < ev.wall / 1.5:
            # Waiting too: more processes than cores keep the cores busy (Little's law).
            candidates |= {2 * m.cores, 4 * m.cores}
        start_each = WORKER_START.get(m.start_method, WORKER_START["spawn"])
        server = 0.0 if m.server_running or m.start_method != "forkserver" else FORK_SERVER_START
        if model == "interpreters":
            start_each, server = INTERPRETER_START, 0.0
        best: Option | None = None
        for k in self._counts(candidates, self.workers, self.n):
            view = self.view(k)
            wall = view.ev.wall + (LOOP_CALL if ev.is_async else 0.0)
            ch = self.chunk("processes", k)
            parent = (
                PROCESS_ITEM
                + PROCESS_CHUNK / ch
                + ev.item_pickle
                + LOADS_PER_DUMPS * ev.result_pickle
                + pipe
            )
            unpickle = LOADS_PER_DUMPS * ev.item_pickle + ev.result_pickle
            worker = wall + unpickle + pipe
            cpu = view.cpu + ev.child_cpu + unpickle + parent
            # Threads that compute free of the GIL and still do not scale may queue on what
            # processes share too (memory bandwidth), or on what they do not: GIL hand-offs
            # between many short sections (scikit-learn's fits), one address space's page
            # faults and allocator. Measured, processes won such cases: the floor binds them
            # only for calls that wait (a server, a disk, a lock between processes).
            floor = view.floor if ev.cpu_share < 0.5 else 0.0
            per = max(parent, worker / k, cpu / m.cores, floor, self._past_the_knee(k))
            if (ev.item_bytes + ev.result_bytes) * ch > PIPELINED_BYTES:
                # Large chunks are not queued behind a busy worker: parent and workers
                # partly take turns.
                per += 0.5 * min(parent, worker / k)
            # The function is pickled once and sent down each worker's pipe, where it is
            # loaded: what it closes over (a 60 MB table) is paid per worker, not per item.
            ship = ev.fn_pickle + k * ev.fn_bytes * PIPE_BYTE + LOADS_PER_DUMPS * ev.fn_pickle
            fixed = server + k * (start_each + WORKER_STOP) + ship
            seconds = fixed + self.n * per + 0.5 * ch * wall
            best = _better(best, Option(model, k, ch, seconds, per, view.inner))
        assert best is not None
        return best

    def dask(self, cluster: Cluster) -> Option:
        """Chunks as tasks of a dask cluster: its threads, its round trip per chunk, and the
        parent's pickling; chunks long enough to hide the round trip 20 times over."""
        ev = self.ev
        if ev.unpicklable:
            return Option("dask", cluster.threads, 1, math.inf)
        k = self.workers or cluster.threads
        wall = ev.wall + (LOOP_CALL if ev.is_async else 0.0)
        ch = self.chunksize or (1 if self.timeout is not None else 0)
        if not ch:
            ch = max(1, min(math.ceil(20 * cluster.round_trip / max(wall, 1e-7)), -(-self.n // k)))
        pickling = ev.item_pickle + LOADS_PER_DUMPS * ev.result_pickle
        per = max(
            (wall + cluster.round_trip / ch) / k,
            DASK_TASK / ch + pickling,  # the scheduler and this process, per task and item
        )
        seconds = 2 * cluster.round_trip + self.n * per + 0.5 * ch * wall
        return Option("dask", k, ch, seconds, per)

    def options(self) -> dict[str, Option]:
        options = {
            "serial": self.serial(),
            "threads": self.threads(),
            "processes": self.processes(),
            "asyncio": self.asyncio(),
        }
        if self.m.interpreters:
            options["interpreters"] = self.processes("interpreters")
        if self.m.cluster is not None:
            options["dask"] = self.dask(self.m.cluster)
        return options


def _better(best: Option | None, new: Option) -> Option:
    # Fewer workers on a near tie: the prediction is no finer than that.
    if best is None or new.seconds < best.seconds / TIE:
        return new
    return best


def choose(options: Mapping[str, Option], *, is_async: bool) -> Option:
    """The fastest option, or a simpler one within :data:`TIE` of it."""
    fastest = min(options.values(), key=lambda o: o.seconds)
    for model in _ORDER_ASYNC if is_async else _ORDER_SYNC:
        option = options.get(model)
        if option is not None and option.seconds <= fastest.seconds * TIE:
            return option
    return fastest


def classify(ev: Evidence, machine: Machine, chosen: Option) -> Kind:
    """The kind of work, from the evidence (and, for ``"tiny"``, from what won)."""
    share = ev.cpu_share
    if ev.is_async and share < 0.5 and (ev.loop_blocked is None or ev.loop_blocked < 0.5):
        return "async-io"
    if (
        chosen.model == "serial"
        and ev.wall < TINY
        and ev.item_pickle + ev.result_pickle < max(ev.wall, 20e-6)
    ):
        return "tiny"  # (when pickling is what rules processes out, the work is not tiny)
    if share >= 0.7:
        return "cpu" if gil_share(ev, machine) >= 0.5 else "cpu-nogil"
    if share <= 0.3:
        return "blocking-io"
    return "mixed"


def _paced(option: Option, rate: float, wall: float, n: int) -> Option:
    """``option`` with no more than ``rate`` calls starting a second: no faster than ``n /
    rate`` in all, and no more workers than keep that pace (Little's law, with room for
    calls that take longer than the probe's)."""
    if math.isinf(option.seconds):
        return option
    per_item = max(option.per_item, 1.0 / rate)
    workers = min(option.workers, max(1, math.ceil(1.5 * rate * wall)))
    return dataclasses.replace(
        option,
        seconds=max(option.seconds, n / rate),
        per_item=per_item,
        workers=workers,
        chunksize=1,
    )


# Models that run a plain function on this process's own threads.
_SAME_THREADS: Final = ("threads", "asyncio")


def decide(
    ev: Evidence,
    *,
    items: int | None,
    workers: int | None = None,
    chunksize: int | None = None,
    timeout: float | None = None,
    inner_threads: InnerThreads = None,
    observed: Mapping[str, float] | None = None,
    max_concurrency: int | None = None,
    max_rate: float | None = None,
    machine: Machine | None = None,
) -> Advice:
    """The :class:`Advice` for running ``items`` more items like the probed ones.

    ``observed``: seconds per item a model was seen to take in this very run, when it ran
    slower than predicted; no prediction for that model is better than what it did.
    ``max_rate``: calls start at most this many a second, whatever the model.
    """
    machine = machine or Machine.here()
    n = UNKNOWN_LENGTH if items is None else max(1, items)
    costs = _Costs(
        ev,
        machine,
        n,
        workers=workers,
        chunksize=chunksize,
        timeout=timeout,
        inner_threads=inner_threads,
        max_concurrency=max_concurrency,
    )
    options = costs.options()
    seen = dict(observed or {})
    if not ev.is_async:
        # A plain function under asyncio runs on the loop's threads: what threads were seen
        # to do (the GIL, native pools fighting for the cores, a slowing server), asyncio
        # would do too, and the other way round.
        for name in _SAME_THREADS:
            seen[name] = max(seen.get(other, 0.0) for other in _SAME_THREADS)
    for name, pace in seen.items():
        option = options.get(name)
        if option is not None and pace > option.per_item:
            options[name] = dataclasses.replace(
                option, seconds=option.seconds + n * (pace - option.per_item), per_item=pace
            )
    if max_rate is not None:
        options = {name: _paced(o, max_rate, ev.wall, n) for name, o in options.items()}
    chosen = choose(options, is_async=ev.is_async)
    kind = classify(ev, machine, chosen)
    return Advice(
        model=chosen.model,
        workers=chosen.workers,
        chunksize=chosen.chunksize,
        kind=kind,
        evidence=ev,
        predicted={name: o.seconds for name, o in options.items()},
        reasons=tuple(_reasons.reasons(ev, machine, options, chosen, kind, n, items is None)),
        items=n,
        sizes={name: (o.workers, o.chunksize) for name, o in options.items()},
        pace=chosen.per_item,
        inner_threads=chosen.inner,
        inner={name: o.inner for name, o in options.items()},
    )


# Explaining it -----------------------------------------------------------------------------
