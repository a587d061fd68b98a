"""Drop-ins: ``pickpool.Executor``, the builtins' call shapes, and per-worker state."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import logging
import os
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

import pickpool
from pickpool import lab
from pickpool._api import Model

from . import helpers
from .conftest import GIL
from .helpers import crash, hang_on

pytestmark = pytest.mark.timeout(120)

# What an initializer sets, and the function reads, in each worker.
STATE: dict[str, Any] = {}


def remember(value: object) -> None:
    STATE["value"] = value


def recall(x: int) -> tuple[int, object]:
    return x, STATE.get("value")


def refuse(*_: object) -> None:
    raise ValueError("no database here")


def pid_of(_: object) -> int:
    return os.getpid()


def spin(seconds: float) -> int:
    """Pure-Python work for about ``seconds``: it holds the GIL."""
    end, n = time.thread_time() + seconds, 0
    while time.thread_time() < end:
        n += 1
    return n


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def scaled(x: int, *, factor: int = 1, offset: int = 0) -> int:
    return x * factor + offset


async def aadd(x: int, y: int) -> int:
    await asyncio.sleep(0)
    return x + y


# Executor --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["serial", "threads", "processes", "asyncio", "auto"])
def test_executor_runs_the_same_calls_on_every_model(model: Model) -> None:
    with pickpool.Executor(model, 2) as ex:
        assert ex.submit(pow, 2, 8).result() == 256
        assert ex.submit(scaled, 3, factor=2, offset=1).result() == 7
        assert list(ex.map(pow, range(6), range(6), chunksize=4)) == [i**i for i in range(6)]
        with pytest.raises(ZeroDivisionError):
            ex.submit(divmod, 1, 0).result()
        # A coroutine function is run to its end: its future holds the coroutine's result
        # (submit's type, Future[T] of fn's return, says a coroutine).
        ran: object = ex.submit(aadd, 1, 2).result()
        assert ran == 3


def test_executor_sends_lambdas_to_processes() -> None:
    with pickpool.Executor("processes", 2) as ex:
        offset = 10
        assert ex.submit(lambda x: x + offset, 1).result() == 11


def test_a_crash_fails_only_its_future_and_the_executor_goes_on() -> None:
    with pickpool.Executor("processes", 2) as ex:
        futures = [ex.submit(crash, x) for x in range(6)]
        crashed = futures[3].exception()
        assert isinstance(crashed, pickpool.WorkerCrashed)
        assert "the call" in str(crashed)
        assert "item" not in str(crashed)
        assert [f.result() for i, f in enumerate(futures) if i != 3] == [0, 1, 2, 4, 5]
        assert ex.submit(pow, 3, 2).result() == 9


def test_a_timeout_kills_only_the_stuck_worker() -> None:
    with pickpool.Executor("processes", 2, timeout=0.5) as ex:
        futures = [ex.submit(hang_on, x) for x in (0, 1, -60, 3, 4)]
        assert isinstance(futures[2].exception(), pickpool.TaskTimeout)
        assert [f.result() for i, f in enumerate(futures) if i != 2] == [0, 1, 3, 4]


def test_run_in_executor_and_as_completed() -> None:
    async def main(ex: pickpool.Executor) -> list[int]:
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(ex, pow, i, 2) for i in range(5))))

    with pickpool.Executor("threads", 3) as ex:
        assert asyncio.run(main(ex)) == [0, 1, 4, 9, 16]
        done = {f.result() for f in cf.as_completed([ex.submit(nap, 0.01) for _ in range(4)])}
        assert done == {0.01}


def test_auto_routes_each_function_by_its_first_call(caplog: pytest.LogCaptureFixture) -> None:
    # A fetch-like wait goes to threads, a pure-Python computation to processes: one
    # executor, two models, and the decision in the log and in .routes.
    seconds = 0.05
    with caplog.at_level(logging.INFO, logger="pickpool"), pickpool.Executor() as ex:
        waits = [ex.submit(nap, 0.05) for _ in range(4)]
        computes = [ex.submit(spin, seconds) for _ in range(4)]
        assert [f.result() for f in waits] == [0.05] * 4
        assert all(f.result() > 0 for f in computes)
        routes = ex.routes
    assert routes[f"{__name__}.nap"] == "threads"
    expected = "processes" if os.cpu_count() and pickpool._machine.cores() > 1 else "threads"
    if not GIL:
        expected = "threads"  # (pure Python computes in parallel on threads there)
    assert routes[f"{__name__}.spin"] in (expected, "processes")
    assert any("auto routes" in r.getMessage() and "spin" in r.getMessage() for r in caplog.records)


def test_auto_tells_c_that_releases_the_gil_from_python_that_holds_it() -> None:
    # The same evidence and cost model as pickpool.map's auto: the first call's clocks and
    # the GIL it held. hashlib computes in C, the GIL released; crunch computes in Python.
    with pickpool.Executor() as ex:
        # (Enough calls that the probe, which times a function's calls until they tell
        # enough, decides before they run out.)
        assert all(f.result() for f in [ex.submit(lab.digest, x) for x in range(12)])
        assert all(f.result() >= 0 for f in [ex.submit(lab.crunch, x) for x in range(6)])
        advice = ex.advice
    digest, crunch = advice["pickpool.lab.digest"], advice["pickpool.lab.crunch"]
    assert digest.kind == "cpu-nogil", str(digest)
    assert crunch.kind == ("cpu" if GIL else "cpu-nogil"), str(crunch)
    assert ex.routes["pickpool.lab.crunch"] == crunch.model
    if GIL and pickpool._machine.cores() > 1:
        assert crunch.model == "processes", str(crunch)
    # Never one call at a time: an executor's calls may wait on each other.
    assert {digest.model, crunch.model} <= {"threads", "processes", "asyncio"}


def test_shutdown_cancels_what_has_not_started() -> None:
    ex = pickpool.Executor("threads", 1)
    futures = [ex.submit(nap, 0.05) for _ in range(10)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert futures[0].result() == 0.05
    assert sum(f.cancelled() for f in futures) >= 8
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(pow, 1, 1)


@pytest.mark.parametrize("model", ["threads", "processes", "serial"])
def test_executor_initializer_sets_state_each_call_sees(model: Model) -> None:
    with pickpool.Executor(model, 2, initializer=remember, initargs=("db",)) as ex:
        assert [f.result() for f in [ex.submit(recall, i) for i in range(4)]] == [
            (i, "db") for i in range(4)
        ]


def test_executor_initializer_that_raises_fails_the_calls() -> None:
    with pickpool.Executor("processes", 1, initializer=refuse) as ex:
        error = ex.submit(pow, 2, 2).exception()
    assert isinstance(error, ValueError)
    assert "no database" in str(error)


def test_max_tasks_per_child_replaces_workers() -> None:
    with pickpool.Executor("processes", 1, max_tasks_per_child=2) as ex:
        pids = [ex.submit(pid_of, i).result() for i in range(6)]
    assert len(set(pids)) == 3
    with pytest.raises(ValueError, match="worker processes"):
        pickpool.Executor("threads", max_tasks_per_child=2)


def test_bad_executor_options_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        pickpool.Executor("threads", 0)
    with pytest.raises(ValueError, match=r"distributed\.Client"):
        pickpool.Executor("dask")
    with pytest.raises(TypeError, match="initializer"):
        pickpool.Executor("threads", initializer=3)  # type: ignore[arg-type]  # on purpose


# The builtins' call shapes ---------------------------------------------------------------------


def test_map_zips_several_iterables_like_the_builtin(model: Model) -> None:
    xs, ys = [1, 2, 3, 4], (10, 20, 30)
    assert pickpool.map(pow, xs, ys, model=model) == list(map(pow, xs, ys))
    assert list(pickpool.imap(pow, xs, ys, model=model)) == list(map(pow, xs, ys))
    assert asyncio.run(pickpool.amap(pow, xs, ys, model=model)) == list(map(pow, xs, ys))
    assert pickpool.map(aadd, xs, ys, model=model) == [11, 22, 33]


def test_starmap_and_partial_keywords(model: Model) -> None:
    pairs = [(2, 3), (3, 2), (10, 0)]
    assert pickpool.starmap(pow, pairs, model=model) == [8, 9, 1]
    with_keywords = functools.partial(scaled, factor=3, offset=1)
    assert pickpool.map(with_keywords, range(4), model=model) == [1, 4, 7, 10]


def test_a_failure_of_several_iterables_names_the_tuple() -> None:
    results = pickpool.map(divmod, [1, 2], [1, 0], model="threads", on_error="collect")
    assert results[0] == (1, 0)
    assert isinstance(results[1], pickpool.Failure)
    assert results[1].item == (2, 0)


def test_a_non_iterable_second_argument_says_which() -> None:
    with pytest.raises(TypeError, match="iterable 2"):
        pickpool.map(pow, [1], 5, model="serial")  # type: ignore[call-overload]  # on purpose


@pytest.mark.parametrize("model", ["asyncio", "threads", "processes"])
def test_aimap_yields_results_as_they_come(model: Model) -> None:
    async def main() -> list[int]:
        return [r async for r in pickpool.aimap(pow, range(50), [2] * 50, model=model)]

    assert asyncio.run(main()) == [i**2 for i in range(50)]


def test_aimap_stops_the_run_when_the_loop_breaks() -> None:
    async def main() -> list[float]:
        taken = []
        results = pickpool.aimap(nap, [0.01] * 1000, model="threads", workers=4)
        async for r in results:
            taken.append(r)
            if len(taken) == 3:
                break
        assert isinstance(results, pickpool.AsyncResults)  # an async iterator, with aclose
        await results.aclose()
        return taken

    started = time.monotonic()
    assert asyncio.run(main()) == [0.01] * 3
    assert time.monotonic() - started < 5  # not the 2.5 s the whole input would take, and more


# Per-worker state in map -----------------------------------------------------------------------


@pytest.mark.parametrize("model", ["serial", "threads", "processes", "asyncio", "auto"])
def test_map_initializer_sets_what_the_function_sees(model: Model) -> None:
    got = pickpool.map(recall, range(20), model=model, initializer=remember, initargs=(7,))
    assert got == [(i, 7) for i in range(20)]


def test_map_initializer_and_function_from_main_share_their_globals(tmp_path: Any) -> None:
    # Both defined in __main__ travel by value; in one pickle they share one copy of the
    # module's globals, so the table the initializer loads is the one the function reads.
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            import pickpool

            TABLE = {}

            def load(n):
                TABLE.update({i: i * i for i in range(n)})

            def look(x):
                return TABLE[x]

            if __name__ == "__main__":
                print(pickpool.map(look, range(5), model="processes", workers=2,
                                   initializer=load, initargs=(10,)))
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[0, 1, 4, 9, 16]"


def test_map_max_tasks_per_child() -> None:
    pids = pickpool.map(pid_of, range(8), model="processes", workers=1, max_tasks_per_child=2)
    assert len(set(pids)) == 4
    with pytest.raises(ValueError, match="worker processes"):
        pickpool.map(pid_of, range(2), model="threads", max_tasks_per_child=2)


def _closure_over(table: bytes) -> Any:
    def look(i: int) -> int:
        return table[i % len(table)]

    return look


def test_the_probe_counts_what_the_function_carries() -> None:
    # Shipped once to each worker process, a closure's data is a cost per worker, not per item.
    small = pickpool.advise(_closure_over(b"x" * 100), range(200), budget=0.2).evidence
    big = pickpool.advise(_closure_over(b"x" * 20_000_000), range(200), budget=0.2).evidence
    assert big.fn_bytes > 20_000_000 > small.fn_bytes
    assert big.fn_pickle > small.fn_pickle


def _init_fails() -> None:
    raise LookupError("no config")


def test_a_failing_initializer_fails_threads_items_with_its_own_error() -> None:
    with pytest.raises(LookupError, match="no config"):
        pickpool.map(abs, range(3), model="threads", initializer=_init_fails)


def test_initializer_is_refused_where_workers_cannot_run_it() -> None:
    with pytest.raises(ValueError, match="initializer is not supported under model='dask'"):
        pickpool.map(abs, [1], model="dask", initializer=_init_fails)


@pytest.mark.timeout(30)
def test_a_cancelled_error_raised_by_the_function_is_raised_under_asyncio() -> None:
    import asyncio

    async def refuses(x: int) -> int:
        if x == 1:
            raise asyncio.CancelledError("the far side cancelled it")
        return x

    # A BaseException, raised as the plain loop raises it (it used to leave its item with no
    # outcome, and the run waiting for it forever).
    with pytest.raises(asyncio.CancelledError, match="the far side"):
        pickpool.map(refuses, range(3), model="asyncio", on_error="collect")


# The standard executors' contract, where pickpool used to differ ---------------------------


def test_an_executor_dropped_while_its_map_is_read_shuts_down() -> None:
    import gc
    import weakref

    executor = pickpool.Executor(model="threads", max_workers=2)
    results = executor.map(abs, range(-4, 4))  # (all taken at once: 4 calls ahead per worker)
    alive = weakref.ref(executor)
    del executor
    gc.collect()
    assert alive() is None  # the map's iterator does not keep it
    assert list(results) == [abs(v) for v in range(-4, 4)]  # what it had taken still runs


def test_a_dropped_executor_s_map_with_calls_left_says_so() -> None:
    import gc

    executor = pickpool.Executor(model="threads", max_workers=1)
    results = executor.map(abs, range(100), buffersize=2)
    del executor
    gc.collect()
    with pytest.raises(RuntimeError, match="garbage-collected while its map"):
        list(results)


def test_a_crash_is_a_broken_executor_to_code_that_catches_one() -> None:
    with pickpool.Executor(model="processes", max_workers=1) as executor:
        future = executor.submit(crash, 3)
        with pytest.raises(cf.BrokenExecutor):
            future.result()
        assert executor.submit(crash, 1).result() == 1  # the executor goes on


# Set as the tests are collected, before any fork server starts: so that it inherits it.
os.environ["PICKPOOL_UNSET_LATE"] = "early"


def test_new_workers_see_the_environment_as_it_is_when_they_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The fork server (or a warm worker) started before the change; new workers see it.
    read_variable = helpers.read_variable  # (workers import helpers, not this module)
    pickpool.map(read_variable, ["HOME"], model="processes", workers=1)
    monkeypatch.setenv("PICKPOOL_SET_LATE", "late")
    monkeypatch.delenv("PICKPOOL_UNSET_LATE", raising=False)
    names = ["PICKPOOL_SET_LATE", "PICKPOOL_UNSET_LATE"]
    got = pickpool.map(read_variable, names, model="processes", workers=1, fresh_workers=True)
    assert got == ["late", None]
    with pickpool.Executor(model="processes", max_workers=1) as executor:
        assert executor.submit(read_variable, "PICKPOOL_SET_LATE").result() == "late"


def test_a_cap_on_native_pools_you_give_reaches_the_workers_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As loky does with inner_max_num_threads: a library that sizes its pool as it loads, and a
    # process the call starts, see the cap; with no cap of yours, your variable is kept.
    import joblib  # type: ignore[import-untyped]

    import pickpool.joblib  # (registers the backend)

    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    names = ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"]
    read = helpers.read_variable
    assert pickpool.map(read, names, model="processes", workers=2) == ["4", None]
    capped = pickpool.map(read, names, model="processes", workers=2, inner_threads=1)
    assert capped == ["1", "1"]
    with joblib.parallel_config(backend="pickpool", inner_max_num_threads=2):
        got = joblib.Parallel(n_jobs=2)(joblib.delayed(read)(name) for name in names)
    assert got == ["2", "2"]


@pytest.mark.timeout(60)
def test_initargs_may_carry_a_multiprocessing_queue() -> None:
    # As ProcessPoolExecutor takes them: such objects cross to a process only as it starts.
    import multiprocessing
    import queue as queues

    from pickpool import _machine

    q: Any = multiprocessing.get_context(_machine.start_method()).Queue()
    try:
        keep, args = helpers.keep_queue, (q,)
        got = pickpool.map(
            helpers.put_in_queue, range(4), model="processes", initializer=keep, initargs=args
        )
        assert got == [0, 1, 2, 3]
        with pickpool.Executor("processes", 1, initializer=keep, initargs=args) as executor:
            assert executor.submit(helpers.put_in_queue, 4).result() == 4
        seen = []
        for _ in range(5):
            try:
                seen.append(q.get(timeout=10))
            except queues.Empty:
                break
        assert sorted(seen) == [0, 1, 2, 3, 4]
    finally:
        q.close()
        q.join_thread()


def test_a_queue_of_another_start_method_gets_a_message_that_says_which() -> None:
    import multiprocessing

    from pickpool import _machine

    method = _machine.start_method()
    if method == "fork":
        pytest.skip("workers start with fork here: a fork-context queue crosses")
    q: Any = multiprocessing.get_context("fork").Queue()
    try:
        with pytest.raises(RuntimeError, match=rf"multiprocessing.get_context\('{method}'\)"):
            pickpool.map(
                helpers.put_in_queue, range(2), model="processes",
                initializer=helpers.keep_queue, initargs=(q,),
            )  # fmt: skip
    finally:
        q.close()
        q.join_thread()


def test_map_buffersize_is_checked_in_the_standard_library_s_words() -> None:
    # As Python 3.14's Executor.map says it (its own tests match these messages).
    with pickpool.Executor(model="threads", max_workers=1) as executor:
        for wrong in ("foo", 2.0, True):
            with pytest.raises(TypeError, match="buffersize must be an integer or None"):
                executor.map(str, range(4), buffersize=wrong)  # type: ignore[arg-type]
        for wrong in (0, -1):
            with pytest.raises(ValueError, match=r"buffersize must be None or > 0"):
                executor.map(str, range(4), buffersize=wrong)
        assert list(executor.map(str, range(4), buffersize=1)) == ["0", "1", "2", "3"]


@pytest.mark.timeout(60)
def test_mp_context_says_how_the_executor_s_workers_start() -> None:
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    with pickpool.Executor(model="processes", max_workers=1, mp_context=spawn) as executor:
        # Spawned by this process itself (a fork server's children have it as their parent).
        assert executor.submit(os.getppid).result() == os.getpid()
    with pytest.raises(TypeError, match="mp_context must be a multiprocessing context"):
        pickpool.Executor(mp_context="spawn")


def test_a_new_executor_takes_the_warm_workers_an_earlier_one_left() -> None:
    # Start-up (and the imports a worker did) is paid once per program, as with loky's
    # reusable executor; workers that an initializer sets up are the executor's own.
    def pids(**options: Any) -> set[int]:
        with pickpool.Executor(model="processes", max_workers=2, **options) as executor:
            return {pid for pid, _ in executor.map(helpers.where, range(8))}

    first = pids()
    assert os.getpid() not in first
    assert pids() <= first
    assert not pids(initializer=remember, initargs=("db",)) & first


@pytest.mark.timeout(120)
def test_a_worker_traceback_of_a_main_function_names_its_file_and_line(tmp_path: Any) -> None:
    # Functions of __main__ travel by value; their traceback still points into the script,
    # with the line's source, as ProcessPoolExecutor's does (in a remote traceback, and in an
    # executor's future's exception).
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            import pickpool

            def parse(text):
                return 10 // int(text)

            if __name__ == "__main__":
                _, failure = pickpool.map(parse, ["1", "0"], model="processes",
                                          on_error="collect")
                print(failure.traceback)
                with pickpool.Executor("processes", 1) as executor:
                    error = executor.submit(parse, "0").exception()
                print(error.__cause__)
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.count(f'File "{script}", line 5, in parse') == 2, out.stdout
    assert out.stdout.count("return 10 // int(text)") == 2
    assert "<dynamic-code>" not in out.stdout


def thread_name(_: object) -> str:
    import threading

    return threading.current_thread().name


def test_thread_name_prefix_names_the_threads_that_run_the_calls() -> None:
    with pickpool.Executor("threads", 2, thread_name_prefix="db") as executor:
        names = set(executor.map(thread_name, range(20)))
    assert names
    assert names <= {"db_0", "db_1"}
    # Its threads are warm ones: they go back under pickpool's own name.
    with pickpool.Executor("threads", 2) as executor:
        assert set(executor.map(thread_name, range(20))) <= {"pickpool-thread"}
    with pytest.raises(TypeError, match="thread_name_prefix must be a string"):
        pickpool.Executor("threads", thread_name_prefix=3)  # type: ignore[arg-type]  # on purpose
