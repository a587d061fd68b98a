"""A busy machine: other programs on the cores must not fool the probe.

A call that computes while other programs hold the cores is runnable but not running part of
the time (its run delay); read as waiting, it would be advised more workers than the cores.
These tests start their own spinning processes, as many as the usable cores, pinned where
pickpool runs, and stop them after.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import pickpool
from pickpool import _machine, _timing
from pickpool._probe import own_queueing
from tests.conftest import GIL


def crunch(n: int) -> int:
    """~10 ms of pure Python: it holds the GIL throughout."""
    total = 0
    for i in range(150_000):
        total += i * i % 7
    return total + n


@pytest.fixture
def busy() -> Iterator[None]:
    """Spinning processes, one per usable core, on the cores this process may use."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(_machine.usable_cores())
    ]
    try:
        # Past their start-up (an interpreter's imports), each spinning, before any probe.
        import psutil

        deadline = time.monotonic() + 10
        for p in spinners:
            proc = psutil.Process(p.pid)
            while proc.cpu_times().user < 0.05 and time.monotonic() < deadline:
                time.sleep(0.01)
        yield
    finally:
        for p in spinners:
            p.kill()
        for p in spinners:
            p.wait()


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("busy")
def test_a_call_that_computes_reads_as_computing_on_a_busy_machine() -> None:
    advice = pickpool.advise(crunch, range(300))
    assert advice.kind == ("cpu" if GIL else "cpu-nogil"), str(advice)
    assert advice.evidence.cpu_share > 0.8, str(advice)
    assert advice.workers <= _machine.usable_cores(), str(advice)


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("busy")
def test_other_programs_computing_are_counted_as_cores_they_take() -> None:
    # As many spinning processes as cores (and whatever else runs beside the suite): the
    # probe counts at least half of them, and every model is predicted on what is left, a
    # loop included (alone, a call gets cores/(1 + others) of a core, when that is less: its
    # computing takes at least cpu/share, and the whole call no less than it took).
    advice = pickpool.advise(crunch, range(300))
    ev = advice.evidence
    cores = _machine.usable_cores()
    assert ev.others >= 0.5 * cores, str(advice)
    share = min(1.0, cores / (1 + ev.others))
    least = max(ev.wall, ev.cpu / share)
    assert advice.predicted["serial"] >= 0.99 * 300 * least, str(advice)


def test_run_delay_with_cores_left_idle_is_the_schedulers() -> None:
    # Calls alone that waited a tenth of their time for a core on 64 cores read as 70 cores'
    # worth of other programs; the system counted 2 of them busy: the wait was not theirs.
    from pickpool._readings import _others_of

    assert _others_of(70.1, 2.0, 64) == 2.0
    assert _others_of(70.1, None, 64) == 70.1  # (no count to check it against)
    assert _others_of(2.0, 1.3, 2) == 2.0  # two programs beside two cores: both readings agree
    assert _others_of(1.2, 0.3, 2) == 0.0  # (a third of a core: the system's own chores)


def test_busy_time_counted_in_clock_ticks_is_read_for_what_it_can_tell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two CPUs counted 120 ms busy in 50 ms, this process computed 100 ms of it: the 20 ms
    # over is within the counts' resolution (a tick a CPU), not another program.
    reads = iter([(0.0, 0.0, 0.0), (0.05, 0.12, 0.1), (1.0, 2.1, 1.0)])
    monkeypatch.setattr(_timing, "_own_cpus", lambda cores: {0, 1})
    monkeypatch.setattr(_timing.Elsewhere, "_read", lambda self: next(reads))
    elsewhere = _timing.Elsewhere(2)
    assert elsewhere.cores(least=0.01) == 0.0
    assert elsewhere.cores(least=0.01) == pytest.approx((1.1 - 2 / _timing._TICKS) / 1.0)


def test_other_programs_are_read_from_the_run_delay_of_calls_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 2 ms of CPU a call, 1 ms waiting for a core on 2 cores: one thread got two thirds of a
    # core, as beside two programs computing. The first call is left out (a warm-up); under a
    # tenth waiting is a quiet machine's noise; no more than the calls together waited (a sixth
    # of the time they could run: 2/(1 - 1/6) - 1).
    from pickpool._readings import _others_asking

    monkeypatch.setattr(_machine, "cores", lambda: 2)
    alone = [(0.0, 0.002, 0.002, 0.002)] * 6
    assert _others_asking(alone, [0.05] + [0.001] * 5, [], []) == pytest.approx(2.0)
    assert _others_asking(alone, [0.0001] * 6, [], []) == 0.0
    assert _others_asking(alone[:2], [0.001] * 2, [], []) == 0.0  # (4 ms: too little to tell)
    together = [(0.0, 0.004, 0.002, 0.002)] * 6
    assert _others_asking(alone, [0.001] * 6, together, [0.0004] * 6) == pytest.approx(1.4)


def test_a_threads_reading_beside_busy_programs_is_put_on_a_quiet_scale() -> None:
    # Two threads beside two busy programs on two cores can gain 1.5x (2 x 2/4 of the cores
    # against 2/3 for one): that reading means what 2x means on a quiet machine, 1.25x what
    # 1.5x means. No gain (or a loss) stays as it is.
    from pickpool._costs import quiet_scaling
    from tests.test_advise import TWO_CORES, evidence

    def quiet(scaling: float, others: float) -> float | None:
        return quiet_scaling(evidence(threads=2, scaling=scaling, others=others), TWO_CORES)

    assert quiet(1.5, 2.0) == pytest.approx(2.0)
    assert quiet(1.25, 2.0) == pytest.approx(1.5)
    assert quiet(1.8, 2.0) == 2.0
    assert quiet(1.0, 2.0) == 1.0
    # Calls that wait: 32 threads 32x faster, busy programs or not.
    waiting = evidence(threads=32, scaling=32.0, others=2.0)
    assert quiet_scaling(waiting, TWO_CORES) == 32.0
    assert quiet(0.25, 2.0) == 0.25
    assert quiet(1.2, 0.0) == 1.2
    # Calls that wait 90% of their time on a lock they share: their 1.3x is the lock's, not
    # the busy programs' (8 threads of them ask 0.8 of a core).
    locked = evidence(threads=8, scaling=1.3, others=1.0, cpu=0.0025)
    assert quiet_scaling(locked, TWO_CORES) == 1.3


@pytest.mark.skipif(not _timing.SchedStat().known, reason="needs /proc/thread-self/schedstat")
def test_a_calls_wall_time_leaves_out_its_run_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    # 30 ms passed, 20 of them waiting for a core, 10 on the CPU: 10 ms as a quiet machine
    # would have run it, and the 20 told; timed together, all 30.
    readings = iter([(1.0, 5.0, 7.0, 2.0), (1.03, 5.01, 7.01, 2.02)] * 2)
    monkeypatch.setattr(_timing, "clocks", lambda delay=True: next(readings))
    delays: list[float] = []
    record = _timing.since(_timing.clocks(), delays=delays)
    assert record == pytest.approx((1.0, 0.01, 0.01, 0.01))
    assert delays == pytest.approx([0.02])
    assert _timing.since(_timing.clocks(), net=False)[1] == pytest.approx(0.03)


def test_threads_timed_together_are_compared_with_calls_alone_as_they_ran() -> None:
    # Calls of 2 ms of CPU beside two spinners on two cores. Alone, a call got two thirds of
    # a core: 3 ms, 1 of them waiting for one (its record keeps the 2). Two threads free of the
    # GIL got half a core each: 10 calls of 4 ms a thread, 40 ms for all 20. Against calls
    # alone as they ran, 1.5x: what two threads gain on this machine. Against the 2 ms alone a
    # quiet machine would take, they would read 1.0x, as if the GIL held them apart.
    from pickpool._readings import Readings

    def read(
        together: list[tuple[float, float, float, float]],
        delays: list[float],
        together_delays: list[float] | None = None,
    ) -> float:
        readings = Readings(crunch, False, None, None)
        readings.alone = [(0.0, 0.002, 0.002, 0.002)] * 5
        readings.alone_delays = delays
        readings.threads = 2
        readings.together = together
        readings.together_delays = together_delays or []
        readings.read_together()
        assert readings.scaling is not None
        return readings.scaling

    free = [(0.004 * i, 0.004, 0.002, 0.004) for i in range(10)] * 2
    assert read(free, [0.001] * 5) == pytest.approx(1.5, rel=0.1)
    assert read(free, []) == pytest.approx(1.0, rel=0.1)
    # Held apart by the GIL: one thread computes at a time, at the pace of one alone.
    held = [(0.003 * i, 0.006, 0.002, 0.004) for i in range(20)]
    assert read(held, [0.001] * 5) == pytest.approx(1.0, rel=0.1)
    # Calls alone that threads of this program still held up (80% waiting, where the calls
    # together waited a sixth of their time): no more than the calls together waited is put
    # back, or the GIL-bound threads would read 2x.
    assert read(held, [0.008] * 5, [0.001] * 20) <= 1.0
    assert read(held, [0.008] * 5) == pytest.approx(2.0, rel=0.01)


def test_calls_that_wait_on_each_other_are_not_a_far_side() -> None:
    # Calls that only wait: their latency alone is all that is explained.
    assert own_queueing(0.02, 0.0, 0.0, 32, 2) == 0.02
    # 5 ms holding the GIL then a 20 ms wait: 8 at once take ~42 ms each, from the GIL alone.
    assert own_queueing(0.025, 0.005, 0.2, 8, 2) == pytest.approx(0.0425)
    # Computing free of the GIL, 8 at once on 2 cores: they queue for the cores instead.
    assert own_queueing(0.025, 0.005, 0.0, 8, 2) == pytest.approx(0.025 + 3.5 * 0.0025)
    # More waiting explained with more calls, never less.
    assert own_queueing(0.025, 0.005, 0.2, 32, 2) > own_queueing(0.025, 0.005, 0.2, 8, 2)


def test_calls_whose_children_compute_do_not_climb_like_calls_that_wait() -> None:
    # A subprocess per item: the call waits, but its child computes on the same cores. The
    # count climbs by throughput from the advised one, not by latency towards 128 threads.
    from pickpool._advise import decide
    from pickpool._auto import CLIMB_CAP, _limit
    from pickpool._options import Options
    from tests.test_advise import TWO_CORES, evidence

    waiting = evidence(cpu=0.001, wall=0.04)
    children = evidence(cpu=0.001, wall=0.04, child_cpu=0.03)
    for ev, climbs_by_latency in ((waiting, True), (children, False)):
        advice = decide(ev, items=400, machine=TWO_CORES, choices=("threads",))
        climb, most = _limit(ev, advice, Options(), is_async=False)
        assert climb is not None
        assert (climb.latency is not None) is climbs_by_latency
        if climbs_by_latency:
            assert most == CLIMB_CAP
        else:
            assert most <= 2 * advice.workers
            assert advice.workers <= 4  # the children's CPU caps it at about the cores


def test_the_process_demand_clock_does_not_go_back_as_threads_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Threads' run delays, as /proc would show them at four readings: thread 2 ends, thread 3
    # starts, then a new thread takes the id 2. Each reading adds what was waited since the
    # last; a plain sum over the threads alive would drop by 0.3 s as thread 2 ends.
    readings = iter(
        [{"1": 0.5, "2": 0.3}, {"1": 0.6}, {"1": 0.6, "3": 0.05}, {"1": 0.6, "2": 0.01}]
    )
    current: dict[str, float] = {}

    def listdir(path: str) -> list[str]:
        current.clear()
        current.update(next(readings))
        return list(current)

    def fake_open(path: str, mode: str) -> Any:
        tid = path.split("/")[4]
        return io.BytesIO(b"7 %d 1" % round(current[tid] * 1e9))

    monkeypatch.setattr(os, "listdir", listdir)
    monkeypatch.setattr(_timing, "open", fake_open, raising=False)
    monkeypatch.setattr(time, "process_time", lambda: 10.0)
    clock = _timing.ProcessDemand()
    seen = [clock() for _ in range(4)]
    assert seen == pytest.approx([10.8, 10.9, 10.95, 10.96])
