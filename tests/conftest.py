"""Shared fixtures: every model, and a guard that no thread or child process outlives a test."""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import cast

import psutil
import pytest

from pickpool import _machine
from pickpool._api import Model
from pickpool._backends import MODELS as _REGISTRY

# Whether this interpreter runs with the GIL: on a free-threaded build (3.13t) pure Python
# computes in parallel on threads, and some expectations are the other build's.
GIL = _machine.gil_enabled()
# For tests of what only a GIL build has (a GIL to read; RSS that returns freed memory).
needs_the_gil = pytest.mark.skipif(not GIL, reason="on a build without the GIL")


# dask's sampling profiler runs a thread that reads every other thread's frames
# (sys._current_frames()): on a free-threaded 3.13 that can crash the process (fixed in 3.14,
# not in 3.13), ours with its in-process cluster, or a worker mid-task. The clusters the tests
# start run without it there (read from the environment when dask is imported, and passed on
# to the worker processes).
if not GIL and sys.version_info < (3, 14):
    os.environ.setdefault("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED", "False")

# Every model every interpreter has, from the registry. The others (interpreters, dask) need
# more than the interpreter: test_contract.py runs them with skip marks, and they have their
# own test modules.
MODELS: list[Model] = list(_REGISTRY)

_DASK_THREADS = ("Dask-", "TCP-Executor", "IO loop", "Profile", "AsyncProcess", "QueueFeeder")

# Threads a test may leave behind on purpose: abandoned after a timeout or a cancelled amap.
_ALLOWED_THREAD_PREFIXES = (
    "pickpool-thread",
    "pickpool-async",
    "pickpool-amap",
    "pickpool-knocker",  # the probe's, while an abandoned amap's probed item runs on
)


@pytest.fixture(params=MODELS)
def model(request: pytest.FixtureRequest) -> Model:
    return cast(Model, request.param)


@pytest.fixture(params=["fork", "forkserver", "spawn"])
def start_method(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PICKPOOL_START_METHOD", request.param)
    return str(request.param)


def _helper_pids() -> set[int]:
    """Processes multiprocessing keeps for the whole session: fork server, resource tracker."""
    from multiprocessing import forkserver, resource_tracker

    pids = {
        getattr(forkserver._forkserver, "_forkserver_pid", None),
        getattr(resource_tracker._resource_tracker, "_pid", None),
    }
    # joblib's own resource tracker (its memory-mapped arrays register their files there).
    loky_tracker = sys.modules.get("joblib.externals.loky.backend.resource_tracker")
    if loky_tracker is not None:
        pids.add(getattr(loky_tracker._resource_tracker, "_pid", None))
    return {pid for pid in pids if pid}


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)} - _helper_pids()


def _wait_until(predicate: Callable[[], object], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    threads_before = set(threading.enumerate())
    children_before = _children()
    # A library under test may keep processes of its own (a dask cluster restarts its workers).
    foreign_processes = request.node.get_closest_marker("foreign_processes")
    mp_before = set(multiprocessing.active_children())  # a module's dask cluster, say
    yield
    allow_threads = request.node.get_closest_marker("leaves_threads") is not None
    # Worker processes kept warm between runs are stopped here, so that every test starts
    # from nothing; what a test leaves beyond them is a leak.
    from pickpool._backends import _interpreters, _processes, _threads

    _processes.warm.clear()
    _threads.warm.clear()
    _interpreters.warm.clear()

    # Reaped children and joined threads are gone at once; the short grace only absorbs the
    # OS's own bookkeeping of an exiting process.
    def ours() -> set[int]:
        _processes.warm.clear()  # (a run that ended in the background gives its workers late)
        pids = _children()
        if foreign_processes is not None:
            for p in multiprocessing.active_children():
                if p.name.startswith(tuple(foreign_processes.args)) and p.pid is not None:
                    pids.discard(p.pid)
        return pids

    assert _wait_until(lambda: ours() <= children_before, 5.0), (
        f"child processes left behind: {ours() - children_before}"
    )
    assert {
        p
        for p in multiprocessing.active_children()
        if foreign_processes is None or not p.name.startswith(tuple(foreign_processes.args))
    } <= mp_before
    # dask's client starts threads of its own, lazily, even after its tests when a finalizer
    # runs: once it is imported, threads by those names are its own.
    theirs = _DASK_THREADS if "distributed" in sys.modules else ()

    def extra() -> list[threading.Thread]:
        _threads.warm.clear()  # (as for processes: a run ending in the background parks late)
        _interpreters.warm.clear()
        return [
            t
            for t in set(threading.enumerate()) - threads_before
            if t.is_alive()
            and not (allow_threads and t.name.startswith(_ALLOWED_THREAD_PREFIXES))
            and not (theirs and t.name.startswith(theirs))
        ]

    assert _wait_until(lambda: not extra(), 5.0), f"threads left behind: {extra()}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "leaves_threads: a timed-out thread is abandoned by design, not joined"
    )
    config.addinivalue_line(
        "markers", "foreign_processes(*prefixes): multiprocessing children of another library"
    )
