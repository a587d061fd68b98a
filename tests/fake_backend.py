"""A deterministic fake backend, and the scripted items the backend contract suite runs.

Two halves, both importable by worker processes and dask workers (no pytest here):

* **Scripted items** (:class:`Return`, :class:`Raise`, :class:`Signal`, :class:`Hold`,
  :class:`Where`, :class:`ReadInit`) and the functions that play them (:func:`perform`,
  :func:`aperform`): an item says what its call does, so one function serves every check
  (and ``meet``, which starts two pool threads at once). :class:`Beacon` is
  the test's end of :class:`Signal` and :class:`Hold`: a loopback TCP server, so that a
  worker in any thread or process can say "I started" and wait to be let go, without the
  test sleeping to guess when.

* :class:`FakeBackend`: the :class:`~pickpool._backends.Backend` protocol (and ``wake``),
  in the caller's thread, deterministic. Each :meth:`~FakeBackend.collect` is one tick of a
  logical clock: free workers (``setup.workers`` of them) take queued chunks (in the order
  :attr:`Script.order` says), every running chunk ages one tick, and those done run their
  items through the same :class:`~pickpool._task.Caller` as every real model. A
  :class:`Script` injects faults by item index: failures, crashes reported the way
  ``model="processes"`` reports a dead worker (``LOST`` for each item of a chunk of several,
  which the driver sends again one item at a time, then :class:`~pickpool.WorkerCrashed` for
  the culprit alone), slow chunks, overruns of ``setup.timeout``, and items ``submit`` refuses
  as unpicklable. :class:`Log` records what happened, for the driver's tests to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from pickpool._backends import Setup
from pickpool._errors import TaskTimeout, WorkerCrashed
from pickpool._pickling import NotPicklable
from pickpool._task import (
    BLOCK,
    ERROR,
    Caller,
    Outcome,
    Task,
    format_traceback,
    lost_chunk,
    outcome_count,
    run_initializer,
    task_indices,
)

# Scripted items ------------------------------------------------------------------------------


class ContractError(Exception):
    """An ordinary exception of the test's own."""


class ContractBaseError(BaseException):
    """A ``BaseException`` that is neither ``SystemExit`` nor ``KeyboardInterrupt``."""


class KeywordOnlyError(Exception):
    """Pickles, but does not load by calling ``__init__`` again (it wants a keyword)."""

    def __init__(self, *, code: int) -> None:
        super().__init__(f"code {code}")
        self.code = code


class UnpicklableError(Exception):
    """Cannot be pickled at all: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class InitializerError(Exception):
    """What :func:`fail_initializer` raises."""


class ScriptedFailure(Exception):
    """What :class:`FakeBackend` reports for an item its :class:`Script` fails."""


# What a Raise item raises, by name: every kind of thing a call can raise.
RAISES: Final[Mapping[str, Callable[[], BaseException]]] = {
    "value_error": lambda: ValueError("scripted"),
    "contract": lambda: ContractError("scripted"),
    "keyword_only": lambda: KeywordOnlyError(code=7),
    "unpicklable": lambda: UnpicklableError("holds a lock"),
    "stop_iteration": lambda: StopIteration("scripted"),
    "system_exit": lambda: SystemExit(3),
    "keyboard_interrupt": KeyboardInterrupt,
    "generator_exit": GeneratorExit,
    "base": lambda: ContractBaseError("scripted"),
    "cancelled": lambda: asyncio.CancelledError("scripted"),
}


@dataclass(frozen=True, slots=True)
class Return:
    """The call returns ``value``."""

    value: int


@dataclass(frozen=True, slots=True)
class Raise:
    """The call raises ``RAISES[kind]()``."""

    kind: str


@dataclass(frozen=True, slots=True)
class Signal:
    """The call tells the :class:`Beacon` at ``address`` that item ``index`` started, then
    works (sleeps) for ``seconds``, and returns ``index``."""

    address: tuple[str, int]
    index: int
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Hold:
    """The call tells the :class:`Beacon` that item ``index`` started, waits until the test
    releases it, tells it again as ``index + FINISHED``, and returns ``index``."""

    address: tuple[str, int]
    index: int


@dataclass(frozen=True, slots=True)
class Where:
    """The call returns where it ran: (process id, thread id)."""


@dataclass(frozen=True, slots=True)
class ReadInit:
    """The call returns what the run's initializer left in this worker (None: it did not run)."""


Action = Return | Raise | Signal | Hold | Where | ReadInit

# A held item, once released, reports its index plus this.
FINISHED: Final = 1_000_000
_STARTED_TAG: Final = b"S"
_HELD_TAG: Final = b"H"
_MESSAGE: Final = 9  # a tag byte and a signed 8-byte index

# What initialize() set in this worker.
_initialized: str | None = None


def initialize(token: str) -> None:
    """An initializer: leaves ``token`` for :class:`ReadInit` items in this worker."""
    global _initialized
    _initialized = token


def reset_initialized() -> None:
    global _initialized
    _initialized = None


def fail_initializer(message: str) -> None:
    """An initializer that fails."""
    raise InitializerError(message)


_meeting = threading.Barrier(2)


def meet(_: object) -> int:
    """Two calls that wait for each other: run together, they make a pool start two threads
    (dask's in-process workers start theirs lazily, which a leak check would count)."""
    return _meeting.wait(30.0)


def _tell(address: tuple[str, int], tag: bytes, index: int) -> socket.socket:
    conn = socket.create_connection(address, timeout=30.0)
    conn.sendall(tag + index.to_bytes(8, "big", signed=True))
    return conn


def perform(action: Action) -> object:
    """Do what ``action`` says: the one function every backend runs in the contract suite."""
    if isinstance(action, Return):
        return action.value
    if isinstance(action, Raise):
        raise RAISES[action.kind]()
    if isinstance(action, Signal):
        _tell(action.address, _STARTED_TAG, action.index).close()
        if action.seconds:
            time.sleep(action.seconds)  # the workload itself, not a synchronisation
        return action.index
    if isinstance(action, Hold):
        with _tell(action.address, _HELD_TAG, action.index) as conn:
            conn.recv(1)  # until the test releases it (or hangs up)
        _tell(action.address, _STARTED_TAG, action.index + FINISHED).close()
        return action.index
    if isinstance(action, Where):
        return (os.getpid(), threading.get_ident())
    if isinstance(action, ReadInit):
        return _initialized
    raise TypeError(f"not a scripted item: {action!r}")


async def aperform(action: Action) -> object:
    """:func:`perform` as a coroutine (a :class:`Hold` blocks its event loop meanwhile)."""
    await asyncio.sleep(0)
    if isinstance(action, Signal) and action.seconds:
        _tell(action.address, _STARTED_TAG, action.index).close()
        await asyncio.sleep(action.seconds)
        return action.index
    return perform(action)


class Beacon:
    """The test's end of :class:`Signal` and :class:`Hold` items: a loopback TCP server.

    :meth:`wait` blocks until an item reported, :meth:`arrived` takes what came without
    waiting, :meth:`release` lets every held item go on.
    """

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        host, port = self._server.getsockname()[:2]
        self.address: tuple[str, int] = (str(host), int(port))
        self.seen: set[int] = set()
        self._held: list[socket.socket] = []

    def _accept(self, timeout: float | None) -> bool:
        """Take one report; False if none came within ``timeout`` (0: none waiting)."""
        self._server.settimeout(timeout)
        try:
            conn, _ = self._server.accept()
        except (TimeoutError, BlockingIOError):
            return False
        conn.settimeout(30.0)
        message = b""
        while len(message) < _MESSAGE:
            part = conn.recv(_MESSAGE - len(message))
            if not part:
                break
            message += part
        if len(message) < _MESSAGE:
            conn.close()  # a worker killed while it reported: nothing to count
            return True
        self.seen.add(int.from_bytes(message[1:], "big", signed=True))
        if message[:1] == _HELD_TAG:
            self._held.append(conn)
        else:
            conn.close()
        return True

    def wait(self, index: int, timeout: float = 30.0) -> None:
        """Until item ``index`` reported (an AssertionError after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while index not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or not self._accept(left):
                raise AssertionError(f"item {index} did not report within {timeout}s")

    def arrived(self) -> set[int]:
        """Every index reported so far, taking those waiting without waiting for more."""
        while self._accept(0.0):
            pass
        return set(self.seen)

    def release(self) -> None:
        """Let every held item go on (one whose worker is gone is just hung up on)."""
        self.arrived()
        held, self._held = self._held, []
        for conn in held:
            with contextlib.suppress(OSError):
                conn.sendall(b"g")
            conn.close()

    def close(self) -> None:
        self.release()
        self._server.close()


# The fake backend ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Script:
    """What :class:`FakeBackend` does besides calling the function, by item index.

    * ``fail``: the first N runs of the item fail with :class:`ScriptedFailure` (an ``ERROR``
      outcome; the function is not called).
    * ``crash``: the first N runs of the item kill its "worker", as a segfault kills a worker
      process: nothing of the chunk comes back; the items of a chunk of several are reported
      ``LOST`` (and go first in line when the driver sends them again, one item a task); a
      chunk of that item alone fails it with :class:`~pickpool.WorkerCrashed`. Exactly what
      ``model="processes"`` does.
    * ``slow``: the item's chunk takes that many more ticks (collects) to finish.
    * ``hang``: the item runs past ``setup.timeout``: its chunk's items fail with
      :class:`~pickpool.TaskTimeout`, as when processes kills an overrunning worker (needs a
      ``setup.timeout``).
    * ``unsendable``: :meth:`FakeBackend.submit` raises ``TypeError`` for a chunk holding the
      item, as processes does for an item that cannot be pickled.
    * ``order``: which queued chunk a free worker takes: the oldest, the newest, or one drawn
      with ``seed``.
    """

    fail: Mapping[int, int] = field(default_factory=dict)
    crash: Mapping[int, int] = field(default_factory=dict)
    slow: Mapping[int, int] = field(default_factory=dict)
    hang: frozenset[int] = frozenset()
    unsendable: frozenset[int] = frozenset()
    order: Literal["fifo", "lifo", "shuffle"] = "fifo"
    seed: int = 0


@dataclass
class Log:
    """What a :class:`FakeBackend` saw and did. A tick is the number of collects so far."""

    submitted: list[tuple[int, Task]] = field(default_factory=list)  # (tick, task)
    started: list[Task] = field(default_factory=list)  # chunks as workers took them
    runs: list[int] = field(default_factory=list)  # item indices, each time one ran
    reported: list[tuple[int, int, int]] = field(default_factory=list)  # (tick, index, status)
    closes: list[bool] = field(default_factory=list)  # close(cancel=...) calls
    dropped: list[Task] = field(default_factory=list)  # chunks close() threw away
    most_in_flight: int = 0  # items submitted and not yet reported, at most

    def reported_indices(self) -> list[int]:
        return [index for _, index, _ in self.reported]


class FakeBackend:
    """The Backend protocol in the caller's thread, one logical tick per :meth:`collect`.

    Nothing runs between calls: a chunk's items run inside the collect in which it finishes,
    so every run is reproducible. Fits ``_driver.drive(..., open_backend=FakeBackend)``, or
    with a script: ``open_backend=lambda setup: FakeBackend(setup, script)``.
    """

    def __init__(self, setup: Setup, script: Script | None = None) -> None:
        # Set first, so that close() is safe whatever follows raises.
        self._closed = False
        self._caller: Caller | None = None
        self._queue: list[Task] = []
        self._running: list[list[Any]] = []  # [task, ticks left]
        self.log = Log()
        self.setup = setup
        self.script = script = script or Script()
        if script.hang and setup.timeout is None:
            raise ValueError(
                "Script.hang needs a setup.timeout: without one a hung item never ends"
            )
        self._fails = dict(script.fail)
        self._crashes = dict(script.crash)
        self._lost: set[int] = set()  # items reported LOST, until taken again
        self._random = random.Random(script.seed)
        self._tick = 0
        self._in_flight = 0
        self.woken = 0
        # Its one worker is this thread (as serial): the initializer runs here, and what it
        # raises is raised.
        error = run_initializer(setup.initializer, setup.initargs)
        if error is not None:
            raise error
        self._caller = Caller(setup.fn)

    def submit(self, task: Task) -> None:
        if self._closed:
            raise RuntimeError("submit() after close()")
        bad = [index for index in task_indices(task) if index in self.script.unsendable]
        if bad:
            raise NotPicklable(f"cannot send item {bad[0]} to a worker process (scripted)")
        self.log.submitted.append((self._tick, task))
        if task[1] in self._lost:
            # As processes: first in line, behind the items of its chunk sent before it.
            at = 0
            while at < len(self._queue) and self._queue[at][1] in self._lost:
                at += 1
            self._queue.insert(at, task)
        else:
            self._queue.append(task)
        self._in_flight += len(task[2])
        self.log.most_in_flight = max(self.log.most_in_flight, self._in_flight)

    def collect(self, timeout: float | None) -> list[Outcome]:
        """One tick: start what free workers can take, finish what is due. Never waits."""
        self._tick += 1
        while self._queue and len(self._running) < self.setup.workers:
            task = self._take()
            self._lost.discard(task[1])
            ticks = 1 + sum(self.script.slow.get(index, 0) for index in task_indices(task))
            self._running.append([task, ticks])
            self.log.started.append(task)
        outcomes: list[Outcome] = []
        for entry in list(self._running):
            entry[1] -= 1
            if entry[1] <= 0:
                self._running.remove(entry)
                outcomes += self._finish(entry[0])
        self._in_flight -= outcome_count(outcomes)
        for index, status, payload, _ in outcomes:
            count = len(payload) if status == BLOCK else 1
            self.log.reported += [(self._tick, index + k, status) for k in range(count)]
        return outcomes

    def wake(self) -> None:
        """Nothing to do: collect() never waits."""
        self.woken += 1

    def close(self, *, cancel: bool) -> None:
        self.log.closes.append(cancel)
        if self._closed:
            return
        self._closed = True
        self.log.dropped += [entry[0] for entry in self._running] + self._queue
        self._running.clear()
        self._queue.clear()
        if self._caller is not None:
            self._caller.close()

    def __repr__(self) -> str:
        running, queued = len(self._running), len(self._queue)
        return f"<FakeBackend tick {self._tick}, {running} running, {queued} queued>"

    def _take(self) -> Task:
        order = self.script.order
        if order == "fifo":
            return self._queue.pop(0)
        if order == "lifo":
            return self._queue.pop()
        return self._queue.pop(self._random.randrange(len(self._queue)))

    def _finish(self, task: Task) -> list[Outcome]:
        """Run a chunk that is due: its items' outcomes, or none if its worker "died"."""
        _, first, items = task
        limit = self.setup.timeout
        if limit is not None and any(i in self.script.hang for i in task_indices(task)):
            self.log.runs += task_indices(task)
            return [_timed_out(index, limit) for index in task_indices(task)]
        outcomes: list[Outcome] = []
        plain = first  # the first item of the run of plain items not yet called
        for offset in range(len(items)):
            index = first + offset
            crashes, fails = self._crashes.get(index, 0), self._fails.get(index, 0)
            if not crashes and not fails:
                continue
            outcomes += self._call(first, items, plain, index)
            plain = index + 1
            self.log.runs.append(index)
            if crashes:
                self._crashes[index] = crashes - 1
                return self._crashed(task, index)
            self._fails[index] = fails - 1
            failure = ScriptedFailure(f"item {index} failed (scripted)")
            outcomes.append((index, ERROR, failure, format_traceback(failure)))
        outcomes += self._call(first, items, plain, first + len(items))
        return outcomes

    def _call(self, first: int, items: Any, start: int, stop: int) -> list[Outcome]:
        """Items ``start`` to ``stop`` (exclusive) of the chunk, through the real Caller."""
        if start >= stop:
            return []
        assert self._caller is not None
        self.log.runs += range(start, stop)
        return self._caller.run_items(start, items[start - first : stop - first])

    def _crashed(self, task: Task, culprit: int) -> list[Outcome]:
        """As ``ProcessesBackend._lost``: the worker died running ``culprit``."""
        _, first, items = task
        if len(items) > 1:
            lost = WorkerCrashed(
                f"the worker process running items {first} to {first + len(items) - 1} died "
                "(scripted crash); which of them crashed it is unknown: each runs again alone"
            )
            self._lost.update(task_indices(task))
            return lost_chunk(task, lost)
        crash = WorkerCrashed(
            f"the worker process running item {culprit} died (scripted crash); likely causes: "
            "a crash in C code, os._exit or sys.exit in a library, or the machine running "
            "out of memory (the OOM killer sends SIGKILL)"
        )
        return [(culprit, ERROR, crash, format_traceback(crash))]


def _timed_out(index: int, limit: float) -> Outcome:
    exc = TaskTimeout(
        f"item {index} ran longer than timeout={limit:g}s; its worker process was killed and "
        "replaced (scripted)"
    )
    return (index, ERROR, exc, format_traceback(exc))
