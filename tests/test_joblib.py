"""The ``"pickpool"`` joblib backend: joblib and scikit-learn code run unchanged on it.

Results and errors are compared with joblib's default backend (loky), computed once per module;
the conftest's ``no_leaks`` fixture also fails any test that leaves a worker process behind.
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import pickpool
from pickpool._backends import _processes
from tests.conftest import _children, _wait_until
from tests.helpers import Boom, hang_on

joblib = pytest.importorskip("joblib")
pickpool_joblib = importlib.import_module("pickpool.joblib")
PickpoolBackend = pickpool_joblib.PickpoolBackend

MODELS = ["processes", "threads"]
ITEMS = range(12)


def scaled(x: int, *, scale: int = 1, offset: int = 0) -> int:
    return x * x * scale + offset


def fails_on_five(x: int) -> int:
    if x == 5:
        raise Boom(f"item {x} fails")
    return x


def exits_on_three(x: int) -> int:
    if x == 3:
        os._exit(3)
    return x


def where(_: object) -> tuple[int, str]:
    return os.getpid(), threading.current_thread().name


def nested(x: int) -> tuple[str, list[int]]:
    """A Parallel call inside a task: which backend it gets, and its results."""
    backend, _ = joblib.parallel.get_active_backend()
    inner = joblib.Parallel(n_jobs=2)(joblib.delayed(scaled)(x, offset=i) for i in range(3))
    return type(backend).__name__, inner


def import_numpy() -> None:
    import numpy  # noqa: F401


def blas_threads(_: object) -> list[int]:
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def run(fn: Callable[..., Any], items: Any, n_jobs: int = 2, **kwargs: Any) -> list[Any]:
    return list(joblib.Parallel(n_jobs=n_jobs)(joblib.delayed(fn)(x, **kwargs) for x in items))


def iris_scores() -> tuple[Any, dict[str, Any], float]:
    """scikit-learn on joblib with n_jobs=2: cross-validation scores and a grid search."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    X, y = load_iris(return_X_y=True)
    scores = cross_val_score(
        LogisticRegression(max_iter=1000), X, y, cv=StratifiedKFold(5), n_jobs=2
    )
    grid = GridSearchCV(
        DecisionTreeClassifier(random_state=0),
        {"max_depth": [1, 2, 3, None], "min_samples_leaf": [1, 5]},
        cv=StratifiedKFold(3),
        n_jobs=2,
    ).fit(X, y)
    return scores, grid.best_params_, grid.best_score_


@pytest.fixture(scope="module")
def default() -> dict[str, Any]:
    """What joblib's default backend gives: the reference every backend test compares with."""
    reference: dict[str, Any] = {}
    with joblib.parallel_config(backend="loky"):
        reference["scaled"] = run(scaled, ITEMS, scale=3, offset=1)
        reference["lambda"] = run(lambda x: (x, -x), ITEMS)
        with pytest.raises(Exception) as info:
            run(fails_on_five, ITEMS)
        reference["error"] = (type(info.value), str(info.value))
        if importlib.util.find_spec("sklearn") is not None:
            reference["iris"] = iris_scores()
    # loky keeps its workers for later calls: stopped now, they are not taken for leaks.
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True, kill_workers=True)
    return reference


@pytest.mark.timeout(120)
@pytest.mark.parametrize("model", [*MODELS, "auto"])
def test_results_match_the_default_backend(model: str, default: dict[str, Any]) -> None:
    with joblib.parallel_config(backend="pickpool", model=model):
        assert run(scaled, ITEMS, scale=3, offset=1) == default["scaled"]
        assert run(lambda x: (x, -x), ITEMS) == default["lambda"]
        ran = run(where, range(4))
        generated = joblib.Parallel(n_jobs=2, return_as="generator")(
            joblib.delayed(scaled)(x, scale=3, offset=1) for x in ITEMS
        )
        assert list(generated) == default["scaled"]
    if model == "processes":
        assert all(pid != os.getpid() for pid, _ in ran)
    elif model == "threads":
        assert all(name.startswith("pickpool-thread") for _, name in ran)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("model", MODELS)
def test_a_task_exception_is_raised_as_itself(model: str, default: dict[str, Any]) -> None:
    expected_type, expected_message = default["error"]
    with (
        joblib.parallel_config(backend="pickpool", model=model),
        pytest.raises(Exception) as info,
    ):
        run(fails_on_five, ITEMS)
    assert type(info.value) is expected_type is Boom
    assert str(info.value) == expected_message


@pytest.mark.timeout(120)
@pytest.mark.parametrize("model", MODELS)
def test_scikit_learn_gives_the_default_backends_results(
    model: str, default: dict[str, Any]
) -> None:
    pytest.importorskip("sklearn")
    from numpy.testing import assert_allclose

    expected_scores, expected_params, expected_best = default["iris"]
    with joblib.parallel_config(backend="pickpool", model=model):
        scores, params, best = iris_scores()
    assert_allclose(scores, expected_scores)
    assert params == expected_params
    assert_allclose(best, expected_best)


@pytest.mark.timeout(120)
def test_a_crashing_task_fails_alone_and_no_worker_outlives_the_block() -> None:
    before = _children()
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    with joblib.parallel_config(backend="pickpool", model="processes"):
        with pytest.raises(pickpool.WorkerCrashed, match="exit code 3") as info:
            run(exits_on_three, range(8))
        assert not isinstance(info.value, TerminatedWorkerError)
        # The crash broke nothing: the next call in the same block runs on new workers.
        assert run(exits_on_three, [0, 1, 2, 4, 5]) == [0, 1, 2, 4, 5]
    # Every worker is reaped by the time each Parallel call returns but the idle ones kept warm
    # for the next call (as loky keeps its own), which stop with the warm pool (the fork server
    # that starts them is multiprocessing's, kept for the session, and not counted).
    _processes.warm.clear()
    assert _wait_until(lambda: _children() <= before, 5.0), _children() - before


@pytest.mark.timeout(120)
def test_the_next_parallel_call_reuses_the_warm_workers() -> None:
    with joblib.parallel_config(backend="pickpool", model="processes"):
        first = {pid for pid, _ in run(where, range(40))}
        second = {pid for pid, _ in run(where, range(40))}
    assert os.getpid() not in first
    # (Under load one call may start a second worker late; the next still finds them all.)
    assert second <= first


@pytest.mark.timeout(120)
def test_a_crash_in_a_reused_parallel_leaves_it_working() -> None:
    with (
        joblib.parallel_config(backend="pickpool"),
        joblib.Parallel(n_jobs=2, batch_size=1) as parallel,
    ):
        with pytest.raises(pickpool.WorkerCrashed):
            parallel(joblib.delayed(exits_on_three)(x) for x in range(6))
        assert parallel(joblib.delayed(scaled)(x) for x in range(4)) == [0, 1, 4, 9]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where_given", ["backend", "parallel"])
def test_timeout_kills_a_stuck_task(where_given: str) -> None:
    backend_options = {"timeout": 1} if where_given == "backend" else {}
    parallel_options = {"timeout": 1} if where_given == "parallel" else {}
    start = time.monotonic()
    with joblib.parallel_config(backend="pickpool", **backend_options):
        # joblib's own check may fire first, with multiprocessing's TimeoutError.
        with pytest.raises((TimeoutError, multiprocessing.TimeoutError)):
            joblib.Parallel(n_jobs=2, batch_size=1, **parallel_options)(
                joblib.delayed(hang_on)(x) for x in [0.0, 1.0, -600.0, 2.0]
            )
        # Not waited out: the stuck task's worker was killed.
        assert time.monotonic() - start < 60
        assert run(hang_on, [1.0, 2.0]) == [1.0, 2.0]


@pytest.mark.timeout(120)
def test_max_tasks_per_child_replaces_workers() -> None:
    with joblib.parallel_config(backend="pickpool", max_tasks_per_child=1):
        pids = joblib.Parallel(n_jobs=2, batch_size=1)(
            joblib.delayed(os.getpid)() for _ in range(4)
        )
    assert len(set(pids)) == 4


@pytest.mark.timeout(120)
def test_inner_max_num_threads_caps_native_pools() -> None:
    pytest.importorskip("numpy")
    pytest.importorskip("threadpoolctl")
    with joblib.parallel_config(
        backend="pickpool", inner_max_num_threads=2, initializer=import_numpy
    ):
        pools = run(blas_threads, range(4))
    if not any(pools):
        pytest.skip("numpy has no BLAS thread pool here")
    assert all(threads == [2] * len(threads) for threads in pools)


@pytest.mark.timeout(120)
def test_ways_to_choose_the_backend() -> None:
    def names(parallel: Any) -> set[str]:
        return {name for _, name in parallel(joblib.delayed(where)(x) for x in range(4))}

    with joblib.parallel_config(backend=PickpoolBackend(model="threads")):
        assert names(joblib.Parallel(n_jobs=2)) == {"pickpool-thread"}
    with joblib.parallel_backend("pickpool", n_jobs=2, model="threads"):
        assert names(joblib.Parallel()) == {"pickpool-thread"}
    assert names(joblib.Parallel(n_jobs=2, backend=PickpoolBackend(model="threads"))) == {
        "pickpool-thread"
    }
    pids = joblib.Parallel(n_jobs=2, backend="pickpool")(joblib.delayed(where)(x) for x in range(2))
    assert all(pid != os.getpid() for pid, _ in pids)


def test_n_jobs_follows_joblibs_rules_on_the_usable_cores() -> None:
    from pickpool import _machine

    cores = _machine.cores()
    backend = PickpoolBackend()
    assert backend.effective_n_jobs(-1) == cores
    assert backend.effective_n_jobs(-2) == max(cores - 1, 1)
    assert backend.effective_n_jobs(-1000) == 1
    assert backend.effective_n_jobs(None) == 1
    assert backend.effective_n_jobs(3) == 3
    assert PickpoolBackend(model="serial").effective_n_jobs(4) == 1
    with pytest.raises(ValueError, match="n_jobs == 0"):
        backend.effective_n_jobs(0)
    with joblib.parallel_config(backend="pickpool"):
        assert joblib.effective_n_jobs(-1) == cores
        # n_jobs unset is 1, which joblib runs in the calling thread, with no worker started.
        assert (
            joblib.Parallel()(joblib.delayed(where)(x) for x in range(2))
            == [(os.getpid(), threading.current_thread().name)] * 2
        )


@pytest.mark.timeout(120)
def test_nested_calls_run_on_threads_inside_workers() -> None:
    with joblib.parallel_config(backend="pickpool"):
        results = run(nested, range(3))
    assert results == [("ThreadingBackend", [x * x + i for i in range(3)]) for x in range(3)]


def test_shared_memory_under_threads() -> None:
    seen: list[int] = []
    with joblib.parallel_config(backend="pickpool", model="threads"):
        joblib.Parallel(n_jobs=2, require="sharedmem")(
            joblib.delayed(seen.append)(x) for x in ITEMS
        )
    assert sorted(seen) == list(ITEMS)


def test_options_are_checked_when_given() -> None:
    with pytest.raises(ValueError, match=r"model must be one of.*Client is a concurrent"):
        PickpoolBackend(model="dask")
    with pytest.raises(ValueError, match="max_tasks_per_child is for worker processes"):
        PickpoolBackend(model="threads", max_tasks_per_child=5)
    with pytest.raises(ValueError, match="timeout"):
        PickpoolBackend(timeout=-1)
    with pytest.raises(ValueError, match="inner_threads"):
        PickpoolBackend(inner_threads=0)
    with pytest.raises(TypeError):
        joblib.parallel_config(backend="pickpool", no_such_option=1)
    backend = PickpoolBackend(model="auto", timeout=5, max_tasks_per_child=10)
    assert repr(pickle.loads(pickle.dumps(backend))) == repr(backend)
    assert repr(backend) == "PickpoolBackend(model='auto', timeout=5, max_tasks_per_child=10)"


def test_without_joblib_the_import_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "joblib", None)  # what `import joblib` does when missing
    monkeypatch.delitem(sys.modules, "pickpool.joblib")
    with pytest.raises(ImportError, match="pip install joblib") as info:
        importlib.import_module("pickpool.joblib")
    assert "pickpool[joblib]" in str(info.value)


@pytest.mark.timeout(120)
def test_a_task_finds_the_pickpool_backend_in_its_worker_process() -> None:
    with joblib.parallel_config(backend="pickpool", n_jobs=2):
        from tests.helpers import nested_sum

        assert joblib.Parallel()(joblib.delayed(nested_sum)(n) for n in (3, 4)) == [3, 6]


def test_parallel_hands_its_backend_options_to_the_backend() -> None:
    from tests.test_dropin import recall, remember

    got = joblib.Parallel(n_jobs=2, backend="pickpool", initializer=remember, initargs=(7,))(
        joblib.delayed(recall)(i) for i in range(4)
    )
    assert got == [(i, 7) for i in range(4)]
    with pytest.raises(ValueError, match=r"unknown model|model must be"):
        joblib.Parallel(n_jobs=2, backend="pickpool", model="nope")(
            joblib.delayed(abs)(i) for i in range(2)
        )


def test_a_call_that_prefers_threads_gets_them_unless_a_model_was_chosen() -> None:
    # As under joblib's default (scikit-learn's forests ask for threads: their trees release
    # the GIL, and a process pool would pickle the data to every worker).
    def ran_in(**config: Any) -> set[int]:
        with joblib.parallel_config(backend="pickpool", **config):
            parallel = joblib.Parallel(n_jobs=2, prefer="threads")
            return {pid for pid, _ in parallel(joblib.delayed(where)(i) for i in range(6))}

    assert ran_in() == {os.getpid()}
    assert os.getpid() not in ran_in(model="processes")


def fails_or_hangs(x: int) -> int:
    if x == 0:
        raise Boom("the first task fails")
    return int(hang_on(-600.0))


@pytest.mark.timeout(90)
def test_a_failing_task_stops_the_running_ones_and_raises_at_once() -> None:
    # As loky does: the tasks still running (here, for ten minutes) are stopped, their worker
    # processes killed, and the call raises the failure without waiting for them.
    with joblib.parallel_config(backend="pickpool", model="processes"):
        with pytest.raises(Boom, match="first task fails"):
            joblib.Parallel(n_jobs=2, batch_size=1)(
                joblib.delayed(fails_or_hangs)(x) for x in range(6)
            )
        # Dropping a generator of results stops its running tasks too.
        results = joblib.Parallel(n_jobs=2, batch_size=1, return_as="generator")(
            joblib.delayed(hang_on)(x) for x in [0.0, -600.0, -600.0, -600.0]
        )
        assert next(results) == 0.0
        with pytest.warns(UserWarning, match="cancelled"):
            results.close()


def arrives_as(a: Any) -> tuple[str, bool, float]:
    """How an array argument reached the task: its type, whether writable, its sum."""
    return type(a).__name__, bool(a.flags.writeable), float(a.sum())


def first_ten(a: Any) -> Any:
    return a[:10]


@pytest.mark.timeout(120)
def test_large_arrays_reach_worker_processes_as_memory_maps(tmp_path: Any) -> None:
    # As under loky: an argument past max_nbytes (1 MB by default) is written to a file once
    # and mapped read-only by each worker; a small one is pickled; the files go with the call.
    np = pytest.importorskip("numpy")
    big, small = np.arange(300_000, dtype=np.float64), np.ones(10)
    with joblib.parallel_config(backend="pickpool", model="processes", temp_folder=tmp_path):
        with joblib.Parallel(n_jobs=2) as parallel:
            got = parallel(joblib.delayed(arrives_as)(a) for a in [big, small, big])
            assert os.listdir(tmp_path)  # the call's folder, while the call lasts
        assert got == [
            ("memmap", False, float(big.sum())),
            ("ndarray", True, 10.0),
            ("memmap", False, float(big.sum())),
        ]
        assert os.listdir(tmp_path) == []
        # max_nbytes=None pickles every array; mmap_mode="c" maps them copy-on-write.
        pickled = joblib.Parallel(n_jobs=2, max_nbytes=None)([joblib.delayed(arrives_as)(big)])
        assert pickled == [("ndarray", True, float(big.sum()))]
        copied = joblib.Parallel(n_jobs=2, mmap_mode="c")([joblib.delayed(arrives_as)(big)])
        assert copied[0][:2] == ("memmap", True)
        assert os.listdir(tmp_path) == []
    # On threads nothing is pickled: the task gets the caller's own array.
    with joblib.parallel_config(backend="pickpool", model="threads"):
        assert run(arrives_as, [big]) == [("ndarray", True, float(big.sum()))]


@pytest.mark.timeout(120)
def test_a_failed_call_deletes_its_mapped_arrays_too(tmp_path: Any) -> None:
    np = pytest.importorskip("numpy")
    big = np.zeros(300_000)
    config = joblib.parallel_config(backend="pickpool", model="processes", temp_folder=tmp_path)
    with config, pytest.raises(Boom):
        joblib.Parallel(n_jobs=2, batch_size=1)(
            joblib.delayed(fails_on_five)(x) if x == 5 else joblib.delayed(arrives_as)(big)
            for x in range(8)
        )
    assert os.listdir(tmp_path) == []


@pytest.mark.timeout(120)
def test_a_mapped_batch_pickles_to_a_file_name_not_the_data(tmp_path: Any) -> None:
    np = pytest.importorskip("numpy")
    big = np.zeros(1_000_000)  # 8 MB
    memmapping = pickpool_joblib._memmapping(
        None, {"max_nbytes": "1M", "mmap_mode": "r", "temp_folder": str(tmp_path)}
    )
    batch = joblib.parallel.BatchedCalls([joblib.delayed(arrives_as)(big)], ("sequential", 1), None)
    try:
        assert len(pickle.dumps(memmapping.wrap(batch))) < 10_000
        assert memmapping.wrap(batch)() == batch()  # run in this process: the batch itself
    finally:
        memmapping.clean()
    assert os.listdir(tmp_path) == []


@pytest.mark.timeout(120)
def test_an_array_backed_by_the_callers_file_comes_back_mapped(tmp_path: Any) -> None:
    # A memory map of the caller's own file returns as a map of that file, as under loky.
    np = pytest.importorskip("numpy")
    mapped = np.memmap(tmp_path / "data", dtype=np.float64, mode="w+", shape=(300_000,))
    mapped[:] = 7.0
    mapped.flush()
    with joblib.parallel_config(backend="pickpool", model="processes"):
        (back,) = run(first_ten, [mapped])
    assert isinstance(back, np.memmap)
    assert back.filename == mapped.filename
    assert list(back) == [7.0] * 10
