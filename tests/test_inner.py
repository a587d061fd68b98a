"""Native thread pools inside calls (BLAS under numpy): capped to fit the cores, seen by the probe.

numpy's BLAS starts a pool of one thread per core. Calls side by side must not each keep a
full pool: every model caps the pools while several calls run at once, and puts them back
after the run. These tests read the pools' sizes from inside the calls (threadpoolctl), not
timings, so that a busy machine cannot flip them.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

import pickpool
from pickpool import _machine, _native
from pickpool._advise import decide
from pickpool._api import Model
from pickpool._native import Pool
from pickpool._options import Options
from pickpool._readings import Evidence
from pickpool._timing import Knocker
from tests.conftest import needs_the_gil
from tests.helpers import machine

from . import inner_helpers as ih
from .test_advise import evidence

if TYPE_CHECKING:
    from numpy.typing import NDArray

np = pytest.importorskip("numpy")
threadpoolctl = pytest.importorskip("threadpoolctl")

TWO_CORES = machine(cores=2, gil=True, start_method="forkserver", server_running=True)
OPENBLAS = (Pool("OpenBLAS", 2),)


def blas_size() -> int:
    """This process's BLAS pool size now (numpy loaded)."""
    info: list[dict[str, Any]] = threadpoolctl.threadpool_info()
    return max(int(p["num_threads"]) for p in info if p["user_api"] == "blas")


@pytest.fixture
def blas() -> Iterator[int]:
    """numpy's BLAS loaded here, at two threads or more (OpenBLAS would use the cores)."""
    a = np.ones((8, 8))
    float((a @ a)[0, 0])
    with threadpoolctl.threadpool_limits(limits=max(2, blas_size()), user_api="blas"):
        yield blas_size()


# The option and its rule ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1.5, "all", True])
def test_a_bad_inner_threads_is_refused_before_anything_runs(bad: object) -> None:
    ran: list[int] = []
    with pytest.raises(ValueError, match="inner_threads"):
        # A wrong value on purpose (hence the ignore): its check at the call is under test.
        pickpool.map(ran.append, range(3), model="serial", inner_threads=bad)  # type: ignore[call-overload]
    assert ran == []


def test_the_rule_fits_calls_times_threads_into_the_cores() -> None:
    cores = _machine.cores()
    assert _native.limit_for(None, 1) is None  # alone, a call may use every core
    assert _native.limit_for(None, 2) == max(1, cores // 2)
    assert _native.limit_for(None, 64) == 1
    assert _native.limit_for(3, 64) == 3
    assert _native.limit_for("leave", 64) is None


def test_overlapping_runs_hold_the_smallest_cap_and_the_last_one_puts_it_back(blas: int) -> None:
    first = _native.Held(1)
    assert blas_size() == 1
    second = _native.Held(2)
    assert blas_size() == 1  # the tighter hold wins
    first.close()
    assert blas_size() == min(2, blas)
    second.close()
    second.close()  # twice is fine
    assert blas_size() == blas


# Every model caps while calls share the cores, and puts the pools back ----------------------


@pytest.mark.parametrize("model", ["threads", "asyncio", "processes"])
def test_calls_side_by_side_get_their_share_of_the_cores(model: Model, blas: int) -> None:
    workers = 2
    seen = pickpool.map(ih.blas_threads, range(8), model=model, workers=workers, chunksize=1)
    share = max(1, _machine.cores() // workers)
    # Under processes the first call in a worker may import numpy itself: the cap follows
    # from the next task on. Every later call sees it.
    assert seen[-4:] == [share] * 4, seen
    assert blas_size() == blas  # this process's pool is as it was


def test_a_worker_that_loads_numpy_late_is_capped_from_its_next_task(blas: int) -> None:
    seen = pickpool.map(
        ih.blas_threads, range(6), model="processes", workers=1, chunksize=1, inner_threads=1
    )
    assert seen[1:] == [1] * 5, seen


@pytest.mark.parametrize("model", ["serial", "threads", "processes"])
def test_an_int_is_the_threads_of_each_pool_whatever_the_model(model: Model, blas: int) -> None:
    seen = pickpool.map(ih.blas_threads, range(4), model=model, workers=2, inner_threads=1)
    assert seen[-2:] == [1, 1], seen
    assert blas_size() == blas


def test_leave_leaves_the_pools_as_they_are(blas: int) -> None:
    seen = pickpool.map(
        ih.blas_threads, range(4), model="threads", workers=4, inner_threads="leave"
    )
    assert seen == [blas] * 4


def test_a_call_alone_keeps_every_core() -> None:
    a = np.ones((8, 8))
    float((a @ a)[0, 0])
    before = blas_size()
    assert pickpool.map(ih.blas_threads, range(3), model="serial") == [before] * 3


def test_a_failing_run_puts_the_pools_back(blas: int) -> None:
    def boom(x: int) -> int:
        if x == 3:
            raise ValueError(x)
        return ih.blas_threads(x)

    with pytest.raises(ValueError):
        pickpool.map(boom, range(8), model="threads", workers=2)
    assert blas_size() == blas


# The probe sees a call's own threads -----------------------------------------------------------


def test_the_probe_counts_the_cpu_of_threads_a_call_waits_for() -> None:
    advice = pickpool.advise(ih.work_in_a_helper_thread, [8] * 12, budget=0.5)
    ev = advice.evidence
    assert ev.process_cpu is not None
    # The call's own thread mostly waits (it only builds the data); the process computed.
    assert ev.process_cpu > 2 * ev.cpu


@pytest.mark.skipif(_machine.cores() < 2, reason="one core cannot hold two BLAS threads busy")
def test_the_probe_names_the_pools_of_a_call_that_is_parallel_inside(blas: int) -> None:
    rng = np.random.default_rng(0)
    mats = [rng.standard_normal((400, 400)) for _ in range(40)]
    ev = pickpool.advise(_matmul, mats, budget=2.0).evidence
    if ev.cores_used < 1.2:
        pytest.skip(f"the machine gave the call {ev.cores_used:.1f} cores")  # too busy to tell
    assert any("BLAS" in p.name for p in ev.pools), ev.pools
    assert ev.capped_wall is not None
    assert ev.capped_wall > 0


def _matmul(m: NDArray[Any]) -> float:
    x = m @ m
    return float((x @ m)[0, 0])


# The knocker: a busy core is not a held GIL ---------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/thread-self")
@pytest.mark.timeout(60)
def test_cores_busy_with_other_programs_do_not_read_as_a_held_gil() -> None:
    # Every core spins in other processes at our own priority; this process holds no GIL
    # (it sleeps). Whatever lateness the knocker sees is waiting for a core.
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(4 * _machine.cores())
    ]
    try:
        time.sleep(0.2)  # the load, not synchronisation: let the spinners take the cores
        knocker = Knocker()
        knocker.start()
        time.sleep(0.5)  # the measured workload: a call that waits, GIL released
        held, watched = knocker.stop()
    finally:
        for p in spinners:
            p.kill()
        for p in spinners:
            p.wait()
    # Counted as the GIL's, the wait for a core read 0.12-0.15 here; taken off, under 0.01;
    # where waiting for a core took most of the time, there is no reading at all.
    assert watched == 0 or held < 0.06, (held, watched)


class _Waited:
    """A thread's scheduler counts that wait for a core ``share`` of the time passing."""

    def __init__(self, share: float) -> None:
        self._share = share
        self._began = time.perf_counter()

    def read(self) -> tuple[float, float]:
        passed = time.perf_counter() - self._began
        return (1 - self._share) * passed, self._share * passed

    def close(self) -> None:
        pass


@pytest.mark.timeout(60)
@pytest.mark.parametrize("share", [0.2, 0.8])
def test_a_knocker_that_mostly_waited_for_a_core_gives_no_reading(
    monkeypatch: pytest.MonkeyPatch, share: float
) -> None:
    # Beside four busy processes on two cores, pure Python read 38% held: what is left of the
    # time, less two threads' waits for a core, is too little to read a GIL by.
    from pickpool import _timing

    monkeypatch.setattr(_timing, "SchedStat", lambda: _Waited(share / 2))  # (each thread)
    knocker = Knocker()
    knocker.start()
    time.sleep(0.3)  # the measured workload: a call that waits, GIL released
    _, watched = knocker.stop()
    assert (watched > 0) is (share < Knocker.MOST_DELAYED)


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.timeout(60)
@needs_the_gil  # (no GIL to read)
def test_the_gil_held_between_calls_is_not_read_as_the_calls() -> None:
    # Calls that wait 3 ms, each followed by 3 ms of pure Python outside them (a consumer of
    # the results, a first import): watching everything reads that as a held GIL; watching
    # the calls reads what the calls did.
    everything, calls = Knocker(), Knocker(calls=True)
    everything.start()
    calls.start()
    for _ in range(40):
        calls.enter()
        time.sleep(0.003)  # the measured workload: a call that waits, GIL released
        calls.leave()
        _spin(0.003)
    held_all, watched_all = everything.stop()
    held, watched = calls.stop()
    # (On a busy machine the pure Python between calls may leave no reading: see
    # test_a_knocker_that_mostly_waited_for_a_core_gives_no_reading. It holds the GIL half
    # of the time; beside two spinning programs, which take the cores from the knocker too,
    # the reading went as low as 0.24.)
    assert held_all > 0.2 or watched_all == 0, held_all
    assert held < 0.1, held
    assert 0.02 < watched < 0.2 or watched == 0, watched


# The cost model, on made-up evidence ----------------------------------------------------------


def parallel_call(**kw: object) -> Evidence:
    """A 5 ms call that kept 2 cores busy alone (OpenBLAS, 2 threads)."""
    base: dict[str, object] = {
        "wall": 0.005,
        "cpu": 0.005,
        "process_cpu": 0.010,
        "pools": OPENBLAS,
        "gil_held": 0.97,
        "item_bytes": 1000,
        "result_bytes": 30,
        "length": 300,
    }
    base.update(kw)
    return evidence(**base)


def test_pools_that_only_spin_are_capped_and_processes_split_the_cores() -> None:
    # One thread per pool is as fast as two: the second thread only spun.
    ev = parallel_call(capped_wall=0.005, capped_cpu=0.006, capped_gil=0.97)
    advice = decide(ev, items=300, machine=TWO_CORES)
    assert (advice.model, advice.workers, advice.inner_threads) == ("processes", 2, 1)
    assert advice.options["inner_threads"] == 1
    text = str(advice)
    assert "kept 2.0 cores busy by itself (OpenBLAS, 2 threads)" in text
    assert "1 thread per native pool" in text


def test_a_call_whose_threads_really_work_runs_in_a_plain_loop() -> None:
    # One thread per pool takes twice as long: a loop already uses both cores.
    ev = parallel_call(capped_wall=0.010, capped_cpu=0.010, capped_gil=0.97)
    advice = decide(ev, items=300, machine=TWO_CORES)
    assert advice.model == "serial"
    assert "already keeps 2.0 cores busy" in str(advice)


def test_between_the_two_the_model_weighs_what_the_threads_bring() -> None:
    # Two threads make a call 1.3x faster, two processes of one thread each 2x: processes.
    ev = parallel_call(capped_wall=0.0065, capped_cpu=0.0065, capped_gil=0.97)
    advice = decide(ev, items=300, machine=TWO_CORES)
    assert advice.model == "processes"
    assert advice.predicted["processes"] < 0.85 * advice.predicted["serial"]


def test_left_alone_the_pools_count_against_the_cores() -> None:
    ev = parallel_call(capped_wall=0.005, capped_cpu=0.006, capped_gil=0.97)
    advice = decide(ev, items=300, machine=TWO_CORES, options=Options(inner_threads="leave"))
    assert advice.inner_threads is None
    # Each call keeps both cores busy: two at once are no faster than one after the other.
    assert advice.predicted["processes"] > 0.9 * advice.predicted["serial"]


def test_a_pool_that_cannot_be_capped_is_said_so() -> None:
    ev = parallel_call(pools=(Pool("polars", 2, cappable=False),))
    advice = decide(ev, items=300, machine=TWO_CORES)
    assert "polars sizes its pool when it is imported" in str(advice)
    assert advice.model == "serial"


def test_what_a_model_was_seen_to_do_overrides_its_prediction() -> None:
    ev = parallel_call(capped_wall=0.005, capped_cpu=0.006, capped_gil=0.97)
    first = decide(ev, items=300, machine=TWO_CORES)
    assert first.model == "processes"
    again = decide(ev, items=300, machine=TWO_CORES, observed={"processes": 0.05})
    assert again.model != "processes"
    assert again.predicted["processes"] >= 300 * 0.05


def test_what_threads_did_counts_for_asyncio_running_the_same_plain_function() -> None:
    # A plain function under asyncio runs on the loop's threads: seen slow on threads, it is
    # not predicted fast on asyncio (nor the other way round); a coroutine function is apart.
    waits = evidence(wall=0.005, cpu=0.0002)
    for seen in ("threads", "asyncio"):
        again = decide(waits, items=300, machine=TWO_CORES, observed={seen: 0.02})
        assert again.predicted["threads"] >= 300 * 0.02
        assert again.predicted["asyncio"] >= 300 * 0.02
        assert again.model not in ("threads", "asyncio")
    coroutines = evidence(is_async=True, wall=0.005, cpu=0.0002)
    again = decide(coroutines, items=300, machine=TWO_CORES, observed={"threads": 0.02})
    assert again.model == "asyncio"


def test_evidence_without_inner_readings_is_decided_as_before() -> None:
    plain = evidence(gil_held=0.97)
    with_none = dataclasses.replace(plain, process_cpu=plain.cpu)
    a = decide(plain, items=200, machine=TWO_CORES)
    b = decide(with_none, items=200, machine=TWO_CORES)
    assert (a.model, a.workers, a.predicted) == (b.model, b.workers, b.predicted)


@pytest.mark.parametrize("model", ["threads", "asyncio"])
def test_openmp_is_capped_in_each_thread_that_calls_it(model: Model) -> None:
    # OpenMP keeps its size per thread: capping the caller's thread alone would not reach the
    # worker threads, and a warm thread must not keep the cap into a run that leaves it.
    pytest.importorskip("sklearn")
    ih.openmp_threads(0)
    natural = ih.openmp_threads(0)
    if natural < 2:
        pytest.skip("OpenMP runs one thread here")
    seen = pickpool.map(ih.openmp_threads, range(8), model=model, workers=2, chunksize=1)
    assert seen[-4:] == [max(1, _machine.cores() // 2)] * 4, seen
    left = pickpool.map(
        ih.openmp_threads, range(8), model=model, workers=2, chunksize=1, inner_threads="leave"
    )
    assert left == [natural] * 8, left
    assert ih.openmp_threads(0) == natural


def test_openmp_in_the_callers_thread_is_put_back_after_serial_and_threads_runs() -> None:
    pytest.importorskip("sklearn")
    natural = ih.openmp_threads(0)
    if natural < 2:
        pytest.skip("OpenMP runs one thread here")
    # Capped in this very thread (serial, an int), then a run that caps other threads.
    assert pickpool.map(ih.openmp_threads, range(3), model="serial", inner_threads=1) == [1] * 3
    pickpool.map(ih.openmp_threads, range(4), model="threads", workers=2)
    assert ih.openmp_threads(0) == natural
    pickpool.map(ih.openmp_threads, range(3), model="serial")
    assert ih.openmp_threads(0) == natural
