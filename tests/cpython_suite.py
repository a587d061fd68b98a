"""CPython's own tests of ``concurrent.futures``, with ``pickpool.Executor`` in place of the
standard executors.

    make test-cpython      (make test-all runs it on each Python that has the tests)

runs the whole ``test.test_concurrent_futures`` package of the interpreter that runs it (3.13
and later ship it as a package) with this module as a pytest plugin: the suite's executor
mixins make ``pickpool.Executor("threads")`` where they made a ``ThreadPoolExecutor``, and
``pickpool.Executor("processes", mp_context=...)`` under fork, forkserver and spawn where they
made a ``ProcessPoolExecutor``. The tests that start a child interpreter with a script naming
the standard classes run the same script with pickpool's. The tests that read the standard
executors' internals, or where pickpool differs by design, are expected to fail, each with its
reason (:data:`EXCLUDED`); one that passes again is reported as an error.
"""

from __future__ import annotations

from typing import Any, Final

import pytest

import pickpool
from tests.expected_failures import expect_failures

_CRASH = (
    "a worker that dies fails only its own call, with pickpool.WorkerCrashed (a "
    "BrokenExecutor), and the executor goes on; the standard pool breaks (BrokenProcessPool)"
)
_ONE_CALL = (
    "what cannot travel to or from a worker fails only that call, with the error itself (or "
    "pickpool's NotPicklable, a PicklingError); the standard pool breaks (BrokenProcessPool)"
)
_PROCESSES = "counts the standard pool's private worker table (executor._processes)"
_THREADS = "counts the standard pool's private thread set (executor._threads)"
_DEADLOCK = "ProcessPool*ExecutorDeadlockTest::"
_POOL = "ProcessPool*ProcessPoolExecutorTest::"

# Tests, as "Class::test" globs, and why each is expected to fail.
EXCLUDED: Final = {
    _DEADLOCK + "test_crash_at_task_unpickle": _CRASH,
    _DEADLOCK + "test_crash_during_func_exec_on_worker": _CRASH,
    _DEADLOCK + "test_crash_during_result_pickle_on_worker": _CRASH,
    _DEADLOCK + "test_crash_big_data": _CRASH,
    _DEADLOCK + "test_shutdown_deadlock": _CRASH,
    _DEADLOCK + "test_error_at_task_unpickle": _ONE_CALL,
    _DEADLOCK + "test_exit_at_task_unpickle": _ONE_CALL,
    _DEADLOCK + "test_error_during_result_unpickle_in_result_handler": _ONE_CALL,
    _DEADLOCK + "test_exit_during_result_unpickle_in_result_handler": _ONE_CALL,
    _DEADLOCK + "test_exit_during_result_pickle_on_worker": _ONE_CALL,
    _DEADLOCK + "test_shutdown_deadlock_pickle": (
        "reads the standard pool's private manager thread (executor._executor_manager_thread)"
    ),
    _POOL + "test_killed_child": _PROCESSES + "; and " + _CRASH,
    _POOL + "test_saturation": _PROCESSES,
    _POOL + "test_idle_process_reuse_one": _PROCESSES,
    _POOL + "test_idle_process_reuse_multiple": _PROCESSES,
    "ProcessPoolForkProcessPoolExecutorTest::test_max_tasks_per_child": (
        "expects max_tasks_per_child to be refused with a fork context; pickpool replaces "
        "workers there too (a fork from the parent, as any fork-started worker)"
    ),
    _POOL + "test_max_tasks_per_child": _PROCESSES,
    _POOL + "test_max_tasks_per_child_defaults_to_spawn_context": (
        "reads the private executor._mp_context; pickpool's default start method is forkserver, "
        "max_tasks_per_child or not"
    ),
    _POOL + "test_traceback": (
        "checks that the cause is the standard module's private _RemoteTraceback class; "
        "pickpool's cause carries the same worker traceback in its text"
    ),
    _POOL + "test_python_finalization_error": (
        "breaks the standard pool's second internal thread by patching "
        "threading._start_joinable_thread; pickpool's threads start otherwise, and the call runs"
    ),
    "ThreadPoolExecutorTest::test_default_workers": (
        "reads the private executor._max_workers; pickpool's default thread count is its own "
        "(8 per usable core, at most 64: threads mostly wait)"
    ),
    "ThreadPoolExecutorTest::test_idle_thread_reuse": _THREADS,
    "ProcessPool*ProcessPoolShutdownTest::test_processes_terminate": _PROCESSES,
    "*FailingInitializerTest::test_initializer": (
        "a failing initializer fails each call sent to its worker with the initializer's own "
        "exception; the standard pool breaks (BrokenExecutor, executor._broken)"
    ),
    "FailingInitializerResourcesTest::*": (
        "runs the failing-initializer test above inside itself: its failure keeps that test's "
        "multiprocessing.Queue alive, whose semaphores the resource tracker then reports "
        "(the standard pool reports them too when the queue is kept)"
    ),
}

# Tests that cannot run here at all: each fails before it releases the calls it blocked, which
# then hold the interpreter's exit forever (the standard executors' exit waits for them too).
SKIPPED: Final = {
    "ThreadPoolExecutorTest::test_saturation": _THREADS + ", then never releases its calls",
    "ThreadPoolShutdownTest::test_threads_terminate": _THREADS + ", then never releases its calls",
}


class ThreadsExecutor(pickpool.Executor):
    MODEL = "threads"

    def __init__(self, max_workers: int | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(self.MODEL, max_workers, *args, **kwargs)


class ProcessesExecutor(ThreadsExecutor):
    MODEL = "processes"


def _script(test: Any, body: str) -> str:
    """A child interpreter's script that makes the test's executor, pickpool's, as ``t``."""
    model = test.executor_type.MODEL
    context = getattr(test, "ctx", None)
    make = (
        f"pickpool.Executor({model!r}, 5)"
        if context is None
        else f"pickpool.Executor({model!r}, 5, mp_context=multiprocessing.get_context({context!r}))"
    )
    return (
        "if 1:\n    import multiprocessing, pickpool\n"
        "    from test.test_concurrent_futures.test_shutdown import sleep_and_print\n"
        + body.replace("MAKE", make)
    )


def test_interpreter_shutdown(self: Any) -> None:
    from test.support.script_helper import assert_python_ok

    body = """
    if __name__ == "__main__":
        t = MAKE
        t.submit(sleep_and_print, 1.0, "apple")
    """
    _rc, out, err = assert_python_ok("-c", _script(self, body))
    assert not err
    assert out.strip() == b"apple"


def test_submit_after_interpreter_shutdown(self: Any) -> None:
    from test.support.script_helper import assert_python_ok

    body = """
    import atexit
    @atexit.register
    def run_last():
        try:
            t.submit(id, None)
        except RuntimeError:
            print("runtime-error")
            raise
    if __name__ == "__main__":
        t = MAKE
        t.submit(id, 42).result()
    """
    _rc, out, err = assert_python_ok("-c", _script(self, body))
    assert "RuntimeError: cannot schedule new futures" in err.decode()
    assert out.strip() == b"runtime-error"


def test_hang_gh83386(self: Any) -> None:
    from test.support.script_helper import assert_python_ok

    body = """
    if __name__ == "__main__":
        t = MAKE
        t.submit(sleep_and_print, 1.0, "apple")
        t.shutdown(wait=False)
    """
    _rc, out, err = assert_python_ok("-c", _script(self, body))
    assert not err
    assert out.strip() == b"apple"


def pytest_configure(config: pytest.Config) -> None:
    try:
        from test.test_concurrent_futures import test_shutdown, util
    except ImportError:  # pragma: no cover - depends on the interpreter
        raise pytest.UsageError(
            "CPython's test package with test_concurrent_futures/ (Python 3.13+) is not here"
        ) from None
    util.ThreadPoolMixin.executor_type = ThreadsExecutor
    for mixin in (
        util.ProcessPoolForkMixin,
        util.ProcessPoolForkserverMixin,
        util.ProcessPoolSpawnMixin,
    ):
        mixin.executor_type = ProcessesExecutor
    # Their scripts name the standard classes: the same scripts, with pickpool's.
    shutdown = test_shutdown.ExecutorShutdownTest
    for test in (
        test_interpreter_shutdown,
        test_submit_after_interpreter_shutdown,
        test_hang_gh83386,
    ):
        setattr(shutdown, test.__name__, test)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    expect_failures(items, EXCLUDED, skipped=SKIPPED)
