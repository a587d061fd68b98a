"""The backend contract: what every model promises the driver, checked on each, and on the fake.

Part one runs every registered model (``pickpool._backends.ModelName``) and
:class:`tests.fake_backend.FakeBackend` through the same checks, straight through the
``Backend`` protocol (submit, collect, close, wake), without the driver:

* every item submitted gets exactly one outcome, in any order, whatever its call returns or
  raises (``BaseException`` subclasses included: a ``FATAL`` outcome, as ``_task`` promises);
* ``submit`` returns at once and runs no user code in the caller's thread (but serial's);
* the initializer runs in each worker before its items; one that fails fails the start
  (a worker in the caller's thread) or every item;
* ``close()`` twice is harmless; a failed start (a failing initializer, a setup ``__init__``
  refuses, a worker process that cannot be forked) leaves nothing behind;
  ``close(cancel=True)`` mid-chunk stops every worker, leaves no thread, child process or file
  descriptor behind, and starts no queued chunk;
* ``wake()`` makes a waiting ``collect`` return; an item past ``timeout`` gets one
  ``TaskTimeout`` outcome and nothing more, even once its call returns.

Part two drives ``_driver.drive`` with the fake alone: results put back in input order, the
window, fail-fast feeding nothing more, retries counted, a chunk that died with its worker
(its items reported ``LOST``) sent again item by item by the driver, not counted as tries, and
the fake checked against the real processes backend for crashes and unpicklable items.

Where a model breaks the contract the test is marked ``xfail(strict=True)`` with the defect.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, cast, get_args

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pickpool._backends import (
    EXTRA_MODELS,
    MODELS,
    Backend,
    ModelName,
    Setup,
    Wakeable,
    load,
)
from pickpool._driver import drive
from pickpool._errors import BackendUnavailable, PickpoolError, TaskTimeout, WorkerCrashed
from pickpool._pickling import NotPicklable
from pickpool._plan import Plan
from pickpool._schedule import Done
from pickpool._task import (
    ERROR,
    FATAL,
    LOST,
    OK,
    Outcome,
    Task,
    expand,
    failed,
    is_async_callable,
    lost_chunk,
    task_indices,
)
from tests import fake_backend
from tests.fake_backend import (
    FINISHED,
    RAISES,
    Action,
    Beacon,
    FakeBackend,
    Hold,
    InitializerError,
    Raise,
    ReadInit,
    Return,
    Script,
    ScriptedFailure,
    Signal,
    UnpicklableError,
    Where,
    aperform,
    fail_initializer,
    initialize,
    perform,
)
from tests.helpers import crash, identity

# Every model the registry names, then the fake.
KINDS: Final[tuple[str, ...]] = (*get_args(ModelName), "fake")

# dask's own threads (conftest leaves them to dask too); an in-process cluster's executor
# threads are named "0-Dask-Default-Threads-...".
_DASK_THREADS: Final = ("Dask-", "IO loop", "TCP-Executor", "Profile", "AsyncProcess")


# Which model, and how to start it ---------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One backend under test: its class, and what its Setup needs besides the function."""

    name: str
    cls: type[Any]
    client: Any = None

    @property
    def runs_in_caller(self) -> bool:
        """Runs each chunk inside ``collect``, in the caller's thread: nothing runs between."""
        return self.name in ("serial", "fake")

    def setup(
        self,
        fn: Callable[[Any], Any],
        *,
        workers: int = 2,
        timeout: float | None = None,
        fresh: bool = False,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        client: Any = None,
    ) -> Setup:
        return Setup(
            fn,
            workers,
            is_async_callable(fn),
            timeout,
            client=client or self.client,
            fresh=fresh,
            initializer=initializer,
            initargs=initargs,
        )

    def open(self, setup: Setup) -> Backend:
        backend: Backend = self.cls(setup)
        return backend

    def start(self, fn: Callable[[Any], Any], **options: Any) -> Backend:
        return self.open(self.setup(fn, **options))


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    environ = dict(os.environ)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        # Both executor threads now, before any test's leak check counts threads.
        client.gather([client.submit(fake_backend.meet, i, pure=False) for i in range(2)])
        yield client
    os.environ.clear()
    os.environ.update(environ)


@pytest.fixture(scope="module", params=KINDS)
def kind(request: pytest.FixtureRequest) -> Kind:
    name = str(request.param)
    if name == "fake":
        return Kind(name, FakeBackend)
    client = request.getfixturevalue("dask_client") if name == "dask" else None
    found = Kind(name, cast("type[Any]", load(name)), client)
    try:
        found.start(perform).close(cancel=True)
    except BackendUnavailable as exc:
        pytest.skip(f"model={name!r} is not available here: {exc}")
    return found


@pytest.fixture
def beacon() -> Iterator[Beacon]:
    b = Beacon()
    yield b
    b.close()


def xfail_if(
    request: pytest.FixtureRequest,
    condition: bool,
    reason: str,
    raises: type[BaseException] = AssertionError,
) -> None:
    """Mark this test a known defect of ``kind``: it must fail, and as ``raises``."""
    if condition:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason, raises=raises))


# Outcomes and leaks ---------------------------------------------------------------------------


def chunked(actions: list[Action], sizes: Iterable[int], first: int = 0) -> list[Task]:
    """``actions`` cut into tasks of the given sizes (the last size repeats)."""
    tasks: list[Task] = []
    sizes = list(sizes) or [1]
    start = 0
    while start < len(actions):
        size = sizes[min(len(tasks), len(sizes) - 1)]
        tasks.append((len(tasks) + 1, first + start, actions[start : start + size]))
        start += size
    return tasks


def take(outcomes: list[Outcome], got: dict[int, Outcome], expected: Collection[int]) -> None:
    """Add ``outcomes`` to ``got``, one per item: an unknown or second outcome fails."""
    for outcome in outcomes:
        for single in expand(outcome):
            index = single[0]
            assert index in expected, f"an outcome for item {index}, never submitted: {single}"
            assert index not in got, f"two outcomes for item {index}: {got[index]}, {single}"
            got[index] = single


def collect_all(
    backend: Backend,
    expected: Collection[int],
    got: dict[int, Outcome] | None = None,
    *,
    patience: float = 30.0,
    lag: float | None = None,
) -> dict[int, Outcome]:
    """Collect until every item of ``expected`` has its one outcome.

    Fails if that takes ``patience`` seconds, or (``lag``) that long after the last outcome.
    """
    got = {} if got is None else got
    deadline = time.monotonic() + patience
    while len(got) < len(expected):
        now = time.monotonic()
        if now >= deadline:
            break
        before = len(got)
        take(backend.collect(min(1.0, deadline - now)), got, expected)
        if lag is not None and len(got) > before:
            deadline = time.monotonic() + min(lag, patience)
    missing = sorted(set(expected) - got.keys())
    assert not missing, f"no outcome for items {missing}"
    return got


def check_outcome(outcome: Outcome, action: Action, *, is_async: bool) -> None:
    """``outcome`` is what ``perform(action)`` does under every model."""
    _, status, payload, text = outcome
    if isinstance(action, Return):
        assert (status, payload) == (OK, action.value), outcome
        return
    assert isinstance(action, Raise)
    raised = type(RAISES[action.kind]())
    expected: tuple[type[BaseException], ...] = (raised,)
    if raised is StopIteration and is_async:
        # Python's RuntimeError (PEP 479), or the StopIteration itself: models disagree (see
        # test_an_async_stop_iteration_is_reported_as_python_raises_it).
        expected = (RuntimeError, StopIteration)
    elif raised is UnpicklableError:
        expected = (raised, PickpoolError)  # what processes sends instead
    assert status == (ERROR if issubclass(expected[0], Exception) else FATAL), outcome
    assert type(payload) in expected, outcome
    assert isinstance(text, str), outcome
    assert text, outcome


def _helper_pids() -> set[int]:
    """Processes multiprocessing keeps for the whole session: fork server, resource tracker."""
    from multiprocessing import forkserver, resource_tracker

    pids = {
        getattr(forkserver._forkserver, "_forkserver_pid", None),
        getattr(resource_tracker._resource_tracker, "_pid", None),
    }
    return {pid for pid in pids if pid}


@dataclass(frozen=True)
class Resources:
    threads: frozenset[threading.Thread]
    children: frozenset[int]
    fds: frozenset[tuple[int, str]]


def _fds() -> frozenset[tuple[int, str]]:
    if not sys.platform.startswith("linux"):
        return frozenset()
    found: set[tuple[int, str]] = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed already
            found.add((int(name), os.readlink(f"/proc/self/fd/{name}")))
    # (Not a read of this process's memory in progress: dask's system monitor, a thread of
    # its own left out above, opens /proc/<pid>/statm through psutil every half second.)
    return frozenset(fd for fd in found if not fd[1].endswith("/statm"))


def _dasks(thread: threading.Thread) -> bool:
    return "Dask-" in thread.name or thread.name.startswith(_DASK_THREADS)


def resources() -> Resources:
    """This process's threads (but dask's own), child processes (but multiprocessing's
    helpers) and open file descriptors, now."""
    threads = frozenset(t for t in threading.enumerate() if t.is_alive() and not _dasks(t))
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    children |= {p.pid for p in multiprocessing.active_children() if p.pid is not None}
    return Resources(threads, frozenset(children - _helper_pids()), _fds())


def assert_released(before: Resources, *, settle: float = 0.0) -> None:
    """Nothing more than ``before``: no thread, child process or file descriptor left (at
    once, or within ``settle`` seconds for a model that closes some of them in its own time)."""
    deadline = time.monotonic() + settle
    after = resources()
    while time.monotonic() < deadline and (
        after.threads - before.threads or after.children - before.children or after.fds - before.fds
    ):
        time.sleep(0.05)
        after = resources()
    assert not after.threads - before.threads, f"threads left: {after.threads - before.threads}"
    assert not after.children - before.children, (
        f"processes left: {after.children - before.children}"
    )
    assert not after.fds - before.fds, f"descriptors left: {sorted(after.fds - before.fds)}"


def warm_up(kind: Kind) -> None:
    """One run first: what a model starts once per program (the fork server) is not a leak."""
    backend = kind.start(perform, workers=1, fresh=True)
    try:
        backend.submit((0, 0, [Return(0)]))
        collect_all(backend, [0])
    finally:
        backend.close(cancel=False)


# Part one: the contract, on every model -------------------------------------------------------


def test_the_registry_names_every_model() -> None:
    assert (*MODELS, *EXTRA_MODELS) == get_args(ModelName)
    for name in get_args(ModelName):
        cls = load(name)
        for method in ("submit", "collect", "close"):
            assert callable(getattr(cls, method, None)), (name, method)


# Everything a call can raise, but asyncio.CancelledError (see the test after this one).
RAISE_KINDS: Final = tuple(kind for kind in RAISES if kind != "cancelled")
actions = st.one_of(
    st.builds(Return, st.integers(-1000, 1000)),
    st.builds(Raise, st.sampled_from(RAISE_KINDS)),
)


@pytest.mark.timeout(120)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    script=st.lists(actions, max_size=24),
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=6),
    workers=st.integers(1, 3),
    is_async=st.booleans(),
    interleave=st.booleans(),
)
def test_every_item_gets_exactly_one_outcome(
    kind: Kind,
    script: list[Action],
    sizes: list[int],
    workers: int,
    is_async: bool,
    interleave: bool,
) -> None:
    backend = kind.start(aperform if is_async else perform, workers=workers)
    finished = False
    try:
        got: dict[int, Outcome] = {}
        expected = range(len(script))
        for task in chunked(script, sizes):
            backend.submit(task)
            if interleave:
                take(backend.collect(0), got, expected)
        collect_all(backend, expected, got)
        assert backend.collect(0) == []
        finished = True
    finally:
        backend.close(cancel=not finished)
    for index, action in enumerate(script):
        check_outcome(got[index], action, is_async=is_async)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("is_async", [False, True], ids=["plain", "async"])
def test_a_call_that_raises_cancelled_error_gets_its_outcome(
    kind: Kind, is_async: bool, request: pytest.FixtureRequest
) -> None:
    script: list[Action] = [Return(0), Raise("cancelled"), Return(2)]
    backend = kind.start(aperform if is_async else perform)
    try:
        got: dict[int, Outcome] = {}
        backend.submit((1, 0, script))
        collect_all(backend, range(3), got, lag=1.0)
    finally:
        backend.close(cancel=True)
    import asyncio

    assert (got[0][1], got[2][1]) == (OK, OK)
    assert got[1][1] == FATAL
    assert isinstance(got[1][2], asyncio.CancelledError)


@pytest.mark.timeout(60)
def test_an_async_stop_iteration_is_reported_as_python_raises_it(kind: Kind) -> None:
    backend = kind.start(aperform)
    try:
        backend.submit((1, 0, [Return(0), Raise("stop_iteration")]))
        got = collect_all(backend, range(2))
    finally:
        backend.close(cancel=False)
    assert got[1][1] == ERROR
    assert type(got[1][2]) is RuntimeError  # what asyncio.run(f(x)) raises
    cause = got[1][2].__cause__
    if cause is None:
        # An exception's cause does not survive a pickle: the worker's traceback shows it.
        assert "StopIteration" in (got[1][3] or "")
    else:
        assert isinstance(cause, StopIteration)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cancel", [False, True], ids=["normal", "cancel"])
def test_close_twice_is_harmless(kind: Kind, cancel: bool) -> None:
    warm_up(kind)
    before = resources()
    backend = kind.start(perform, workers=2, fresh=True)
    for task in chunked([Return(i) for i in range(6)], [2]):
        backend.submit(task)
    got = collect_all(backend, range(6))
    backend.close(cancel=cancel)
    backend.close(cancel=cancel)
    backend.close(cancel=not cancel)
    assert [got[i][2] for i in range(6)] == list(range(6))
    assert_released(before)


IGNORES_INITIALIZER: Final = {
    "dask": "src/pickpool/_backends/_dask.py never reads setup.initializer: "
    "so pickpool.map refuses initializer= under model='dask' (_options.worker_options)",
    "interpreters": "src/pickpool/_backends/_interpreters.py never reads setup.initializer",
}


def open_or_raised(kind: Kind, setup: Setup) -> Backend | InitializerError:
    try:
        return kind.open(setup)
    except InitializerError as exc:
        return exc


@pytest.mark.timeout(60)
def test_a_failing_initializer_fails_the_start_or_every_item(
    kind: Kind, request: pytest.FixtureRequest
) -> None:
    xfail_if(request, kind.name in IGNORES_INITIALIZER, IGNORES_INITIALIZER.get(kind.name, ""))
    warm_up(kind)
    before = resources()
    setup = kind.setup(perform, fresh=True, initializer=fail_initializer, initargs=("no database",))
    started = open_or_raised(kind, setup)
    if isinstance(started, InitializerError):
        # One worker in the caller's thread (serial, asyncio's loop): raised as it is.
        assert "no database" in str(started)
    else:
        backend = started
        try:
            for task in chunked([Return(i) for i in range(4)], [2]):
                backend.submit(task)
            got = collect_all(backend, range(4))
        finally:
            backend.close(cancel=False)
            backend.close(cancel=True)
        for index, status, payload, _ in got.values():
            assert status == ERROR, (index, payload)
            assert isinstance(payload, InitializerError), (index, payload)
            assert "no database" in str(payload)
    assert_released(before)


@pytest.mark.timeout(60)
def test_the_initializer_runs_in_each_worker_before_its_items(
    kind: Kind, request: pytest.FixtureRequest
) -> None:
    xfail_if(request, kind.name in IGNORES_INITIALIZER, IGNORES_INITIALIZER.get(kind.name, ""))
    token = f"{kind.name}-{time.monotonic_ns()}"
    backend = kind.start(perform, workers=2, fresh=True, initializer=initialize, initargs=(token,))
    try:
        for task in chunked([ReadInit() for _ in range(6)], [1, 2, 3]):
            backend.submit(task)
        got = collect_all(backend, range(6))
    finally:
        backend.close(cancel=False)
        fake_backend.reset_initialized()
    assert [got[i][1:3] for i in range(6)] == [(OK, token)] * 6


def _unpicklable_function() -> Callable[[Any], Any]:
    lock = threading.Lock()

    def uses_lock(item: Any) -> Any:
        with lock:
            return item

    return uses_lock


def failing_setup(kind: Kind) -> tuple[Setup, type[BaseException]]:
    """A Setup that makes ``kind``'s ``__init__`` raise, and what it raises."""
    if kind.name in ("serial", "asyncio", "fake"):
        setup = kind.setup(perform, initializer=fail_initializer, initargs=("no database",))
        return setup, InitializerError
    if kind.name == "processes":
        return kind.setup(_unpicklable_function()), TypeError
    if kind.name == "dask":
        return kind.setup(perform, client=object()), TypeError
    pytest.skip(f"no Setup makes model={kind.name!r}'s __init__ fail: its workers start lazily")


@pytest.mark.timeout(60)
def test_a_failed_start_leaves_nothing_behind(kind: Kind) -> None:
    setup, error = failing_setup(kind)
    warm_up(kind)
    before = resources()
    with pytest.raises(error):
        kind.open(setup)
    assert_released(before)


@pytest.mark.timeout(60)
def test_close_is_safe_after_a_failed_init(kind: Kind) -> None:
    # The Backend docstring: close() "must be safe to call twice, and after a failed
    # __init__" -- which only a caller holding the instance can do (the driver never does).
    setup, error = failing_setup(kind)
    backend = object.__new__(kind.cls)
    with pytest.raises(error):
        backend.__init__(setup)
    backend.close(cancel=True)
    backend.close(cancel=True)


@pytest.mark.timeout(60)
def test_cancel_mid_chunk_stops_every_worker(kind: Kind, beacon: Beacon) -> None:
    warm_up(kind)
    before = resources()
    seconds = 0.0 if kind.runs_in_caller else 0.12  # each item's work: 4 of them a chunk
    address = beacon.address
    backend = kind.start(perform, workers=1, fresh=True)
    backend.submit((1, 0, [Signal(address, i, seconds) for i in range(4)]))
    backend.submit((2, 4, [Signal(address, i, seconds) for i in range(4, 8)]))
    if kind.runs_in_caller:
        backend.collect(None)  # the first chunk, whole: nothing runs between collects
    else:
        beacon.wait(0)  # the first chunk is running
    before_close = beacon.arrived()
    began = time.monotonic()
    backend.close(cancel=True)
    backend.close(cancel=True)
    assert time.monotonic() - began < 10
    if kind.name == "dask":
        # dask cannot stop a task that runs (_dask.py says so), nor is it held to
        # `workers`: let what started end, so that nothing of this test runs on.
        for chunk in (0, 4):
            if chunk in beacon.arrived():
                beacon.wait(chunk + 3)
        # (Its comms close on its own event loop's thread, after the tasks' ends.)
        assert_released(before, settle=10.0)
        return
    assert_released(before)  # no worker runs: every thread and process is gone
    if kind.runs_in_caller or 3 not in before_close:
        # The second chunk was queued behind the first on the one worker: never started.
        assert not beacon.arrived() & {4, 5, 6, 7}


@pytest.mark.timeout(60)
def test_submit_returns_at_once_and_runs_nothing_in_the_caller(kind: Kind, beacon: Beacon) -> None:
    if kind.runs_in_caller:
        pytest.skip(f"model={kind.name!r} runs each chunk in the caller's thread, in collect()")
    backend = kind.start(perform, workers=2)
    try:
        backend.submit((1, 0, [Hold(beacon.address, 0)]))  # run here, it would never return
        backend.submit((2, 1, [Where(), Where()]))
        beacon.wait(0)
        beacon.release()
        got = collect_all(backend, range(3))
    finally:
        backend.close(cancel=False)
    here = (os.getpid(), threading.get_ident())
    assert got[0][1:3] == (OK, 0)
    assert [got[i][1] for i in (1, 2)] == [OK, OK]
    assert here not in (got[1][2], got[2][2])


@pytest.mark.timeout(60)
def test_wake_makes_a_waiting_collect_return(kind: Kind, beacon: Beacon) -> None:
    backend = kind.start(perform, workers=1)
    try:
        if not isinstance(backend, Wakeable):
            pytest.skip(f"model={kind.name!r} is not Wakeable: pickpool.Executor does not use it")
        waker = threading.Thread(target=backend.wake)
        if kind.runs_in_caller:
            waker.start()
            waker.join()
            assert backend.collect(None) == []  # nothing in flight: at once
            return
        backend.submit((1, 0, [Hold(beacon.address, 0)]))
        beacon.wait(0)  # running, and held until released
        waker.start()
        waker.join()
        began = time.monotonic()
        assert backend.collect(30.0) == []
        assert time.monotonic() - began < 10, "collect() waited on after a wake()"
        beacon.release()
        got = collect_all(backend, [0])
        assert got[0][1:3] == (OK, 0)
    finally:
        backend.close(cancel=False)


@pytest.mark.leaves_threads
@pytest.mark.timeout(60)
def test_an_item_past_timeout_gets_one_task_timeout_outcome(kind: Kind, beacon: Beacon) -> None:
    if kind.name == "serial":
        pytest.skip("serial has no timeout: _options runs model='serial' with timeout= on threads")
    setup = kind.setup(perform, workers=2, timeout=0.3)
    first: list[Action] = [Hold(beacon.address, 0)]
    if kind.name == "fake":
        first = [Return(0)]
        backend: Backend = FakeBackend(setup, Script(hang=frozenset({0})))
    else:
        backend = kind.open(setup)
    try:
        backend.submit((1, 0, first))
        backend.submit((2, 1, [Return(1)]))
        got = collect_all(backend, range(2))
        assert got[1][1:3] == (OK, 1)
        assert got[0][1] == ERROR
        assert isinstance(got[0][2], TaskTimeout)
        beacon.release()
        if kind.name not in ("processes", "fake"):
            # A thread cannot be killed: the held call returns now, its result thrown away.
            beacon.wait(FINISHED)
        # Nothing more comes for item 0, before or after the next item's outcome.
        backend.submit((3, 2, [Return(2)]))
        collect_all(backend, [2])
    finally:
        beacon.release()
        backend.close(cancel=False)


@pytest.mark.leaves_threads
@pytest.mark.timeout(60)
def test_close_does_not_wait_for_an_item_past_its_timeout(kind: Kind, beacon: Beacon) -> None:
    # Its call may never return (a thread cannot be killed): the run ends without it.
    if kind.name in ("serial", "fake"):
        pytest.skip("serial has no timeout; the fake's hung call never runs")
    backend = kind.open(kind.setup(perform, workers=2, timeout=0.3))
    closing = threading.Thread(target=backend.close, kwargs={"cancel": False})
    try:
        backend.submit((1, 0, [Hold(beacon.address, 0)]))
        assert isinstance(collect_all(backend, [0])[0][2], TaskTimeout)
        closing.start()
        closing.join(timeout=20)
        assert not closing.is_alive(), "close() waited for the timed-out call"
    finally:
        beacon.release()
        if closing.ident is None:
            backend.close(cancel=False)
        else:
            closing.join()


@pytest.mark.timeout(60)
def test_processes_that_cannot_start_leave_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lazy start that fails (fork refused: EAGAIN) raises from submit; close() then
    releases everything."""
    from pickpool import _machine

    kind = Kind("processes", cast("type[Any]", load("processes")))
    warm_up(kind)
    before = resources()
    process_class = multiprocessing.get_context(_machine.start_method()).Process  # type: ignore[attr-defined]

    def refuse(process: object) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable (simulated)")

    monkeypatch.setattr(process_class, "_Popen", staticmethod(refuse))
    backend = kind.start(perform, fresh=True)
    try:
        with pytest.raises(BlockingIOError):
            backend.submit((1, 0, [Return(0)]))
    finally:
        backend.close(cancel=True)
        backend.close(cancel=True)
    assert_released(before)


# Part two: the driver alone, on the fake --------------------------------------------------------


def plan(
    *,
    workers: int = 2,
    chunksize: int = 2,
    window: int | None = None,
    ordered: bool = True,
    retries: int = 0,
    fail_fast: bool = False,
    model: str = "fake",
) -> Plan:
    return Plan(
        model=model,
        workers=workers,
        chunksize=chunksize,
        window=window or 4 * workers * chunksize,
        ordered=ordered,
        timeout=None,
        retries=retries,
        fail_fast=fail_fast,
    )


def run_fake(
    items: Iterable[Any], the_plan: Plan, script: Script, fn: Callable[[Any], Any] = perform
) -> tuple[list[Done], FakeBackend]:
    made: list[FakeBackend] = []

    def open_fake(setup: Setup) -> FakeBackend:
        made.append(FakeBackend(setup, script))
        return made[-1]

    setup = Setup(fn, the_plan.workers, is_async_callable(fn), None)
    dones = list(drive(items, the_plan, setup, open_fake))
    (fake,) = made
    return dones, fake


@pytest.mark.timeout(60)
@settings(max_examples=60, deadline=None)
@given(
    script=st.lists(
        st.one_of(st.builds(Return, st.integers(0, 99)), st.just(Raise("value_error"))),
        max_size=40,
    ),
    workers=st.integers(1, 4),
    chunksize=st.integers(1, 5),
    ordered=st.booleans(),
    order=st.sampled_from(["fifo", "lifo", "shuffle"]),
    seed=st.integers(0, 2**16),
    slow=st.dictionaries(st.integers(0, 39), st.integers(1, 4), max_size=6),
)
def test_drive_hands_each_item_out_once_in_order(
    script: list[Action],
    workers: int,
    chunksize: int,
    ordered: bool,
    order: Any,
    seed: int,
    slow: dict[int, int],
) -> None:
    the_plan = plan(workers=workers, chunksize=chunksize, ordered=ordered)
    dones, fake = run_fake(script, the_plan, Script(slow=slow, order=order, seed=seed))
    indices = [d.index for d in dones]
    if ordered:
        assert indices == list(range(len(script)))
    else:
        assert sorted(indices) == list(range(len(script)))
        assert indices == fake.log.reported_indices()  # as they came
    for done in dones:
        action = script[done.index]
        assert done.item == action
        assert done.attempts == 1
        if isinstance(action, Return):
            assert (done.status, done.value) == (OK, action.value)
        else:
            assert done.status == ERROR
            assert isinstance(done.value, ValueError)
    assert fake.log.most_in_flight <= the_plan.window
    assert fake.log.closes == [False]


class Counted:
    """An input that counts what was read of it."""

    def __init__(self, items: Iterable[Any]) -> None:
        self._items = iter(items)
        self.read = 0

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        item = next(self._items)
        self.read += 1
        return item


@pytest.mark.timeout(60)
def test_fail_fast_feeds_nothing_after_a_failure() -> None:
    the_plan = plan(workers=2, chunksize=2, window=8, fail_fast=True)
    source = Counted(Return(i) for i in range(1000))
    dones, fake = run_fake(source, the_plan, Script(fail={5: 1}, slow={7: 3}))
    (failed,) = [d for d in dones if d.status != OK]
    assert (failed.index, type(failed.value)) == (5, ScriptedFailure)
    # Items before it all ran and came out, in order.
    assert [d.index for d in dones[:6]] == list(range(6))
    (reported_at,) = [tick for tick, index, _ in fake.log.reported if index == 5]
    assert all(tick < reported_at for tick, _ in fake.log.submitted), fake.log.submitted
    assert source.read <= 5 + the_plan.window + the_plan.chunksize
    # Nothing after the failure is handed out: the run ended there by itself, abandoning what
    # still ran.
    assert [d.index for d in dones] == list(range(6))
    assert fake.log.closes == [True]


@pytest.mark.timeout(60)
def test_a_consumer_that_stops_at_a_failure_cancels_the_backend() -> None:
    made: list[FakeBackend] = []

    def open_fake(setup: Setup) -> FakeBackend:
        made.append(FakeBackend(setup, Script(fail={5: 1}, slow={6: 5})))
        return made[-1]

    the_plan = plan(workers=2, chunksize=2, window=8, fail_fast=True)
    dones = drive(
        (Return(i) for i in range(100)), the_plan, Setup(perform, 2, False, None), open_fake
    )
    for done in dones:
        if done.status != OK:  # what _api does under on_error="raise"
            dones.close()
            break
    (fake,) = made
    assert fake.log.closes == [True]
    assert fake.log.dropped  # item 6's chunk was still running


@pytest.mark.timeout(60)
@settings(max_examples=40, deadline=None)
@given(fails=st.integers(0, 5), retries=st.integers(0, 3), chunksize=st.integers(1, 4))
def test_retries_are_counted(fails: int, retries: int, chunksize: int) -> None:
    the_plan = plan(workers=2, chunksize=chunksize, retries=retries)
    dones, fake = run_fake([Return(i) for i in range(8)], the_plan, Script(fail={3: fails}))
    tries = min(fails, retries) + 1
    assert [d.index for d in dones] == list(range(8))
    assert dones[3].attempts == tries
    assert dones[3].status == (OK if fails <= retries else ERROR)
    assert fake.log.runs.count(3) == tries
    retried = [task for _, task in fake.log.submitted if task[1] == 3 and len(task[2]) == 1]
    assert len(retried) == tries - 1 + (chunksize == 1)
    assert all(d.attempts == 1 for d in dones if d.index != 3)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("crashes", "retries", "status", "attempts"),
    [
        (1, 0, OK, 1),  # crashed its chunk; alone, it worked
        (2, 0, ERROR, 1),  # crashed alone too: WorkerCrashed
        (2, 1, OK, 2),  # ... and worked when the driver retried it
        (9, 2, ERROR, 3),  # crashed every time
    ],
)
def test_a_crashed_chunk_is_run_again_item_by_item(
    crashes: int, retries: int, status: int, attempts: int
) -> None:
    the_plan = plan(workers=1, chunksize=4, retries=retries)
    dones, fake = run_fake(range(8), the_plan, Script(crash={3: crashes}), fn=identity)
    assert [(d.index, d.attempts) for d in dones if d.index != 3] == [
        (i, 1) for i in (0, 1, 2, 4, 5, 6, 7)
    ]
    assert [d.value for d in dones if d.status == OK and d.index != 3] == [0, 1, 2, 4, 5, 6, 7]
    assert (dones[3].status, dones[3].attempts) == (status, attempts)
    if status == ERROR:
        assert isinstance(dones[3].value, WorkerCrashed)
    # The fake reported the chunk's items LOST, and the driver sent them again one by one.
    assert [i for _, i, s in fake.log.reported if s == LOST] == [0, 1, 2, 3]
    assert [(t[1], len(t[2])) for _, t in fake.log.submitted[:5]] == [
        (0, 4),
        (0, 1),
        (1, 1),
        (2, 1),
        (3, 1),
    ]
    # The chunk, then its items alone, in order, before anything else.
    assert [(t[1], len(t[2])) for t in fake.log.started[:5]] == [
        (0, 4),
        (0, 1),
        (1, 1),
        (2, 1),
        (3, 1),
    ]


class LosesChunks:
    """A backend whose every chunk of several dies with its worker (its items LOST), while a
    task of one item works: what is run alone is the driver's doing, never the backend's."""

    def __init__(self, setup: Setup) -> None:
        self.submitted: list[tuple[int, Task]] = []  # (collects before it, task)
        self.closes: list[bool] = []
        self._ready: list[Outcome] = []
        self._collects = 0

    def submit(self, task: Task) -> None:
        self.submitted.append((self._collects, task))
        if len(task[2]) > 1:
            self._ready += lost_chunk(task, WorkerCrashed("lost (scripted)"))
        else:
            self._ready.append((task[1], OK, task[2][0], None))

    def collect(self, timeout: float | None) -> list[Outcome]:
        self._collects += 1
        ready, self._ready = self._ready, []
        return ready

    def close(self, *, cancel: bool) -> None:
        self.closes.append(cancel)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ordered", [True, False])
def test_the_driver_runs_lost_items_again_alone_and_not_as_tries(ordered: bool) -> None:
    made: list[LosesChunks] = []

    def open_backend(setup: Setup) -> LosesChunks:
        made.append(LosesChunks(setup))
        return made[-1]

    # No retries, and fail-fast: a LOST item counted as a failed try would end the run.
    the_plan = plan(workers=2, chunksize=3, retries=0, fail_fast=True, ordered=ordered)
    dones = list(drive(range(10), the_plan, Setup(identity, 2, False, None), open_backend))
    (backend,) = made
    assert sorted((d.index, d.status, d.value, d.attempts) for d in dones) == [
        (i, OK, i, 1) for i in range(10)
    ]
    sent = backend.submitted
    assert any(len(task[2]) > 1 for _, task in sent)
    # Each item alone exactly once.
    assert sorted(task[1] for _, task in sent if len(task[2]) == 1) == list(range(10))
    for at, (collects, chunk) in enumerate(sent):
        if len(chunk[2]) == 1:
            continue
        # Its items alone, in order, sent at once after the collect that reported them LOST,
        # and before any new chunk.
        after = [task for when, task in sent[at + 1 :] if when == collects + 1]
        first_chunk = next((k for k, task in enumerate(after) if len(task[2]) > 1), len(after))
        indices = task_indices(chunk)
        assert [task[1] for task in after[:first_chunk] if task[1] in indices] == list(indices)
    assert backend.closes == [False]


def summary(dones: list[Done]) -> list[tuple[int, int, Any, int]]:
    """What a run handed out, comparable across backends: values, or exception types."""
    return [
        (d.index, d.status, d.value if d.status == OK else type(d.value), d.attempts) for d in dones
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("retries", [0, 1])
def test_the_fake_crashes_as_processes_do(retries: int) -> None:
    # tests.helpers.crash: os._exit(7) on item 3, every time.
    the_plan = plan(workers=1, chunksize=4, retries=retries, model="processes")
    setup = Setup(crash, 1, False, None, fresh=True)
    real = list(drive(range(8), the_plan, setup, load("processes")))
    fake, _ = run_fake(range(8), the_plan, Script(crash={3: 9}), fn=identity)
    assert summary(fake) == summary(real)
    assert summary(real)[3] == (3, ERROR, WorkerCrashed, retries + 1)


@pytest.mark.timeout(60)
def test_the_fake_refuses_unpicklable_items_as_processes_does() -> None:
    the_plan = plan(workers=1, chunksize=4, model="processes")
    items = [0, 1, threading.Lock(), 3, 4]
    real = list(
        drive(items, the_plan, Setup(identity, 1, False, None, fresh=True), load("processes"))
    )
    fake, _ = run_fake(items, the_plan, Script(unsendable=frozenset({2})), fn=identity)
    assert summary(fake) == summary(real)
    assert summary(real)[2] == (2, ERROR, NotPicklable, 1)


class FailsThenLoses:
    """Item 1 fails, every time. The chunk from 3 is lost with its worker, and item 7 fails:
    both are told only once item 1 has failed ``failures`` times, in the same collect, before
    it (``first``) or after it. Everything else works."""

    def __init__(self, setup: Setup, failures: int, *, first: bool) -> None:
        self.submitted: list[Task] = []
        self.closes: list[bool] = []
        self._ready: list[Outcome] = []
        self._held: list[Outcome] = []
        self._failures = failures
        self._first = first

    def submit(self, task: Task) -> None:
        self.submitted.append(task)
        if task[1] == 3 and len(task[2]) > 1:
            self._held += lost_chunk(task, WorkerCrashed("lost (scripted)"))
            return
        for index, item in zip(task_indices(task), task[2], strict=True):
            if item == 1:
                self._ready.append(failed(index, ValueError("item 1 fails")))
                self._failures -= 1
                if not self._failures:
                    if self._first:
                        self._ready[-1:-1] = self._held
                    else:
                        self._ready += self._held
            elif item == 7:
                self._held.append(failed(index, ValueError("item 7 fails")))
            elif item > 5:
                self._held.append((index, OK, item, None))
            else:
                self._ready.append((index, OK, item, None))

    def collect(self, timeout: float | None) -> list[Outcome]:
        ready, self._ready = self._ready, []
        return ready

    def close(self, *, cancel: bool) -> None:
        self.closes.append(cancel)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("first", [False, True], ids=["failure-first", "failure-last"])
@pytest.mark.parametrize("retries", [0, 2])
def test_after_the_failure_that_ends_the_run_nothing_starts_again(
    retries: int, first: bool
) -> None:
    made: list[FailsThenLoses] = []

    def open_backend(setup: Setup) -> FailsThenLoses:
        made.append(FailsThenLoses(setup, failures=retries + 1, first=first))
        return made[-1]

    # Three chunks in flight from the start.
    the_plan = plan(workers=3, chunksize=3, retries=retries, fail_fast=True)
    dones = list(drive(range(9), the_plan, Setup(identity, 3, False, None), open_backend))
    (backend,) = made
    # The run ends at its failure, as a plain loop's would: nothing after it is handed out.
    assert [(d.index, d.status) for d in dones] == [(0, OK), (1, ERROR)]
    assert dones[1].attempts == retries + 1
    # The lost chunk's items and item 7 come after the failure: none is sent again. Only
    # item 1's retries are.
    assert [task[1] for task in backend.submitted if len(task[2]) == 1] == [1] * retries
    assert [task[1] for task in backend.submitted if len(task[2]) > 1] == [0, 3, 6]
    # What still ran was abandoned, not waited for.
    assert backend.closes == [True]


@pytest.mark.timeout(60)
def test_a_run_that_ended_at_a_failure_does_not_raise_the_input_s_later_error() -> None:
    def source() -> Iterator[Action]:
        yield from (Return(i) for i in range(5))
        raise OSError("the input broke after the failure")

    # The whole input is read before item 1 fails: its error waits for the items before it.
    the_plan = plan(workers=4, chunksize=2, fail_fast=True)
    dones, _ = run_fake(source(), the_plan, Script(fail={1: 1}))
    assert [(d.index, d.status) for d in dones] == [(0, OK), (1, ERROR)]
    assert isinstance(dones[1].value, ScriptedFailure)
