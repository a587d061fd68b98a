"""advise(): the cost model on made-up evidence, and the probe on real workloads of each kind.

The cost-model tests are exact: evidence in, advice out. The workload tests measure for real,
so they assert what the measurements decide by a wide margin (the knocker reads ~1.0 for pure
Python whatever the load, ~0 for zlib), and the model only where no busy machine could flip it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pickpool
from pickpool import _machine, lab
from pickpool._advise import decide
from pickpool._options import Options
from pickpool._readings import Evidence
from tests.conftest import GIL
from tests.helpers import machine

TWO_CORES = machine(cores=2, gil=True, start_method="forkserver", server_running=True)


def evidence(**kw: Any) -> Evidence:
    base = Evidence(
        is_async=False,
        calls=8,
        failed=0,
        wall=0.025,
        cpu=0.025,
        gil_held=None,
        child_cpu=0.0,
        threads=0,
        scaling=None,
        coroutines=0,
        loop_blocked=None,
        item_bytes=30,
        result_bytes=30,
        item_pickle=1e-6,
        result_pickle=1e-6,
        unpicklable=None,
        length=200,
        seconds=0.2,
    )
    return dataclasses.replace(base, **kw)


# The cost model ---------------------------------------------------------------------------


def test_pure_python_cpu_goes_to_processes() -> None:
    advice = decide(evidence(gil_held=0.97), items=200, machine=TWO_CORES)
    assert (advice.model, advice.kind, advice.workers) == ("processes", "cpu", 2)
    assert advice.predicted["processes"] < 0.6 * advice.predicted["serial"]
    assert "GIL was held 97%" in str(advice)


def test_idle_worker_processes_are_not_started_again() -> None:
    from pickpool._backends._processes import WORKER_START, Starts

    idle = dataclasses.replace(
        TWO_CORES, facts={**TWO_CORES.facts, "processes": Starts("forkserver", True, idle=8)}
    )
    cold, warm = (decide(evidence(gil_held=0.97), items=8, machine=m) for m in (TWO_CORES, idle))
    assert cold.sizes["processes"][0] == warm.sizes["processes"][0] == 2
    started = cold.predicted["processes"] - warm.predicted["processes"]
    assert started == pytest.approx(2 * WORKER_START["forkserver"])


def test_gil_releasing_cpu_goes_to_threads() -> None:
    advice = decide(evidence(gil_held=0.02, threads=2, scaling=1.9), items=200, machine=TWO_CORES)
    assert (advice.model, advice.kind) == ("threads", "cpu-nogil")
    assert "releases the GIL" in str(advice)


def test_scaling_without_knocker_decides_the_gil() -> None:
    held = decide(evidence(threads=2, scaling=1.0), items=200, machine=TWO_CORES)
    free = decide(evidence(threads=2, scaling=1.95), items=200, machine=TWO_CORES)
    assert (held.model, held.kind) == ("processes", "cpu")
    assert (free.model, free.kind) == ("threads", "cpu-nogil")


def test_computing_free_of_the_gil_but_not_scaling_in_threads_goes_to_processes() -> None:
    # GIL hand-offs between many short sections (scikit-learn's KMeans and gradient boosting
    # fits), page faults in one address space: threads do not scale, processes did.
    advice = decide(evidence(gil_held=0.01, threads=2, scaling=1.0), items=200, machine=TWO_CORES)
    assert advice.model == "processes"
    assert advice.predicted["threads"] >= 0.95 * advice.predicted["serial"]
    assert "do not help" in str(advice)


def test_waiting_that_does_not_scale_in_threads_is_not_sent_to_processes() -> None:
    # A lock, a disk, a server: processes would meet the same limit, and they pickle.
    ev = evidence(wall=0.02, cpu=0.001, gil_held=0.01, threads=8, scaling=1.0)
    advice = decide(ev, items=200, machine=TWO_CORES)
    assert advice.predicted["processes"] >= 0.9 * advice.predicted["serial"]


def test_blocking_waits_go_to_many_threads() -> None:
    ev = evidence(wall=0.02, cpu=0.0002, gil_held=0.01, threads=16, scaling=15.5)
    advice = decide(ev, items=500, machine=TWO_CORES)
    assert (advice.model, advice.kind) == ("threads", "blocking-io")
    assert advice.workers >= 16
    assert advice.predicted["threads"] < advice.predicted["serial"] / 10


def test_tiny_items_stay_serial() -> None:
    advice = decide(evidence(wall=2e-6, cpu=2e-6, gil_held=0.95), items=100_000, machine=TWO_CORES)
    assert (advice.model, advice.kind) == ("serial", "tiny")
    assert "so short" in str(advice)


def test_pickling_that_costs_more_than_the_work_rules_processes_out() -> None:
    ev = evidence(wall=0.0005, cpu=0.0005, gil_held=0.97, item_bytes=2_000_000, item_pickle=0.003)
    advice = decide(ev, items=100, machine=TWO_CORES)
    assert advice.model == "serial"
    assert advice.kind == "cpu"
    assert "pickling" in str(advice)


def test_an_unpicklable_function_never_goes_to_processes() -> None:
    ev = evidence(gil_held=0.97, unpicklable="cannot send function f to a worker process")
    advice = decide(ev, items=200, machine=TWO_CORES)
    assert advice.model != "processes"
    assert advice.predicted["processes"] == float("inf")
    assert "cannot run in worker processes" in str(advice)


def test_mixed_work_gets_more_processes_than_cores() -> None:
    # 10 ms waiting + 10 ms holding the GIL: threads top out at 2x, processes at cores*2x.
    ev = evidence(wall=0.02, cpu=0.01, gil_held=0.5, threads=4, scaling=2.0)
    advice = decide(ev, items=200, machine=TWO_CORES)
    assert advice.kind == "mixed"
    assert (advice.model, advice.workers) == ("processes", 4)


def test_async_waits_go_to_asyncio() -> None:
    ev = evidence(is_async=True, wall=0.02, cpu=0.0001, coroutines=16, loop_blocked=0.0)
    advice = decide(ev, items=1000, machine=TWO_CORES)
    assert (advice.model, advice.kind) == ("asyncio", "async-io")
    assert advice.workers >= 64


def test_async_calls_cost_threads_what_one_alone_costs() -> None:
    # An async client: 5 ms of CPU a call alone (its own loop, a session per call), 0.5 ms
    # each when 16 share one loop. On threads each call runs alone on a loop of its own: the
    # 5 ms, on 2 cores, bound threads to 2.5 ms an item; one shared loop does better.
    ev = evidence(
        is_async=True, wall=0.025, cpu=0.005, gil_held=0.2, coroutines=16, loop_blocked=0.02,
        loop_cpu=0.0005,
    )  # fmt: skip
    advice = decide(ev, items=200, machine=TWO_CORES)
    assert advice.model == "asyncio", str(advice)
    assert advice.predicted["threads"] >= 200 * 0.005 / 2


def test_async_that_blocks_its_loop_goes_elsewhere() -> None:
    sleeps = evidence(is_async=True, wall=0.02, cpu=0.0001, gil_held=0.01, coroutines=16,
                      loop_blocked=1.0)  # fmt: skip
    computes = evidence(is_async=True, gil_held=0.97, coroutines=16, loop_blocked=1.0)
    a, b = (decide(ev, items=200, machine=TWO_CORES) for ev in (sleeps, computes))
    assert (a.model, a.kind) == ("threads", "blocking-io")
    assert (b.model, b.kind) == ("processes", "cpu")
    assert "blocks its event loop" in str(a)
    assert "blocks its event loop" in str(b)


def test_without_the_gil_threads_run_python_in_parallel() -> None:
    free_threaded = dataclasses.replace(TWO_CORES, gil=False)
    advice = decide(evidence(gil_held=0.0, threads=2, scaling=1.95), items=200,
                    machine=free_threaded)  # fmt: skip
    assert (advice.model, advice.kind) == ("threads", "cpu-nogil")


def test_one_core_never_pays_for_processes() -> None:
    one = dataclasses.replace(TWO_CORES, cores=1)
    advice = decide(evidence(gil_held=0.97), items=200, machine=one)
    assert advice.model == "serial"


def test_a_short_batch_does_not_pay_for_starting_processes() -> None:
    spawn = machine(start_method="spawn")
    advice = decide(evidence(wall=0.02, gil_held=0.97), items=3, machine=spawn)
    assert advice.model == "serial"
    assert "starting workers" in str(advice)


def test_given_workers_and_timeout_are_respected() -> None:
    options = Options(workers=5, timeout=1.0)
    advice = decide(evidence(wall=0.02, cpu=0.0001, threads=16, scaling=15.0), items=500,
                    options=options, machine=TWO_CORES)  # fmt: skip
    assert advice.workers == 5
    assert advice.chunksize == 1


def test_unknown_length_is_said() -> None:
    advice = decide(evidence(gil_held=0.97), items=None, machine=TWO_CORES)
    assert advice.items == 1000
    assert "length is unknown" in str(advice)


def test_advice_options_run_as_they_are() -> None:
    advice = decide(evidence(gil_held=0.97), items=10, machine=TWO_CORES)
    assert pickpool.map(lab.tiny, range(10), **advice.options) == [lab.tiny(x) for x in range(10)]


# The API ------------------------------------------------------------------------------------


def test_advise_checks_its_arguments() -> None:
    # Wrong types on purpose (hence the ignores): the checks at run time are under test.
    with pytest.raises(ValueError, match="at least one item"):
        pickpool.advise(lab.tiny, [])
    with pytest.raises(ValueError, match="budget"):
        pickpool.advise(lab.tiny, [1], budget=0)
    with pytest.raises(TypeError, match="budget"):
        pickpool.advise(lab.tiny, [1], budget="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        pickpool.advise(3, [1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="iterable"):
        pickpool.advise(lab.tiny, 3)  # type: ignore[arg-type]


def test_advise_when_every_call_fails() -> None:
    def broken(x: int) -> int:
        raise KeyError(x)

    with pytest.raises(ValueError, match="every probed call failed") as info:
        pickpool.advise(broken, range(10))
    assert isinstance(info.value.__cause__, KeyError)


def test_advise_takes_only_what_it_measures_from_an_iterator() -> None:
    source = iter(range(100_000))
    with pytest.warns(UserWarning, match="consumed"):
        advice = pickpool.advise(lab.tiny, source)
    left = sum(1 for _ in source)
    assert advice.evidence.calls + left == 100_000
    assert left > 0


def test_advise_respects_its_budget() -> None:
    t0 = time.perf_counter()
    with pytest.warns(UserWarning, match="consumed"):  # (an endless iterator)
        advice = pickpool.advise(lab.blocking_wait, itertools.repeat(0), budget=0.3)
    assert time.perf_counter() - t0 < 3  # about 0.3 s; slack for a busy machine
    assert advice.evidence.seconds < 3


# Real workloads, one of each kind -------------------------------------------------------------

needs_two = pytest.mark.skipif(_machine.cores() < 2, reason="parallelism needs 2 cores")


@needs_two
def test_pure_python_cpu_is_cpu() -> None:
    advice = pickpool.advise(lab.crunch, range(200))
    if GIL:
        assert (advice.kind, advice.model) == ("cpu", "processes"), str(advice)
    else:  # (threads compute side by side there, and tie with processes)
        assert advice.kind == "cpu-nogil", str(advice)
        assert "runs without the GIL" in str(advice)
        assert advice.model in ("threads", "processes"), str(advice)


@pytest.mark.parametrize("fn", [lab.squeeze, lab.digest], ids=["zlib", "hashlib"])
def test_c_code_that_releases_the_gil_is_cpu_nogil(fn: Callable[[int], object]) -> None:
    advice = pickpool.advise(fn, range(100))
    assert advice.kind == "cpu-nogil", str(advice)
    # Threads and processes tie on it (benchmarks/auto.py); which one a short probe on a busy
    # machine finds faster may vary, but never one call at a time.
    assert advice.model in ("threads", "processes"), str(advice)


def test_sleeping_is_blocking_io() -> None:
    advice = pickpool.advise(lab.blocking_wait, range(300))
    assert (advice.kind, advice.model) == ("blocking-io", "threads"), str(advice)
    assert advice.workers >= 8


def test_a_local_socket_is_blocking_io() -> None:
    with lab.server(0.02) as address:
        advice = pickpool.advise(functools.partial(lab.fetch, address), range(300))
    assert (advice.kind, advice.model) == ("blocking-io", "threads"), str(advice)


def test_waiting_on_a_child_process_is_blocking_io() -> None:
    advice = pickpool.advise(lab.child, range(100))
    assert advice.kind == "blocking-io", str(advice)
    assert advice.model in ("threads", "asyncio"), str(advice)


_warm = {"done": False}


def waits_after_a_cold_start(x: int) -> int:
    """A 20 ms wait; the first call also computes for 0.2 s (an import, a cache filled once)."""
    if not _warm["done"]:
        end = time.thread_time() + 0.2
        while time.thread_time() < end:
            pass
        _warm["done"] = True
    time.sleep(0.02)
    return x


def test_a_cold_first_call_is_a_warm_up_not_the_workload() -> None:
    # Of two calls alone the faster one is typical, for the process's CPU time too: their mean
    # read 0.1 s of CPU in a 20 ms call, "5 cores busy", and advised a plain loop.
    _warm["done"] = False
    advice = pickpool.advise(waits_after_a_cold_start, range(300))
    assert advice.kind == "blocking-io", str(advice)
    assert advice.model != "serial", str(advice)  # (which pool: the machine's load decides)
    assert advice.evidence.cores_used < 0.5, str(advice)


def test_tiny_work_is_tiny() -> None:
    advice = pickpool.advise(lab.tiny, range(100_000))
    assert (advice.kind, advice.model) == ("tiny", "serial"), str(advice)


def test_light_work_on_large_arguments_stays_out_of_processes() -> None:
    big = list(range(200_000))
    advice = pickpool.advise(lab.sample_sum, [big] * 50)
    assert advice.model != "processes", str(advice)
    assert advice.evidence.item_bytes > 500_000


@needs_two
def test_half_waiting_half_computing_is_mixed() -> None:
    advice = pickpool.advise(lab.mixed, range(200))
    assert advice.kind == "mixed", str(advice)
    assert advice.model != "serial", str(advice)


def test_async_waits_are_async_io() -> None:
    advice = pickpool.advise(lab.async_wait, range(1000))
    assert (advice.kind, advice.model) == ("async-io", "asyncio"), str(advice)


def test_async_that_sleeps_blocking_is_caught() -> None:
    advice = pickpool.advise(lab.async_blocking, range(200))
    assert advice.evidence.loop_blocked is not None
    assert advice.evidence.loop_blocked > 0.5
    assert "blocks its event loop" in str(advice)
    assert (advice.kind, advice.model) == ("blocking-io", "threads"), str(advice)


@needs_two
def test_async_that_computes_is_caught() -> None:
    advice = pickpool.advise(lab.async_crunch, range(100))
    assert "blocks its event loop" in str(advice)
    if GIL:
        assert (advice.kind, advice.model) == ("cpu", "processes"), str(advice)
    else:
        assert advice.kind == "cpu-nogil", str(advice)
        assert advice.model in ("threads", "processes"), str(advice)


def test_advise_works_from_inside_an_event_loop() -> None:
    async def main() -> str:
        return pickpool.advise(lab.tiny, range(1000)).model

    assert asyncio.run(main()) == "serial"


def test_child_processes_cpu_caps_the_threads() -> None:
    # 30 ms waiting on a child that computes 10 ms: 2 cores run at most 200 such children a
    # second, whatever the thread count.
    ev = evidence(wall=0.03, cpu=0.0003, child_cpu=0.01, gil_held=0.01, threads=4, scaling=3.5)
    advice = decide(ev, items=100, machine=TWO_CORES)
    assert advice.model == "threads"
    assert advice.predicted["threads"] >= 100 * 0.01 / 2
    assert "child processes" in str(advice)


def test_a_far_side_slowing_down_is_not_loop_blocking() -> None:
    # 16 coroutines took 1.7x one's time because the server slowed down, not the loop: each
    # costs the loop its own 0.7 ms of CPU, so one loop still beats a thread per coroutine.
    ev = evidence(
        is_async=True, wall=0.022, cpu=0.0007, gil_held=0.04, coroutines=16, loop_blocked=0.046
    )
    advice = decide(ev, items=200, machine=TWO_CORES)
    assert (advice.model, advice.kind) == ("asyncio", "async-io"), str(advice)


def test_advise_says_when_it_consumed_an_iterator() -> None:
    numbers = iter(range(100_000))
    with pytest.warns(UserWarning, match=r"consumed the first \d+ items of an iterator"):
        pickpool.advise(abs, numbers, budget=0.05)
    rest = sum(1 for _ in numbers)
    assert 0 < rest < 100_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pickpool.advise(abs, list(range(100)), budget=0.05)  # a list is not consumed: no warning


@settings(max_examples=300, deadline=None)
@given(
    threads=st.sampled_from([2, 4, 6, 8, 16]),
    speed=st.floats(0.05, 1.0),
    cpu=st.floats(0.0, 1.0),
    held=st.one_of(st.none(), st.floats(0.0, 1.0)),
    cores=st.sampled_from([1, 2, 4, 8]),
)
def test_what_threads_showed_is_said_as_the_numbers_say(
    threads: int, speed: float, cpu: float, held: float | None, cores: int
) -> None:
    from pickpool._reasons import _together_reason, scaling_ceiling

    ev = evidence(
        wall=0.01, cpu=0.01 * cpu, gil_held=held, threads=threads, scaling=max(0.5, speed * threads)
    )
    box = machine(cores=cores)
    said = _together_reason(ev, box)
    assert said is not None
    scaling = ev.scaling or 0.0
    parallel = scaling >= 0.6 * min(threads, cores)
    if "something they share" in said:  # (a lock: short of what their computing allows)
        assert scaling < 0.6 * scaling_ceiling(ev, box), said
    if "the GIL serialises" in said:
        assert not parallel, said
    if "releases the GIL" in said and "do not help" not in said:
        assert parallel, said
    if "waits overlap" in said:
        assert scaling >= 0.6 * scaling_ceiling(ev, box), said


@settings(max_examples=400, deadline=None)
@given(
    wall=st.floats(1e-6, 1.0),
    own=st.floats(0.0, 1.0),
    native=st.floats(0.0, 1.0),
    children=st.floats(0.0, 1.0),
    held=st.one_of(st.none(), st.floats(0.0, 1.0)),
    together=st.one_of(st.none(), st.tuples(st.sampled_from([2, 4, 8, 16]), st.floats(0.3, 1.0))),
    ramp=st.lists(
        st.tuples(st.sampled_from([2, 8, 32]), st.floats(1.0, 4.0), st.floats(0.0, 0.5)),
        max_size=3,
    ),
    is_async=st.booleans(),
    cores=st.sampled_from([1, 2, 4, 8]),
    items=st.integers(1, 100_000),
    others=st.one_of(st.just(0.0), st.floats(0.5, 16.0)),
)
def test_no_prediction_beats_the_cores_it_can_have(
    wall: float,
    own: float,
    native: float,
    children: float,
    held: float | None,
    together: tuple[int, float] | None,
    ramp: list[tuple[int, float, float]],
    is_async: bool,
    cores: int,
    items: int,
    others: float,
) -> None:
    # Whatever the evidence, the computing a batch asks of this machine (the calls' own CPU,
    # their native threads', their child processes') cannot be done faster than the cores
    # allow, less what other programs computing beside it take: k workers of calls that each
    # keep u cores busy compute on at most cores x ku/(ku + others) of them (ku between one
    # thread's worth and the cores). No model on this machine is predicted to beat that.
    cpu = wall * own
    process_cpu = cpu + native * wall * (cores - own)  # (at most every core, all the time)
    child_cpu = children * (wall * cores - process_cpu)
    threads, speed = together or (0, 0.0)
    ev = evidence(
        is_async=is_async,
        wall=wall,
        cpu=cpu,
        process_cpu=process_cpu,
        child_cpu=child_cpu,
        gil_held=held,
        threads=threads,
        scaling=speed * min(threads, cores) if threads else None,
        ramp=tuple((n, wall * growth, failed) for n, growth, failed in ramp),
        length=items,
        others=others,
    )
    advice = decide(ev, items=items, machine=machine(cores=cores, gil=True))
    computing = process_cpu + child_cpu
    for model, seconds in advice.predicted.items():
        if model == "dask":  # (a cluster's cores are its own)
            continue
        asked = min(cores, max(1.0, advice.sizes[model][0] * computing / wall))
        demand = items * computing / (asked * min(1.0, cores / (asked + others)))
        assert seconds >= 0.999 * demand, (model, seconds, demand, advice)


def test_beside_other_programs_every_model_gets_the_cores_left() -> None:
    # 5 ms of computing, two threads measured 1.3x one: on a quiet machine the GIL held them
    # back (processes, then); beside two programs computing on two cores it is near what two
    # threads can get (2 x 2/4 of the cores against 2/3 for one alone: 1.5x), and two
    # processes would share the same cores: no reason to pay for them. A loop gets two
    # thirds of a core, and takes longer than on a quiet machine.
    ev = evidence(wall=0.005, cpu=0.005, gil_held=None, threads=2, scaling=1.3, length=2000)
    quiet = decide(ev, items=2000, machine=TWO_CORES)
    busy = decide(dataclasses.replace(ev, others=2.0), items=2000, machine=TWO_CORES)
    assert quiet.model == "processes", str(quiet)
    assert busy.model == "threads", str(busy)
    assert busy.predicted["serial"] == pytest.approx(1.5 * quiet.predicted["serial"], rel=0.01)
    assert busy.predicted["processes"] >= 1.9 * quiet.predicted["processes"]
    # Calls that wait are not slowed by the programs beside them: still many threads.
    waits = evidence(wall=0.01, cpu=5e-5, threads=32, scaling=31.0, others=2.0, length=80)
    advice = decide(waits, items=80, machine=TWO_CORES)
    assert advice.model == "threads", str(advice)
    assert advice.workers >= 32, str(advice)


def test_the_advice_says_when_another_model_is_close() -> None:
    # Calls that wait: threads and an event loop's threads are predicted within a few percent,
    # which a busy machine's noise could rank either way; pure Python is not close to a loop.
    waits = decide(evidence(wall=0.02, cpu=0.0005, gil_held=0.02), items=300, machine=TWO_CORES)
    close = [r for r in waits.reasons if "is close" in r]
    assert len(close) == 1, str(waits)
    assert "either will do" in close[0]
    computes = decide(evidence(gil_held=0.97), items=200, machine=TWO_CORES)
    assert not any("is close" in r for r in computes.reasons), str(computes)


# Tiny calls: timed in batches, advised in the chunks a loop runs them in ------------------------


def _add_one(x: int) -> int:
    return x + 1


def test_a_batch_timer_records_one_record_per_batch_per_call() -> None:
    from pickpool._timing import Batched

    records: list[Any] = []
    timed = Batched(_add_one, records, size=50)
    assert [timed(x) for x in range(120)] == list(range(1, 121))
    assert len(records) == 2  # (the last 20 calls are not a whole batch)
    assert all(0 <= r[1] < 1e-3 and 0 <= r[2] <= r[1] * 1.5 + 1e-6 for r in records)
    assert timed.samples[:3] == [(0, 1), (1, 2), (2, 3)]
    assert len(timed.samples) == Batched.SAMPLES


def test_a_failure_breaks_its_batch_and_is_raised() -> None:
    from pickpool._timing import Batched

    def odd_fails(x: int) -> int:
        if x == 7:
            raise ValueError(x)
        return x

    records: list[Any] = []
    timed = Batched(odd_fails, records, size=5)
    for x in range(7):
        timed(x)
    with pytest.raises(ValueError):
        timed(7)
    for x in range(8, 13):
        timed(x)
    # 0-4 made a batch; 5, 6 and the failure broke the next one; 8-12 made a new one.
    assert len(records) == 2


def test_tiny_calls_are_timed_in_batches_not_one_by_one() -> None:
    # One by one, timing a call costs more than the call (the clocks are system calls): a
    # million x + 1 read as 5 µs each, 6 s predicted for a loop that takes 0.1 s.
    items = range(1_000_000)
    advice = pickpool.advise(_add_one, items)
    assert advice.evidence.calls > 1_000, str(advice)
    # (A generous ratio measured in the same test, so a busy machine slows both alike.)
    loop = min(_seconds(lambda: list(map(_add_one, items))) for _ in range(3))
    assert advice.predicted["serial"] < 10 * loop, (str(advice), loop)
    assert (advice.model, advice.kind) == ("serial", "tiny"), str(advice)


def test_a_slow_call_is_not_batched() -> None:
    advice = pickpool.advise(lab.mixed, range(40))
    assert advice.evidence.calls < 40


def test_the_advised_loop_runs_in_chunks_as_a_run_grows_them() -> None:
    # A chunk of one item costs the loop microseconds: advising chunksize=1 for tiny calls
    # would make the advised run many times slower than the run auto makes.
    tiny = decide(evidence(wall=1e-7, cpu=1e-7, gil_held=0.95), items=10**6, machine=TWO_CORES)
    assert (tiny.model, tiny.kind) == ("serial", "tiny")
    assert tiny.chunksize >= 1024
    slow = decide(evidence(wall=0.01, cpu=0.01, gil_held=0.97), items=100, machine=machine(cores=1))
    assert (slow.model, slow.chunksize) == ("serial", 1)
    # The caller's own chunk size is kept.
    mine = decide(
        evidence(wall=1e-7, cpu=1e-7, gil_held=0.95),
        items=10**6,
        options=Options(chunksize=7),
        machine=TWO_CORES,
    )
    assert mine.chunksize == 7


def _seconds(call: Callable[[], object]) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began
