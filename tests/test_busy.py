"""A busy machine: other programs on the cores must not fool the probe.

A call that computes while other programs hold the cores is runnable but not running part of
the time (its run delay); read as waiting, it would be advised more workers than the cores.
These tests start their own spinning processes, as many as the usable cores, pinned where
pickpool runs, and stop them after.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

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


@pytest.mark.skipif(not _timing.SchedStat().known, reason="needs /proc/thread-self/schedstat")
def test_a_calls_wall_time_leaves_out_its_run_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    # 30 ms passed, 20 of them waiting for a core, 10 on the CPU: 10 ms as a quiet machine
    # would have run it, and the 20 told.
    readings = iter([(1.0, 5.0, 7.0, 2.0), (1.03, 5.01, 7.01, 2.02)])
    monkeypatch.setattr(_timing, "clocks", lambda delay=True: next(readings))
    delays: list[float] = []
    record = _timing.since(_timing.clocks(), delays=delays)
    assert record == pytest.approx((1.0, 0.01, 0.01, 0.01))
    assert delays == pytest.approx([0.02])


def test_threads_timed_together_leave_out_what_other_programs_took() -> None:
    # Calls of 2 ms free of the GIL, two threads: beside spinners each call also waited 2 ms
    # for a core, and 10 calls a thread took 40 ms. Each thread's 20 ms of waiting, side by
    # side, is left out of the phase: the two threads did twice the work of one, as on a
    # quiet machine; counted in, it would read as threads serialised on the GIL.
    from pickpool._readings import Readings

    readings = Readings(crunch, False, None, None)
    readings.alone = [(0.0, 0.002, 0.002, 0.002)] * 5
    readings.threads = 2
    readings.together = [(0.004 * i, 0.002, 0.002, 0.004) for i in range(10)] * 2
    readings.together_delays = [0.002] * 20
    readings.read_together()
    assert readings.scaling == pytest.approx(2.0, rel=0.06)
    readings.together_delays = []
    readings.read_together()
    assert readings.scaling == pytest.approx(1.0, rel=0.06)


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
