"""CPython's own executor tests, run with ``pickpool.Executor`` as the executor.

The generic test cases of ``Lib/test/test_concurrent_futures/`` (``ExecutorTest``,
``WaitTests``, ``AsCompletedTests``, ``ExecutorShutdownTest``), under threads and under
processes, unchanged except for the three that start a child interpreter with a script
naming ``concurrent.futures``' own classes: the same scripts run there with pickpool's.

They need CPython's test package in its 3.13 layout (``make test-all`` runs them on 3.13);
elsewhere the module is skipped.
"""

from __future__ import annotations

import multiprocessing
import threading
import unittest
from typing import Any

import pytest

import pickpool

try:
    from test.support.script_helper import assert_python_ok
    from test.test_concurrent_futures import util
    from test.test_concurrent_futures.executor import ExecutorTest
    from test.test_concurrent_futures.test_as_completed import AsCompletedTests
    from test.test_concurrent_futures.test_shutdown import ExecutorShutdownTest
    from test.test_concurrent_futures.test_wait import WaitTests
except ImportError:  # pragma: no cover - depends on the interpreter
    pytest.skip(
        "needs CPython's test package with test_concurrent_futures/ (Python 3.13+)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.timeout(300)


class ThreadsExecutor(pickpool.Executor):
    def __init__(self, max_workers: int | None = None, **kwargs: Any) -> None:
        super().__init__("threads", max_workers, **kwargs)


class ProcessesExecutor(pickpool.Executor):
    def __init__(self, max_workers: int | None = None, **kwargs: Any) -> None:
        super().__init__("processes", max_workers, **kwargs)


# Newer releases' wait tests (3.13.15, 3.14.8) block calls on an event from the executor mixin,
# as the standard mixins make it: a thread's Event, or a manager's for worker processes.
class ThreadsMixin(util.ExecutorMixin):
    executor_type = ThreadsExecutor
    model = "threads"

    def create_event(self) -> Any:
        return threading.Event()


class ProcessesMixin(util.ExecutorMixin):
    executor_type = ProcessesExecutor
    model = "processes"

    def create_event(self) -> Any:
        manager = getattr(self, "_events", None)
        if manager is None:
            manager = self._events = multiprocessing.Manager()
            self.addCleanup(manager.shutdown)
        return manager.Event()


class ChildInterpreterShutdown:
    """ExecutorShutdownTest's child-interpreter cases, with ``pickpool.Executor`` in the script."""

    model: str

    def test_interpreter_shutdown(self) -> None:
        _rc, out, err = assert_python_ok(
            "-c",
            f"""if 1:
            import pickpool
            from test.test_concurrent_futures.test_shutdown import sleep_and_print
            if __name__ == "__main__":
                t = pickpool.Executor({self.model!r}, 5)
                t.submit(sleep_and_print, 1.0, "apple")
            """,
        )
        assert not err
        assert out.strip() == b"apple"

    def test_submit_after_interpreter_shutdown(self) -> None:
        _rc, out, err = assert_python_ok(
            "-c",
            f"""if 1:
            import atexit
            @atexit.register
            def run_last():
                try:
                    t.submit(id, None)
                except RuntimeError:
                    print("runtime-error")
                    raise
            import pickpool
            if __name__ == "__main__":
                t = pickpool.Executor({self.model!r}, 5)
                t.submit(id, 42).result()
            """,
        )
        assert "RuntimeError: cannot schedule new futures" in err.decode()
        assert out.strip() == b"runtime-error"

    def test_hang_gh83386(self) -> None:
        _rc, out, err = assert_python_ok(
            "-c",
            f"""if True:
            import pickpool
            from test.test_concurrent_futures.test_shutdown import sleep_and_print
            if __name__ == "__main__":
                t = pickpool.Executor({self.model!r}, max_workers=3)
                t.submit(sleep_and_print, 1.0, "apple")
                t.shutdown(wait=False)
            """,
        )
        assert not err
        assert out.strip() == b"apple"


def _make(name: str, *bases: type) -> type[unittest.TestCase]:
    return type(name, (*bases, util.BaseTestCase), {"__module__": __name__})


for _label, _mixin in (("Threads", ThreadsMixin), ("Processes", ProcessesMixin)):
    for _tests in (ExecutorTest, WaitTests, AsCompletedTests):
        _name = f"Pickpool{_label}{_tests.__name__}"
        globals()[_name] = _make(_name, _tests, _mixin)
    _name = f"Pickpool{_label}ExecutorShutdownTest"
    globals()[_name] = _make(_name, ChildInterpreterShutdown, ExecutorShutdownTest, _mixin)


def setUpModule() -> None:
    util.setup_module()
