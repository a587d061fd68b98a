"""The probe's instruments: each call's clocks, and a watcher of the GIL.

:class:`Timed` wraps the user's function so that every call appends its :data:`Record`; the
:class:`Knocker` measures how much of the time some other thread holds the GIL. ``_probe``
plans the phases that use them, ``_readings`` sums up what they measured.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

# (start, wall seconds, CPU seconds of the calling thread, CPU seconds of the whole process)
# of one call. Alone, the process's CPU time is the call's own with its native threads (BLAS):
# 2 s of it in 1 s of wall time is a call that used two cores.
#
# The wall time leaves out what the calling thread spent runnable, waiting for a core that
# other programs held (its run delay, see SchedStat): on a busy machine a call that computes
# would otherwise read as one that waits, and waiting looks like work more threads would hide.
Record = tuple[float, float, float, float]

_Clocks = tuple[float, float, float, float]


# Calls shorter than this are not read their run delay: reading it costs ~1.5 µs (a system
# call) twice a call, which would be most of a tiny call's time, and a call this short is
# rarely preempted (the median of several leaves out the one that was).
DELAY_WORTH_READING = 1e-4


def clocks(delay: bool = True) -> _Clocks:
    """Wall, this thread's CPU and the process's CPU clocks, and this thread's run delay (-1
    unless ``delay``), now."""
    return (
        time.perf_counter(),
        time.thread_time(),
        time.process_time(),
        _run_delay() if delay else -1.0,
    )


def since(began: _Clocks, *, net: bool = True, delays: list[float] | None = None) -> Record:
    """The :data:`Record` of a call that began at ``began`` (see :func:`clocks`): with
    ``net``, its run delay left out of its wall time; the run delay is appended to
    ``delays``, if given. With no run delay read, its wall time is all that passed."""
    start, cpu, all_cpu, delay = began
    wall, cpu_now, all_now, delay_now = clocks(delay >= 0)
    elapsed = wall - start
    if delay >= 0:
        waited = delay_now - delay
        if delays is not None:
            delays.append(waited)
        if net:
            # (Never below the thread's CPU time: the two counts are read apart, a little.)
            elapsed = max(elapsed - waited, min(elapsed, cpu_now - cpu))
    return start, elapsed, cpu_now - cpu, all_now - all_cpu


_threads_stat = threading.local()


def _run_delay() -> float:
    """Seconds the calling thread has waited, runnable, for a core (0 where unknown)."""
    stat = getattr(_threads_stat, "stat", None)
    if stat is None:
        # One per thread, closed with it (the thread's locals go when it ends).
        stat = _threads_stat.stat = SchedStat()
    return stat.read()[1]


class Timed:
    """``fn`` with each call's wall, thread CPU and process CPU time appended to ``records``;
    a :class:`Knocker`, if given, is told when each call runs. ``net``: wall times leave out
    the run delay (calls alone, as a quiet machine would run them); False for calls timed
    together, whose pace beside each other is what is measured. Each call's run delay is
    appended to ``delays`` if given."""

    __slots__ = ("delay", "delays", "fn", "knocker", "net", "records")

    def __init__(
        self,
        fn: Callable[[Any], Any],
        records: list[Record],
        knocker: Knocker | None = None,
        *,
        net: bool = True,
        delays: list[float] | None = None,
    ) -> None:
        self.fn = fn
        self.records = records
        self.knocker = knocker
        self.net = net
        self.delays = delays
        # Whether calls are read their run delay (not once one is tiny).
        self.delay = net or delays is not None

    def __call__(self, item: Any) -> Any:
        knocker = self.knocker
        if knocker is not None:
            knocker.enter()
        began = clocks(self.delay)
        try:
            return self.fn(item)
        finally:
            self._record(since(began, net=self.net, delays=self.delays))
            if knocker is not None:
                knocker.leave()

    def _pickpool_release_state(self) -> Any:
        """The timed function's (a worker's state is closed when its probe phase ends)."""
        release = getattr(self.fn, "_pickpool_release_state", None)
        return None if release is None else release()

    def _record(self, record: Record) -> None:
        self.records.append(record)
        if record[1] < DELAY_WORTH_READING:
            self.delay = False


class Batched(Timed):
    """:class:`Timed` for calls too short to time one by one (the clocks cost a few
    microseconds, more than such a call): one :data:`Record` for every ``size`` calls in a row,
    its figures per call, the clocks' cost spread over them. A batch that a failure breaks
    is not recorded (a failing call's time says nothing of the others'). The first
    :data:`SAMPLES` items and their results are kept in :attr:`samples` (to time their
    pickling: the calls' outcomes are not looked at one by one)."""

    __slots__ = ("_began", "_count", "samples", "size")

    SAMPLES = 24

    def __init__(self, fn: Callable[[Any], Any], records: list[Record], *, size: int) -> None:
        super().__init__(fn, records)
        self.size = size
        self.samples: list[tuple[Any, Any]] = []
        self._count = 0
        self._began: _Clocks = (0.0, 0.0, 0.0, -1.0)

    def __call__(self, item: Any) -> Any:
        if self._count == 0:
            self._began = clocks()
        try:
            result = self.fn(item)
        except BaseException:
            self._count = 0
            raise
        if len(self.samples) < self.SAMPLES:
            self.samples.append((item, result))
        self._count += 1
        if self._count == self.size:
            self._count = 0
            _, wall, cpu, all_cpu = since(self._began)
            cost, n, own = overhead(), self.size, batched_overhead()
            self.records.append(
                (
                    self._began[0],
                    _net(_net(wall, cost[1]) / n, own),
                    _net(_net(cpu, cost[2]) / n, own),
                    _net(_net(all_cpu, cost[3]) / n, own),
                )
            )
        return result


@functools.cache
def batched_overhead() -> float:
    """What :class:`Batched` adds to each call it times, beyond what a loop pays to call the
    function (its own Python frame costs about as much as a tiny call): measured once per
    process, the best of a few runs of a function that does nothing, with and without it."""
    items = range(1000)
    plain = wrapped = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        list(map(_nothing, items))
        t1 = time.perf_counter()
        list(map(Batched(_nothing, [], size=sys.maxsize), items))
        t2 = time.perf_counter()
        plain, wrapped = min(plain, t1 - t0), min(wrapped, t2 - t1)
    return max(0.0, wrapped - plain) / len(items)


def typical_batched(records: list[Record]) -> tuple[float, float, float]:
    """(wall, cpu, process cpu) of a typical call, from :class:`Batched` records: the median
    batch's, none left out (each batch is many calls, the first's warm-up a small part)."""
    return (
        statistics.median(r[1] for r in records),
        statistics.median(r[2] for r in records),
        statistics.median(r[3] for r in records),
    )


class AsyncTimed(Timed):
    """:class:`Timed` for a coroutine function (CPU time is the loop thread's over the await)."""

    __slots__ = ()

    async def __call__(self, item: Any) -> Any:
        knocker = self.knocker
        if knocker is not None:
            knocker.enter()
        began = clocks(self.delay)
        try:
            return await self.fn(item)
        finally:
            self._record(since(began, net=self.net, delays=self.delays))
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
    Waiting for the GIL is a sleep on a condition variable, which that count leaves out. The
    thread that starts the knocker (the one whose calls are measured) is watched the same way:
    preempted while it holds the GIL, it holds it longer than its code needs, and what it
    waited for a core then is not the call's hold either.

    With ``calls=True`` only the time inside calls counts (:meth:`enter` and :meth:`leave`
    mark them): what runs between calls (the consumer of the results, the probe's own
    bookkeeping, a first import of the pickler) holds the GIL too, but is not the call's.
    A nap counts from a call's start, less the time it spent between calls.
    """

    NAP = 0.0005
    # Past this share of the time watched spent waiting for a core (the knocker's and the
    # measured thread's run delay), what is left to read is too little, and too mixed with the
    # two waits' overlaps, to tell a held GIL from a free one: no reading. Beside two and four
    # busy processes on two cores, pure Python's calls spent 0.77-0.89 of it so and read
    # 19-50% held (it holds it throughout); zlib's, which releases it, 0.19-0.44, read ~0%.
    MOST_DELAYED = 0.65

    def __init__(self, *, calls: bool = False) -> None:
        self._stop = threading.Event()
        self._late = 0.0
        self._watched = 0.0
        self._delayed = 0.0  # of the time watched, waiting for a core (either thread)
        self._spent = 0.0  # the time watched, waits for a core included
        self._baseline = 0.0
        self._thread: threading.Thread | None = None
        self._holder: SchedStat | None = None  # the measured thread's counts
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
        self._holder = SchedStat()
        self._thread = threading.Thread(target=self._run, name="pickpool-knocker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        nap, baseline = self.NAP, self._baseline
        queued, holder = SchedStat(), self._holder
        assert holder is not None
        try:
            while not self._stop.is_set():
                watching = not self._calls or self._inside > 0
                between = self._between
                t0 = time.perf_counter()
                q0, h0 = queued.read()[1], holder.read()[1]
                time.sleep(nap)
                woke = time.perf_counter()
                waited_for_core = queued.read()[1] - q0
                held_up = holder.read()[1] - h0  # (the measured thread's wait for a core)
                if not watching:
                    continue
                elapsed = woke - t0
                if self._calls:
                    # Time between calls is not a call's, whoever held the GIL in it.
                    between = self._between - between
                    if self._inside == 0:
                        between += woke - self._left_at
                    elapsed -= min(elapsed, max(0.0, between))
                # (The larger of the two waits, not their sum: on a busy machine they overlap,
                # and their sum took a held GIL's lateness off too; pure Python beside four
                # busy processes read 1-16% held. A free GIL makes the knocker late by its
                # own wait alone, which either takes off.)
                waited = max(waited_for_core, held_up)
                self._late += max(0.0, elapsed - nap - baseline - waited)
                self._delayed += min(elapsed, waited_for_core + held_up)
                self._spent += elapsed
                # Watched as a quiet machine would have run the measured thread: the share is
                # of a call's wall time, which leaves out its run delay too (see Record).
                self._watched += max(0.0, elapsed - held_up)
        finally:
            queued.close()

    def stop(self) -> tuple[float, float]:
        """(held share 0..1, seconds watched); no seconds watched where waits for a core
        took most of the time (see :data:`MOST_DELAYED`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._holder is not None:
            self._holder.close()
        if self._watched <= 0:
            return 0.0, 0.0
        if self._delayed > self.MOST_DELAYED * self._spent:
            return 0.0, 0.0
        switch = sys.getswitchinterval()
        full = switch / (switch + self.NAP)  # what a GIL held throughout reads
        return min(1.0, self._late / self._watched / full), self._watched


# Past this share of its time waiting for a core, a computing thread's timings are a busy
# machine's (doctor and the demo say so).
BUSY_SHARE = 0.2


def waiting_for_a_core(seconds: float = 0.1) -> float | None:
    """The share of its time a thread that computes for ``seconds`` of CPU spends runnable,
    waiting for a core that other programs hold (None where the kernel does not say)."""
    stat = SchedStat()
    try:
        if not stat.known:
            return None
        ran, waited = stat.read()
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass
        ran_now, waited_now = stat.read()
    finally:
        stat.close()
    total = (ran_now - ran) + (waited_now - waited)
    return round((waited_now - waited) / total, 2) if total > 0 else 0.0


class ProcessDemand:
    """A clock of the process's CPU seconds, plus the seconds its threads waited, runnable,
    for a core: what it would have computed with cores free. Each reading adds what every
    thread alive waited since the last one (a thread that ends takes its own count with it:
    a plain sum over the threads alive would go back). Where the system has no such counts,
    its CPU seconds alone."""

    __slots__ = ("_last", "_waited")

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._waited = 0.0

    def __call__(self) -> float:
        try:
            threads = os.listdir("/proc/self/task")
        except OSError:
            return time.process_time()
        now: dict[str, float] = {}
        for tid in threads:
            try:
                with open(f"/proc/self/task/{tid}/schedstat", "rb") as stat:
                    now[tid] = int(stat.read().split()[1]) / 1e9
            except (OSError, ValueError, IndexError):
                continue  # (a thread that ended meanwhile)
        for tid, waited in now.items():
            before = self._last.get(tid, 0.0)
            # (A smaller count: a new thread that took an ended one's id.)
            self._waited += waited - before if waited >= before else waited
        self._last = now
        return time.process_time() + self._waited


class Elsewhere:
    """Cores' worth of computing by other programs since it was made: the busy time the
    system counts for the CPUs this process may use (``/proc/stat``), less this process's
    own CPU time and its finished children's. What the others got, not what they asked for:
    beside this process's threads they get less (the calls' run delay tells the rest).

    Unknown (None) without those counts, and where the process's cores are fewer than the
    CPUs it may run on (a cgroup quota: the other CPUs' time is not what it shares)."""

    __slots__ = ("_began", "_cpus", "_margin")

    def __init__(self, cores: int) -> None:
        self._cpus = _own_cpus(cores)
        # The system counts busy time in clock ticks: a CPU's count can be a tick short at
        # either end (on two CPUs over 50 ms, 0.4 cores' worth), and a reading is not taken
        # for more than it can tell.
        self._margin = len(self._cpus or ()) / _TICKS
        self._began = self._read()

    def cores(self, least: float) -> float | None:
        """The others' cores since it was made, once ``least`` seconds have passed."""
        now = self._read()
        if now is None or self._began is None or now[0] - self._began[0] < least:
            return None
        wall, busy, own = (b - a for a, b in zip(self._began, now, strict=True))
        return max(0.0, busy - own - self._margin) / wall

    def _read(self) -> tuple[float, float, float] | None:
        """(wall clock, the CPUs' busy seconds, this process's and its children's CPU)."""
        if self._cpus is None:
            return None
        wall = time.perf_counter()
        try:
            with open("/proc/stat", "rb") as stat:
                lines = stat.read().split(b"\n")
        except OSError:
            return None
        busy = 0
        for line in lines:
            fields = line.split()
            if fields and fields[0][3:].isdigit() and int(fields[0][3:]) in self._cpus:
                # user nice system idle iowait irq softirq steal: all but idle and iowait.
                ticks = [int(f) for f in fields[1:9]]
                busy += sum(ticks) - ticks[3] - ticks[4]
        times = os.times()
        own = time.process_time() + times.children_user + times.children_system
        return wall, busy / _TICKS, own


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _own_cpus(cores: int) -> set[int] | None:
    """The CPUs this process may run on, if they are all its ``cores`` (None otherwise)."""
    if not hasattr(os, "sched_getaffinity") or not os.path.exists("/proc/stat"):
        return None
    cpus = os.sched_getaffinity(0)
    return cpus if len(cpus) == cores else None


class SchedStat:
    """The calling thread's scheduler counts, readable from any thread while it lives: seconds
    on a core, and seconds waiting, runnable, for one (``/proc/thread-self/schedstat``; zeros
    where there is none: :attr:`known` is then False).

    Their sum is the time the thread wanted a core: what it computed, and what it would have
    computed on a machine with a core free. A thread that sleeps, or waits for a lock or the
    GIL, adds to neither.
    """

    __slots__ = ("_fd",)

    def __init__(self) -> None:
        self._fd: int | None = None
        try:
            self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            self.read()
        except (OSError, ValueError, IndexError):
            self.close()

    @property
    def known(self) -> bool:
        return self._fd is not None

    def read(self) -> tuple[float, float]:
        """(seconds on a core, seconds waiting for one)."""
        if self._fd is None:
            return 0.0, 0.0
        # "<ns on a core> <ns waiting for one> <timeslices>"
        fields = os.pread(self._fd, 128, 0).split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        self.close()


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


def children_cpu() -> float:
    """CPU seconds of this process's finished, waited-for child processes (0 where unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@functools.cache
def overhead() -> Record:
    """What :class:`Timed` itself adds to each record it makes (its clocks are system calls):
    the median of a few hundred calls of a function that does nothing. A fact of the machine,
    measured once per process (it costs under a millisecond); a call of a microsecond would
    otherwise be read as several."""
    records: list[Record] = []
    timed = Timed(_nothing, records)
    for _ in range(300):
        timed(None)
    return (
        0.0,
        statistics.median(r[1] for r in records),
        statistics.median(r[2] for r in records),
        statistics.median(r[3] for r in records),
    )


def _nothing(item: Any) -> None:
    return None


def _net(value: float, cost: float) -> float:
    """A measured ``value`` less the timer's ``cost``; never below a twentieth of it (the
    timer's cost varies a little from call to call)."""
    return max(value - cost, 0.05 * value)


def typical_process_cpu(records: list[Record]) -> float:
    """The whole process's CPU time in a typical call (as :func:`typical` picks: of two calls,
    the faster one's, not their mean, which a first call's warm-up would make), less what
    timing it cost."""
    if not records:
        return 0.0
    if len(records) < 3:
        cpu = min(records, key=lambda r: r[1])[3]
    else:
        cpu = statistics.median(r[3] for r in records[1:])
    return _net(cpu, overhead()[3])


def typical(records: list[Record]) -> tuple[float, float]:
    """(wall, cpu) of a typical call: the median, leaving out the first (warm-up) of 3 or more,
    less what timing it cost."""
    if not records:
        return 0.0, 0.0
    if len(records) < 3:
        best = min(records, key=lambda r: r[1])
        wall, cpu = best[1], best[2]
    else:
        rest = records[1:]
        wall, cpu = statistics.median(r[1] for r in rest), statistics.median(r[2] for r in rest)
    _, wall_cost, cpu_cost, _ = overhead()
    return _net(wall, wall_cost), _net(cpu, cpu_cost)
