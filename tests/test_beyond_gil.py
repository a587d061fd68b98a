"""Beyond one GIL and one machine: the models some interpreters and installs have, and how
the cost model weighs them. Decisions are tested on injected machine facts; the real thing
runs where this interpreter has it."""

from __future__ import annotations

import dataclasses
import sys
import threading

import pytest

import pickpool
import pickpool.lab
from pickpool import _machine
from pickpool._advise import decide
from pickpool._backends import _interpreters
from pickpool._backends._dask import Cluster
from pickpool._machine import Machine
from tests import interpreter_helpers
from tests.helpers import machine
from tests.test_advise import TWO_CORES, evidence

FREE_THREADED = machine(cores=2, gil=False, start_method="forkserver", server_running=True)


def square(x: int) -> int:
    return x * x


# Free-threaded CPython -----------------------------------------------------------------------


def test_free_threaded_pure_python_goes_to_threads() -> None:
    # What the probe measures on a free-threaded build: no GIL held, 2 threads twice as fast.
    ev = evidence(gil_held=0.0, threads=2, scaling=2.0)
    advice = decide(ev, items=200, machine=FREE_THREADED)
    assert (advice.model, advice.workers, advice.kind) == ("threads", 2, "cpu-nogil"), str(advice)
    # The same numbers under a GIL (a knocker reading of 0.97) send it to processes.
    held = decide(evidence(gil_held=0.97), items=200, machine=TWO_CORES)
    assert held.model == "processes"


def test_free_threaded_heavy_pickling_favours_threads_even_more() -> None:
    ev = evidence(gil_held=0.0, threads=2, scaling=2.0, item_bytes=4_000_000, item_pickle=2e-3)
    assert decide(ev, items=200, machine=FREE_THREADED).model == "threads"


@pytest.mark.parametrize(("threads", "scaling"), [(2, 1.3), (3, 1.5), (4, 1.6)])
def test_free_threaded_threads_that_contend_are_held_to_their_reading(
    threads: int, scaling: float
) -> None:
    # Without a GIL, threads that count references to one object they share (on 3.13t, a
    # function's numeric constant) read well short of the cores: more threads than the test
    # ran share the same two cores, so none is predicted past the reading, and processes,
    # which share nothing, are advised. The advice says what the reading means.
    ev = evidence(gil_held=0.0, threads=threads, scaling=scaling)
    advice = decide(ev, items=200, machine=FREE_THREADED)
    assert advice.model == "processes", str(advice)
    assert advice.predicted["threads"] >= 200 * ev.wall / scaling, str(advice)
    assert advice.predicted["asyncio"] >= 200 * ev.wall / scaling, str(advice)
    assert "short of the 2x the cores allow" in str(advice), str(advice)


@pytest.mark.parametrize("others", [0.0, 2.0])
def test_free_threaded_tiny_calls_stay_in_a_loop(others: float) -> None:
    # Calls too short to time side by side: no GIL to hold them back, but no speedup measured
    # either, and the hand-off costs more than the call. Beside other programs' computing the
    # loop's calls take longer, and so would the threads'.
    ev = evidence(wall=2e-7, cpu=2e-7, gil_held=None, length=100_000, others=others)
    advice = decide(ev, items=100_000, machine=FREE_THREADED)
    assert advice.model == "serial", str(advice)


@pytest.mark.skipif(
    getattr(sys, "_is_gil_enabled", lambda: True)(), reason="needs a free-threaded build"
)
def test_free_threaded_for_real() -> None:
    # Without the GIL, pure Python goes to threads where threads are seen to scale, and not
    # where they are not. Which one this function is on 3.13t varies from run to run (its
    # threads ran 0.75x to 1.7x a loop, CPython's own ThreadPoolExecutor alike: threads share
    # the function's numeric constant, whose reference count 3.13t updates atomically), so
    # the advice is held to what its own probe measured.
    advice = pickpool.advise(pickpool.lab.crunch, range(20))
    ev = advice.evidence
    ideal = min(ev.threads, _machine.cores())
    assert advice.kind == "cpu-nogil", str(advice)
    assert ev.scaling is not None, str(advice)
    if ev.scaling >= 0.9 * ideal:
        assert advice.model == "threads", str(advice)
    elif ev.scaling < 1.2:
        assert advice.model != "threads", str(advice)
        assert "more threads do not help" in str(advice)
    elif ev.scaling < 0.8 * ideal:
        assert "short of the" in str(advice)


# Sub-interpreters -------------------------------------------------------------------------------


@pytest.mark.skipif(_interpreters.available(), reason="this interpreter has sub-interpreters")
def test_interpreters_say_why_they_are_unavailable() -> None:
    with pytest.raises(pickpool.BackendUnavailable, match=r"Python 3\.14 or later"):
        pickpool.imap(square, range(3), model="interpreters")  # at the call, even for imap


@pytest.mark.skipif(not _interpreters.available(), reason="needs Python 3.14+")
def test_interpreters_return_what_the_loop_returns() -> None:
    squares = pickpool.map(interpreter_helpers.square, range(100), model="interpreters")
    assert squares == [x * x for x in range(100)]
    with pytest.raises(ZeroDivisionError):
        pickpool.map(lambda x: 1 // (x - 3), range(5), model="interpreters")


@pytest.mark.skipif(not _interpreters.available(), reason="needs Python 3.14+")
def test_interpreters_stay_warm_between_runs_of_the_same_size(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # As worker processes do: a second run of the same size runs in the first one's
    # interpreters (no new interpreter, no imports again); another size starts its own.
    def ids(workers: int) -> set[int]:
        got = pickpool.map(
            interpreter_helpers.interpreter_id, range(8), model="interpreters", workers=workers
        )
        assert 0 not in got  # (in sub-interpreters, not a worker process's main one)
        return set(got)

    first = ids(2)
    assert (_interpreters.warm.workers, _interpreters.warm.started) == (2, 2)
    assert ids(2) <= first
    assert not ids(1) & first
    # The pool starts its workers as chunks come: one item, one of three started.
    pickpool.map(interpreter_helpers.interpreter_id, [0], model="interpreters", workers=3)
    assert (_interpreters.warm.workers, _interpreters.warm.started) == (3, 1)
    # A run that left a chunk running past its timeout keeps no pool: one of its threads is
    # still busy.
    ids(2)
    with caplog.at_level("WARNING", logger="pickpool"):
        got = pickpool.map(
            interpreter_helpers.sleepy,
            [0.0, 2.0],
            model="interpreters",
            workers=2,
            timeout=0.5,
            on_error="skip",
        )
    assert got == [0.0]
    assert "left to finish" in caplog.text
    assert _interpreters.warm.take(2) is None


@pytest.mark.skipif(not _interpreters.available(), reason="needs Python 3.14+")
def test_a_module_that_refuses_sub_interpreters_runs_on_processes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The function's module imports numpy, which cannot load in a sub-interpreter: no item
    # had run, so every chunk goes to worker processes instead, each item once, and the log
    # says why.
    pytest.importorskip("numpy")
    from tests import refusing_helpers

    with caplog.at_level("WARNING", logger="pickpool"):
        got = pickpool.map(refusing_helpers.total, range(40), model="interpreters", chunksize=4)
    assert got == [refusing_helpers.total(n) for n in range(40)]
    assert "cannot load in a sub-interpreter" in caplog.text
    assert "does not support loading in subinterpreters" in caplog.text


@pytest.mark.skipif(not _interpreters.available(), reason="needs Python 3.14+")
def test_a_call_that_imports_a_refusing_module_runs_again_on_processes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The call itself imports numpy: each such item fails in its interpreter at that import,
    # and runs again, whole, on a worker process; the log says why.
    pytest.importorskip("numpy")
    with caplog.at_level("WARNING", logger="pickpool"):
        got = pickpool.map(
            interpreter_helpers.numpy_total, range(30), model="interpreters", chunksize=4
        )
    assert got == [sum(range(n)) for n in range(30)]
    assert "does not support loading in subinterpreters" in caplog.text


def test_what_a_refusing_module_raises_is_told_apart() -> None:
    refused = ImportError(
        "Importing the numpy C-extensions failed.\n\nOriginal error was: module "
        "numpy._core._multiarray_umath does not support loading in subinterpreters\n"
    )
    outer = RuntimeError("the task failed")
    outer.__cause__ = refused
    assert _interpreters.refuses_interpreters(refused)
    assert _interpreters.refuses_interpreters(outer)
    assert not _interpreters.refuses_interpreters(ImportError("No module named 'numpyy'"))


def test_an_idle_pool_of_interpreters_is_let_go_after_its_lifetime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # (The pool's bookkeeping, on a stand-in for the executor, on any Python.)
    class Pool:
        def __init__(self) -> None:
            self.stopped = threading.Event()

        def shutdown(self, wait: bool) -> None:
            self.stopped.set()

    kept = _interpreters._WarmPool()
    taken, expiring = Pool(), Pool()
    kept.park(2, taken)
    assert kept.take(2) is taken  # (taken before its time: not stopped)
    monkeypatch.setattr(_interpreters, "IDLE_LIFETIME", 0.05)
    kept.park(2, expiring)
    assert expiring.stopped.wait(timeout=30)
    assert kept.workers == 0
    assert kept.take(2) is None
    assert not taken.stopped.is_set()
    kept.clear()


def test_interpreters_are_weighed_where_they_exist() -> None:
    def cold_or_warm(server_running: bool) -> Machine:
        return machine(
            cores=2,
            gil=True,
            start_method="forkserver",
            server_running=server_running,
            interpreters=True,
        )

    assert "interpreters" not in decide(evidence(), items=200, machine=TWO_CORES).predicted
    # A short batch of pure Python: with no fork server up yet, sub-interpreters (started in a
    # thread) are predicted faster than processes; with it up, processes start faster.
    cold = decide(evidence(gil_held=0.97), items=8, machine=cold_or_warm(server_running=False))
    assert cold.predicted["interpreters"] < cold.predicted["processes"], str(cold)
    assert cold.model == "interpreters", str(cold)
    warm = decide(evidence(gil_held=0.97), items=8, machine=cold_or_warm(server_running=True))
    assert warm.predicted["processes"] < warm.predicted["interpreters"], str(warm)
    # Interpreters kept warm from an earlier run of two: a run of two starts in no time.
    up = cold_or_warm(server_running=True)
    kept = dataclasses.replace(up, facts={**up.facts, "interpreters": _interpreters.Ready(2, 2)})
    again = decide(evidence(gil_held=0.97), items=8, machine=kept)
    assert again.predicted["interpreters"] < warm.predicted["interpreters"], str(again)
    assert again.sizes["interpreters"][0] == warm.sizes["interpreters"][0] == 2
    # Each starts in its own thread: two on two cores start in the time of one.
    started = warm.predicted["interpreters"] - again.predicted["interpreters"]
    assert started == pytest.approx(_interpreters.INTERPRETER_START), str(warm)
    # A pool of two kept from a run of one item started one worker: the other starts now.
    half = dataclasses.replace(up, facts={**up.facts, "interpreters": _interpreters.Ready(2, 1)})
    one_more = decide(evidence(gil_held=0.97), items=8, machine=half)
    assert one_more.sizes["interpreters"][0] == 2
    started = one_more.predicted["interpreters"] - again.predicted["interpreters"]
    assert started == pytest.approx(_interpreters.INTERPRETER_START), str(one_more)


# A dask cluster --------------------------------------------------------------------------------


def test_a_big_cluster_wins_slow_items() -> None:
    cluster_machine = machine(
        cores=2,
        gil=True,
        start_method="forkserver",
        server_running=True,
        cluster=Cluster(threads=64, round_trip=0.005),
    )
    advice = decide(evidence(gil_held=0.97, wall=0.5, cpu=0.5), items=1000, machine=cluster_machine)
    assert (advice.model, advice.workers) == ("dask", 64), str(advice)
    assert advice.options["model"] == "dask"


def test_a_cluster_does_not_win_quick_items() -> None:
    cluster_machine = machine(
        cores=2,
        gil=True,
        start_method="forkserver",
        server_running=True,
        cluster=Cluster(threads=2, round_trip=0.005),
    )
    advice = decide(
        evidence(gil_held=0.97, wall=1e-5, cpu=1e-5), items=1000, machine=cluster_machine
    )
    assert "dask" in advice.predicted
    assert advice.model != "dask", str(advice)


def test_without_a_cluster_the_error_says_what_to_do() -> None:
    distributed = pytest.importorskip("distributed")
    if distributed.client._get_global_client() is not None:
        pytest.skip("a default client is active in this process")
    with pytest.raises(pickpool.BackendUnavailable, match="no client is active"):
        pickpool.imap(square, range(3), model="dask")  # at the call, even for imap


def test_without_the_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(pickpool.BackendUnavailable, match=r"pickpool\[dask\]"):
        pickpool.map(square, range(3), model="dask")
