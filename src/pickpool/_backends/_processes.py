"""``model="processes"``: worker processes, each on a pipe of its own.

Processes run pure-Python CPU work in parallel, one GIL each, at the price of pickling.
Unlike ``ProcessPoolExecutor`` (one shared queue), the parent hands each chunk to a chosen
worker, so it always knows who holds what: a worker that dies fails only the item it was
running (the items of a chunk of several are reported ``LOST``: the driver runs them again one
at a time to find the culprit), and an item that overruns ``timeout`` gets its worker killed
and replaced while the others go on.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from .. import _chunks, _machine, _native
from .._costs import LOADS_PER_DUMPS, Costs, Option, better
from .._errors import BackendUnavailable, TaskTimeout, WorkerCrashed
from .._pickling import dumps, dumps_function, dumps_task, loads, loads_outcomes
from .._task import (
    ERROR,
    Outcome,
    Task,
    WithInit,
    format_traceback,
    initializer_name,
    lost_chunk,
    outcome_count,
    task_indices,
)
from . import WORKER_IMPORTS, Model, Setup, Traits, _journal, every_core
from ._journal import Journal, SharedFd

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

# A second chunk is queued on a busy worker so it never waits for the parent between chunks,
# but only a small one: the parent must never block writing to a worker that is busy, or the
# two could each wait for the other to read.
_PIPELINE = 2
_SMALL = 16 * 1024
_STOP_GRACE = 2.0


class _Worker:
    __slots__ = (
        "announces",
        "conn",
        "delivered",
        "fn_bytes",
        "initializing",
        "inner",
        "journal",
        "log_level",
        "method",
        "process",
        "ran",
        "started",
        "tasks",
    )

    def __init__(
        self, process: Any, conn: Connection, method: str, journal: Journal | None
    ) -> None:
        self.process = process
        self.conn = conn
        # Where it records its chunk's finished items (see _journal), and how many of its head
        # chunk's outcomes it has sent early (the journal was full).
        self.journal = journal
        self.delivered = 0
        self.method = method  # its start method: a warm worker is reused only under the same
        self.fn_bytes = b""  # the function it has loaded
        self.announces = False  # whether it says when it starts a task
        self.inner: int | None = None  # the cap on its native thread pools
        self.log_level: int | None = None  # the lowest level its records are sent back at
        self.tasks: deque[Task] = deque()
        self.ran = 0  # items sent to it, for max_tasks_per_child
        self.initializing: float | None = None  # since when it runs the run's initializer
        # When the head task began running, as far as the parent can tell; None while a
        # worker that announces its starts has not announced it.
        self.started: float | None = 0.0


# Every worker process, from its start until it is reaped: the one owner of its pipe and its
# process handle. Reachable from here, they are never finalized by the garbage collector
# before the code that stops them runs (an abandoned imap collected in a cycle), which would
# close descriptors that this code then wrote to and closed again, by then another file's.
_live: set[_Worker] = set()


class _WarmPool:
    """Workers kept between runs, so that start-up is paid once per program, not per call.

    A run takes idle workers from here before it starts new ones, sends each the run's function
    (unless it already has those very bytes), and gives back the workers that end the run idle
    and healthy. A run that stops early (an error, Ctrl-C, ``break``) kills its workers
    instead: what they were doing is unknown. Kept workers exit after
    :data:`~pickpool._backends._procworker.IDLE_LIFETIME` seconds unused, when this process
    exits, and when it dies (they watch it).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._exit_hook = False

    def take(self, method: str) -> _Worker | None:
        with self._lock:
            while self._idle:
                w = self._idle.pop()
                # Alive, started the same way, and with nothing to read (no EOF: not exited).
                if (
                    w.method == method
                    and w.process.exitcode is None
                    and not w.conn.poll()
                    and not _exiting_now(w.process.pid)
                ):
                    return w
                _stop([w])
        return None

    def give(self, workers: list[_Worker]) -> list[_Worker]:
        """Keep what fits; return the workers that did not fit."""
        with self._lock:
            room = max(0, WARM_WORKERS_PER_CORE * _machine.cores() - len(self._idle))
            kept, rest = workers[:room], workers[room:]
            self._idle += kept
            if kept and not self._exit_hook:
                atexit.register(self.clear)
                self._exit_hook = True
        return rest

    def clear(self) -> None:
        """Stop every idle worker (at exit, and in tests)."""
        with self._lock:
            idle, self._idle = self._idle, []
        _stop(idle)

    def forget(self) -> None:
        """In a forked child: the parent's workers are not ours to use or stop, nor its fork
        server ours to ask for new ones (it is not this process's child: waiting for it
        fails)."""
        self._lock = threading.Lock()
        for w in _live:
            with contextlib.suppress(OSError):
                w.conn.close()
        _live.clear()
        self._idle = []
        _forget_fork_server()

    def __len__(self) -> int:
        return len(self._idle)


WARM_WORKERS_PER_CORE = 4
warm = _WarmPool()


def _other_context(exc: BaseException, method: str) -> RuntimeError | None:
    """A start refused because what initargs carries was made for another start method (a
    fork-context Queue for a forkserver worker): the error, saying which method to use."""
    if not isinstance(exc, RuntimeError) or "context" not in str(exc):
        return None
    return RuntimeError(
        f"{exc} pickpool starts its worker processes with {method!r}: make what initargs "
        f"carries with multiprocessing.get_context({method!r}) (its Queue(), Lock()...)"
    )


def _pickles_now(initargs: tuple[Any, ...]) -> bool:
    """Whether ``initargs`` pickle outside a process's start (a multiprocessing Queue or Lock
    refuses to: it crosses only as a process starts)."""
    try:
        dumps(initargs)
    except RuntimeError:
        return False
    except Exception:
        return True  # (not ours to judge here: the function's pickling reports it)
    return True


def _exiting_now(pid: int | None) -> bool:
    """Whether process ``pid`` is dying (Linux): killed, its main thread already a zombie while
    its other threads (the orphan watch) still hold its files, so that its pipe shows no EOF
    yet and its fork server has not reported its exit."""
    if pid is None:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False  # (reaped, or no /proc: the checks above tell)
    return state in (b"Z", b"X")


# The interpreter exits: multiprocessing's own exit hook is about to terminate every daemon
# child (our workers among them) and join it.
_exiting = False
_exit_hooked = False


def _hook_exit() -> None:
    """Register :func:`_at_exit`, once, after multiprocessing is imported: exit hooks run last
    registered first, so it runs before multiprocessing's."""
    global _exit_hooked
    if not _exit_hooked:
        atexit.register(_at_exit)
        _exit_hooked = True


def _at_exit() -> None:
    global _exiting
    _exiting = True
    with _reaping_lock:
        pass  # (a thread that was reaping workers is done: none will be closed from now on)


# Held while workers are reaped and their process objects closed: multiprocessing's own exit
# hook joins every child it knows of, and one closed under it makes it raise.
_reaping_lock = threading.Lock()


@contextlib.contextmanager
def _reaping() -> Iterator[None]:
    """Reaping and closing workers; a daemon thread at exit waits instead (see
    :func:`_still_if_exiting`)."""
    _still_if_exiting()
    _reaping_lock.acquire()
    if _exiting:  # (since the line above: not while holding the lock, which the exit takes)
        _reaping_lock.release()
        _still_if_exiting()
        _reaping_lock.acquire()  # (the main thread: it goes on)
    try:
        yield
    finally:
        _reaping_lock.release()


def _still_if_exiting() -> None:
    """A daemon thread still running a run here as the interpreter exits: multiprocessing
    terminates the workers under it. What the run would make of that (a worker crashed) and do
    (close processes multiprocessing is joining) is noise: the thread waits instead, quietly,
    for the interpreter to end it, as it ends every daemon thread."""
    if _exiting and threading.current_thread() is not threading.main_thread():
        threading.Event().wait()


def _forked() -> None:
    """In a forked child: the parent's workers and fork server are the parent's, and a lock
    its threads held is held for ever here."""
    global _reaping_lock
    _reaping_lock = threading.Lock()
    warm.forget()


os.register_at_fork(after_in_child=_forked)


# (Long on purpose: worker processes: start, feed, crash, kill.)
class ProcessesBackend:
    def __init__(self, setup: Setup) -> None:
        self._closed = True  # until built: close() after a failed __init__ has nothing to do
        why = unavailable()
        if why is not None:
            raise BackendUnavailable(f"model='processes' cannot run here: {why}")
        self._setup = setup
        # Pickled once per run (by the caller, usually), and before any process starts. An
        # initializer travels in the same pickle as the function: defined in __main__, both go
        # by value, and in one pickle they share one copy of their module's globals, so what
        # the initializer sets there is what the function reads.
        # Initargs that only cross to a process as it starts (a multiprocessing Queue or Lock,
        # as ProcessPoolExecutor takes them) go with each worker's start instead.
        self._start_initargs: tuple[Any, ...] | None = None
        if setup.initializer is not None:
            initargs = tuple(setup.initargs)
            try:
                self._fn_bytes = dumps_function(WithInit(setup.fn, setup.initializer, initargs))
            except TypeError:
                # (Pickled once when they can be: only a refusal is looked into.)
                if _pickles_now(initargs):
                    raise
                self._start_initargs = initargs
                self._fn_bytes = dumps_function(WithInit(setup.fn, setup.initializer, None))
        else:
            self._fn_bytes = setup.fn_bytes or dumps_function(setup.fn)
        # (Imported here: `import pickpool`, and runs on other models, need none of it.)
        import multiprocessing
        import multiprocessing.util
        from multiprocessing.connection import wait

        _hook_exit()
        self._wait = wait
        self._context = multiprocessing.get_context(setup.start_method or _machine.start_method())
        # Each worker's native thread pools (BLAS, OpenMP) get its share of the cores.
        self._inner = _native.limit_for(setup.inner_threads, setup.workers)
        # Read once for the run: it walks every logger, and each worker started needs it.
        self._log_level = _lowest_log_level()
        if self._context.get_start_method() == "forkserver":
            _preload_worker_module()
        self._workers: list[_Worker] = []
        self.peak = 0  # the most workers that had work at once
        self._pending: deque[tuple[Task, bytes]] = deque()
        self._ready: list[Outcome] = []
        # Items reported LOST (their chunk died with its worker), until sent again alone.
        self._lost_items: set[int] = set()
        # wake() writes a byte here, which a waiting collect() sees among its handles.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._closed = False

    # The driver's thread --------------------------------------------------------------------

    def submit(self, task: Task) -> None:
        entry = (task, dumps_task(task))
        if self._lost_items and task[1] in self._lost_items:
            # An item of a chunk that died with its worker, sent again alone: it goes ahead of the
            # chunks still waiting, as its chunk had started already (behind its chunk's items
            # sent before it). A chunk handed to the dead worker's replacement meanwhile runs
            # first: the driver sends these only once it has read the loss.
            at = 0
            while at < len(self._pending) and self._pending[at][0][1] in self._lost_items:
                at += 1
            self._pending.insert(at, entry)
        else:
            self._pending.append(entry)
        self._dispatch()

    # (Complex on purpose: outcomes, deadlines and dead workers, read in one pass.)
    def collect(self, timeout: float | None) -> list[Outcome]:  # noqa: C901
        _still_if_exiting()
        outcomes, self._ready = self._ready, []
        busy = [w for w in self._workers if w.tasks]
        if outcomes or not busy:
            self._drain_wake()
            return outcomes
        limit = self._setup.timeout
        starts = [begun for w in busy if (begun := _begun(w)) is not None]
        if limit is not None and starts:
            soonest = min(starts) + limit - time.monotonic()
            timeout = max(0.0, soonest if timeout is None else min(timeout, soonest))
        by_handle: dict[Any, _Worker] = {}
        for w in busy:
            by_handle[w.conn] = w
            by_handle[w.process.sentinel] = w
        ready = self._wait([*by_handle, self._wake_r], timeout)
        _still_if_exiting()
        now = time.monotonic()
        lost: list[_Worker] = []
        # Results first: a worker may have sent its last result and then died.
        for handle in ready:
            w = by_handle.get(handle)  # type: ignore[assignment]
            if w is not None and handle is w.conn:
                self._receive(w, now, lost)
        for handle in ready:
            w = by_handle.get(handle)  # type: ignore[assignment]
            if w is not None and handle is not w.conn and w not in lost and not w.conn.poll():
                lost.append(w)  # exited with nothing left to read
        if self._wake_r in ready:
            self._drain_wake()
        for w in lost:
            self._lost(w)
        if limit is not None:
            for w in self._workers[:]:
                begun = _begun(w)
                if w.tasks and begun is not None and now - begun >= limit:
                    self._overrun(w, limit)
        self._dispatch()
        outcomes, self._ready = self._ready, []
        return outcomes

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake is pending already) or closed
            os.write(self._wake_w, b"w")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass

    def close(self, *, cancel: bool) -> None:
        if self._closed:
            return
        _still_if_exiting()
        self._closed = True
        self._pending.clear()
        workers, self._workers = self._workers, []
        if not cancel and not self._setup.fresh:
            idle = [w for w in workers if not w.tasks and w.process.exitcode is None]
            workers = [w for w in workers if w not in idle] + warm.give(idle)
        try:
            _stop(workers)
        finally:
            os.close(self._wake_r)
            os.close(self._wake_w)

    def __repr__(self) -> str:
        busy = sum(1 for w in self._workers if w.tasks)
        return (
            f"<ProcessesBackend {len(self._workers)} workers ({busy} busy), "
            f"{len(self._pending)} chunks queued>"
        )

    # Handing out work -------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while self._pending:
            task, payload = self._pending[0]
            w = self._pick(len(task[2]), len(payload))
            if w is None:
                return
            self._pending.popleft()
            try:
                w.conn.send_bytes(payload)
            except OSError:
                # Died before it could take the chunk: the sentinel reports it on next collect.
                self._pending.appendleft((task, payload))
                self._lost(w)
                continue
            if self._lost_items:
                self._lost_items.discard(task[1])
            if not w.tasks and not w.announces:
                w.started = time.monotonic()
            w.tasks.append(task)
            w.ran += len(task[2])
            self.peak = max(self.peak, sum(1 for other in self._workers if other.tasks))

    def _pick(self, count: int, size: int) -> _Worker | None:
        """A worker to take a chunk of ``count`` items, ``size`` bytes; None if all are busy."""
        cap = self._setup.max_tasks_per_child
        if cap is not None:
            # A worker whose next chunk would take it past its allowance is replaced as soon
            # as it is idle (a chunk larger than the allowance still goes to a new worker).
            for w in [w for w in self._workers if not w.tasks and w.ran and w.ran + count > cap]:
                self._workers.remove(w)
                _stop([w])
        idle = [w for w in self._workers if not w.tasks]
        if idle:
            return idle[0]
        if len(self._workers) < self._setup.workers:
            return self._spawn()
        if size > _SMALL:
            return None
        queued = [
            w
            for w in self._workers
            if len(w.tasks) < _PIPELINE and (cap is None or w.ran + count <= cap)
        ]
        return min(queued, key=lambda w: len(w.tasks)) if queued else None

    def _spawn(self) -> _Worker:
        from . import _procworker

        method = self._context.get_start_method()
        share = max(1, _machine.cores() // self._setup.workers)
        # The parent's environment as it is now (the fork server's is as it was when that
        # started), with the native pools' sizes fixed at their import.
        env = {**os.environ, **_native.worker_env(self._setup.inner_threads, self._inner)}
        w = None if self._setup.fresh else self._take_warm(method, env, share)
        if w is not None:
            return w
        parent, child = self._context.Pipe(duplex=True)
        journal, fd = Journal.create() if _journal.available() else (None, -1)
        preload = tuple(sorted(WORKER_IMPORTS))
        process = self._context.Process(  # type: ignore[attr-defined]
            target=_procworker.main,
            args=(
                child,
                os.getpid(),
                share,
                env,
                SharedFd(fd) if journal else None,
                preload,
                self._start_initargs,
            ),
            name="pickpool-worker",
            daemon=True,
        )
        try:
            with _main_module_hidden(), _without_ctrl_c(method):
                process.start()
        except BaseException as exc:
            if journal is not None:
                journal.close()
            parent.close()
            child.close()
            if self._start_initargs and (said := _other_context(exc, method)) is not None:
                raise said from exc
            raise
        finally:
            if journal is not None:
                os.close(fd)  # (the worker has its own: mapped, the memory stays)
        child.close()
        w = _Worker(process, parent, method, journal)
        _live.add(w)
        self._workers.append(w)
        self._load(w)
        return w

    def _take_warm(self, method: str, env: dict[str, str], share: int) -> _Worker | None:
        """A warm worker for this run, set as a new one would start, if one is idle."""
        from . import _procworker

        w = warm.take(method)
        if w is None:
            return None
        if w.journal is not None:
            # (Idle: what it recorded is an earlier run's, whose task ids this run reuses.)
            w.journal.begin(-1)
        self._workers.append(w)
        try:
            # Variables set or unset since it started, and this run's share of the cores.
            w.conn.send_bytes(_procworker.RESETTLE)
            w.conn.send_bytes(dumps((env, share)))
            self._load(w)
        except OSError:
            # It died while idle, after the check: start a fresh one instead.
            self._remove(w)
            return None
        return w

    def _load(self, w: _Worker) -> None:
        """Send ``w`` this run's function, unless it has those very bytes loaded already, and
        whether to announce each task's start (a timeout counts from there, not from a
        worker's start-up, which may import for seconds)."""
        from ._procworker import ANNOUNCE, FUNCTION, INNER, LOGGING, QUIET

        if w.fn_bytes != self._fn_bytes:
            w.conn.send_bytes(FUNCTION)
            w.conn.send_bytes(self._fn_bytes)
            w.fn_bytes = self._fn_bytes
        if w.inner != self._inner:
            # After the function: its module's imports are loaded, so their pools are capped.
            w.conn.send_bytes(INNER)
            w.conn.send_bytes(b"" if self._inner is None else str(self._inner).encode())
            w.inner = self._inner
        if w.log_level != self._log_level:
            w.conn.send_bytes(LOGGING)
            w.conn.send_bytes(str(self._log_level).encode())
            w.log_level = self._log_level
        announce = self._setup.timeout is not None
        if w.announces != announce:
            w.conn.send_bytes(ANNOUNCE if announce else QUIET)
            w.announces = announce
        w.started = None if announce else 0.0

    # Reading results, and what to do when a worker is gone -------------------------------------

    def _receive(self, w: _Worker, now: float, lost: list[_Worker]) -> None:
        from ._procworker import INITIALIZED, INITIALIZING, PART, RECORD, STARTED

        try:
            message = w.conn.recv_bytes()
        except (EOFError, OSError):
            lost.append(w)
            return
        if message == STARTED:
            w.started = now
            return
        if message in (INITIALIZING, INITIALIZED):
            w.initializing = now if message == INITIALIZING else None
            return
        if message[:1] == RECORD:
            _handle_record(message[1:])
            return
        if message[:1] == PART:
            part = loads_outcomes(message[1:])
            w.delivered += outcome_count(part)
            self._ready.extend(part)
            return
        task = w.tasks.popleft()
        w.delivered = 0
        w.started = None if w.announces else now
        self._ready.extend(loads_outcomes(message, task))

    def _remove(self, w: _Worker) -> tuple[Task | None, str]:
        """Take ``w`` out of the pool and put the chunks it had not started back in line.

        Returns the chunk it was running, if any, and how it ended.
        """
        self._workers.remove(w)
        w.conn.close()
        with _reaping():
            interrupted = _reap([w], grace=_STOP_GRACE)
            cause = _describe_exit(w.process.exitcode)
            w.process.close()
        if interrupted is not None:
            raise interrupted
        running = w.tasks.popleft() if w.tasks else None
        for task in reversed(w.tasks):
            self._pending.appendleft((task, dumps_task(task)))
        return running, cause

    def _lost(self, w: _Worker) -> None:
        """``w`` died: fail its running item (or report its chunk's items LOST); put the rest
        of its work back in line. Dead in the run's initializer, before any item: that chunk's
        items fail (a try each), the initializer named."""
        # What it sent before it died comes first: a send that found it dead calls this
        # before any collect read its last messages (a failure sent early, a finished chunk),
        # which its journal no longer holds.
        self._read_left(w)
        initializing = w.initializing is not None
        delivered, w.delivered = w.delivered, 0
        running, cause = self._remove(w)
        recorded = None
        if w.journal is not None:
            if running is not None:
                recorded = w.journal.read(running[0])
            w.journal.close()
        if running is None:
            return
        task_id, first, items = running
        if initializing:
            named = initializer_name(self._setup.initializer)
            for index in task_indices(running):
                crash = WorkerCrashed(
                    f"the worker process that was to run item {index} died ({cause}) in "
                    f"initializer={named}, before any item started"
                )
                self._ready.append((index, ERROR, crash, format_traceback(crash)))
            return
        if len(items) > 1 and recorded is None and not delivered:
            crash = WorkerCrashed(
                f"the worker process running items {first} to {first + len(items) - 1} died "
                f"({cause}); which of them crashed it is unknown: each runs again alone"
            )
            self._ready += lost_chunk(running, crash)
            self._lost_items.update(task_indices(running))
            return
        # The items it finished are done (their outcomes sent early, or recorded); the next one
        # was running when it died, and the rest never started: they run again, not counted as
        # tries.
        if recorded is None:
            index = first + delivered
        else:
            start, outcomes = recorded
            self._ready += outcomes
            index = start + outcome_count(outcomes)
        if index >= first + len(items):
            return  # (it died after its last item)
        unstarted = (task_id, index + 1, items[index + 1 - first :])
        if unstarted[2]:
            crash = WorkerCrashed(
                f"the worker process died ({cause}) while item {index} ran; items "
                f"{index + 1} to {first + len(items) - 1} had not started: they run again"
            )
            self._ready += lost_chunk(unstarted, crash)
            self._lost_items.update(task_indices(unstarted))
        crash = WorkerCrashed(
            f"the worker process running item {index} died ({cause}); likely causes: a "
            "crash in C code, os._exit or sys.exit in a library, or the machine running "
            "out of memory (the OOM killer sends SIGKILL)"
        )
        self._ready.append((index, ERROR, crash, format_traceback(crash)))

    def _read_left(self, w: _Worker) -> None:
        """Every message ``w`` sent and the pipe still holds, read as a collect would."""
        ended: list[_Worker] = []
        now = time.monotonic()
        while not ended:
            try:
                if not w.conn.poll():
                    return
            except (EOFError, OSError):
                return
            self._receive(w, now, ended)

    def _overrun(self, w: _Worker, limit: float) -> None:
        """``w``'s item ran past ``timeout`` (or its initializer did, before the item could
        start): kill it, fail that item, requeue the rest."""
        initializing = w.initializing is not None
        _signal(w, signal.SIGKILL)
        running, _ = self._remove(w)
        assert running is not None
        if w.journal is not None:
            w.journal.close()
        for index in task_indices(running):
            if initializing:
                exc = TaskTimeout(
                    f"item {index} did not start within timeout={limit:g}s: initializer="
                    f"{initializer_name(self._setup.initializer)} was still running in its new "
                    "worker process, which was killed and replaced"
                )
            else:
                exc = TaskTimeout(
                    f"item {index} ran longer than timeout={limit:g}s; its worker process was "
                    "killed and replaced"
                )
            self._ready.append((index, ERROR, exc, format_traceback(exc)))


def _begun(w: _Worker) -> float | None:
    """When ``w``'s head task began, as far as a timeout counts: its start, or the start of
    the initializer that runs before it."""
    return w.started if w.started is not None else w.initializing


def _stop(workers: list[_Worker]) -> None:
    """Stop ``workers``: ask the idle ones to exit, terminate the busy ones, and reap them all.

    Whatever the user presses meanwhile: a second Ctrl-C during the grace ends the grace
    (what still runs is killed at once), and is raised once every worker is reaped.
    """
    interrupted: BaseException | None = None
    try:
        for w in workers:
            if w.tasks:
                _signal(w, signal.SIGTERM)
                continue
            try:
                w.conn.send_bytes(b"")
            except OSError:
                _signal(w, signal.SIGTERM)
    except KeyboardInterrupt as exc:
        interrupted = exc
    with _reaping():
        interrupted = _reap(workers, grace=0.0 if interrupted else _STOP_GRACE) or interrupted
        for w in workers:
            w.conn.close()
            w.process.close()
            if w.journal is not None:
                w.journal.close()
    if interrupted is not None:
        raise interrupted


def _reap(workers: list[_Worker], *, grace: float) -> BaseException | None:
    """Wait up to ``grace`` seconds for ``workers`` to exit, kill those that did not, and reap
    them all. A Ctrl-C meanwhile ends the grace; it is returned, to be raised by the caller
    once nothing is left behind."""
    interrupted: BaseException | None = None
    deadline = time.monotonic() + grace
    for w in workers:
        try:
            if interrupted is None:
                w.process.join(max(0.0, deadline - time.monotonic()))
        except KeyboardInterrupt as exc:
            interrupted = exc
    for w in workers:
        if w.process.exitcode is None:
            _signal(w, signal.SIGKILL)
        while True:
            try:
                w.process.join()  # killed: returns at once
                break
            except KeyboardInterrupt as exc:
                interrupted = exc
        _live.discard(w)
    return interrupted


def _signal(w: _Worker, signum: int) -> None:
    """Send ``signum`` to ``w`` and to what its items started (its process group)."""
    pid = w.process.pid
    if pid is None or w.process.exitcode is not None:
        return  # gone: its number may be another's by now
    try:
        os.killpg(pid, signum)
    except OSError:
        # Not yet the leader of a group of its own (it has only just started).
        with contextlib.suppress(OSError):
            os.kill(pid, signum)


def _forget_fork_server() -> None:
    """In a forked child, a fork server of its own, started when it is first needed.

    multiprocessing keeps one fork server per process, in module globals that a fork copies:
    the child would ask its parent's server for workers, and fail to wait for it.
    """
    forkserver: Any = sys.modules.get("multiprocessing.forkserver")
    if forkserver is None:
        return
    server = forkserver.ForkServer()
    forkserver._forkserver = server
    for name in (
        "ensure_running",
        "get_inherited_fds",
        "connect_to_new_process",
        "set_forkserver_preload",
    ):
        setattr(forkserver, name, getattr(server, name))


def _preload_worker_module() -> None:
    """Have the fork server import the worker's code once, so each worker starts in ~3 ms.

    Without it every worker imports pickpool and cloudpickle afresh: ~25 ms each on a small
    machine. It takes effect when the fork server starts; modules the caller asked the server
    to preload are kept.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    current = list(getattr(server, "_preload_modules", None) or ["__main__"])
    missing = [m for m in _WORKER_MODULES if m not in current]
    if missing:
        forkserver.set_forkserver_preload([*current, *missing])


# threadpoolctl too: a worker whose function uses numpy caps its pools with it (~10 ms).
_WORKER_MODULES = ("pickpool._backends._procworker", "threadpoolctl")


@contextlib.contextmanager
def _without_ctrl_c(method: str) -> Iterator[None]:
    """Start a child (and the fork server, which the first start under forkserver starts) that
    Ctrl-C does not reach: the parent decides what stops and when, and a child interrupted
    while it imports, before it ignores Ctrl-C itself, would print a KeyboardInterrupt
    traceback. SIGINT is blocked in this thread while it starts them (a mask, unlike a handler,
    can be set from any thread, and children keep it); Ctrl-C still reaches this process
    through its other threads, or once unblocked.

    multiprocessing's resource tracker is started first, outside the block: starting it
    *unblocks* SIGINT in the thread as it ends, which left the fork server started after it
    open to Ctrl-C (a traceback, in 1 start of 10 interrupted at once), and the Ctrl-C itself
    delivered in the middle of the start, where it could be lost (the run then finished)."""
    if method != "fork":
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    blocked = hasattr(signal, "pthread_sigmask")
    if blocked:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start a child that does not re-run the user's script.

    Under ``spawn`` and ``forkserver``, multiprocessing re-imports the parent's ``__main__`` in
    each child, which re-runs a script's top level unless it is guarded by
    ``if __name__ == "__main__"``. pickpool sends the function and data by value (cloudpickle),
    so the child needs none of it: multiprocessing skips the import when ``__main__`` has no
    ``__spec__`` and no ``__file__``, as in an interactive session, so hide them while the child
    is started (the parent's own code runs on, unaffected, in the meantime).
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved: dict[str, Any] = {
        name: main.__dict__[name] for name in ("__spec__", "__file__") if name in main.__dict__
    }
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _lowest_log_level() -> int:
    """The lowest level any logger of this process is set to: a worker sends its records
    from there on, and each is handled here only if its own logger here is enabled for it."""
    loggers = logging.Logger.manager.loggerDict.values()
    levels = [g.level for g in loggers if isinstance(g, logging.Logger) and g.level]
    return min([logging.getLogger().getEffectiveLevel(), *levels])


def _handle_record(payload: bytes) -> None:
    """A worker's log record, handled by this process's handlers, as if logged here."""
    try:
        record = logging.makeLogRecord(loads(payload))
    except Exception:
        return  # (a record is never worth a run)
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


# The cost model's view of worker processes: the parent's bookkeeping per item, a worker's (each
# result recorded in the journal as it finishes, so that a crash loses none: measured with a
# function that adds one, `benchmarks/overhead.py`, 0.12 µs and 0.7 µs an item), a chunk's trip
# to a worker and back, a byte through a pipe (paid at both ends); chunks larger than a pipe's
# buffer wait for an idle worker; starting a worker (by start method), the fork server, and
# stopping one.
PROCESS_ITEM: Final = 0.15e-6
PROCESS_WORKER_ITEM: Final = 0.7e-6
PROCESS_CHUNK: Final = 25e-6
PIPE_BYTE: Final = 1.5e-9
PIPELINED_BYTES: Final = 16 * 1024
WORKER_START: Final = {"fork": 3e-3, "forkserver": 4e-3, "spawn": 80e-3}
FORK_SERVER_START: Final = 70e-3
WORKER_STOP: Final = 1e-3


class Starts(NamedTuple):
    """How new worker processes start here: the start method, whether the fork server is up
    already (new workers then start in ~3 ms), whether this process may start any (a
    daemonic process, a ``multiprocessing.Pool``'s worker, may not), and how many are idle,
    kept from earlier runs (a run takes those before it starts any)."""

    method: str
    server_running: bool
    daemonic: bool = False
    idle: int = 0


def observe() -> Starts:
    """How worker processes start here, now."""
    return Starts(
        _machine.start_method(), _machine.fork_server_running(), _machine.daemonic(), len(warm)
    )


def unavailable() -> str | None:
    """Why worker processes cannot start here, or None."""
    if not _machine.daemonic():
        return None
    return (
        "this is a daemonic process (a multiprocessing.Pool's worker, say), which may not start "
        "processes of its own: use model='threads' or 'serial' here, or run the outer work on "
        "pickpool's processes, whose workers may start their own"
    )


def predict(costs: Costs) -> Option | None:
    """Worker processes: one GIL each, at the price of pickling, pipes and start-up; None in
    a process that may not start any."""
    starts = costs.m.facts.get(MODEL.name)
    if not isinstance(starts, Starts):
        starts = observe()
    if starts.daemonic:
        return None
    each = WORKER_START.get(starts.method, WORKER_START["spawn"])
    server = 0.0 if starts.server_running or starts.method != "forkserver" else FORK_SERVER_START
    return predict_pickled(
        costs,
        MODEL.name,
        start_each=each,
        server=server,
        worker_item=PROCESS_WORKER_ITEM,
        started=lambda k: min(k, starts.idle),
    )


def predict_pickled(
    costs: Costs,
    name: str,
    *,
    start_each: float,
    server: float,
    worker_item: float = 0.0,
    started: Callable[[int], int] = lambda k: 0,
    at_once: int = 1,
) -> Option:
    """Workers that each run Python with a GIL of their own, everything crossing to them and
    back pickled (processes; sub-interpreters too), ``start_each`` seconds to start one after
    ``server`` seconds once, ``at_once`` of them starting side by side, ``worker_item``
    seconds of a worker's bookkeeping per item; ``started(k)``: how many of a run's ``k``
    workers it finds started (kept from an earlier run)."""
    ev, m = costs.ev, costs.m
    if ev.unpicklable:
        return Option(name, m.cores, 1, math.inf)
    pipe = (ev.item_bytes + ev.result_bytes) * PIPE_BYTE
    candidates = set(range(1, m.cores + 1))
    if ev.cpu < ev.wall / 1.5:
        # Waiting too: more processes than cores keep the cores busy (Little's law).
        candidates |= {2 * m.cores, 4 * m.cores}
    best: Option | None = None
    for k in costs.counts(candidates):
        view = costs.view(k)
        wall = costs.stretch(view) + costs.coroutine_call()
        ch = costs.chunk(k, _chunks.COSTLY_HANDOFF_SECONDS)
        parent = (
            PROCESS_ITEM
            + PROCESS_CHUNK / ch
            + ev.item_pickle
            + LOADS_PER_DUMPS * ev.result_pickle
            + pipe
        )
        unpickle = LOADS_PER_DUMPS * ev.item_pickle + ev.result_pickle + worker_item
        worker = wall + unpickle + pipe
        # (Pickling computes on the same cores as the calls.)
        cpu = costs.computing(view, k) + (unpickle + parent) / costs.usable(k)
        # Threads that compute free of the GIL and still do not scale may queue on what
        # processes share too (memory bandwidth), or on what they do not: GIL hand-offs
        # between many short sections (scikit-learn's fits), one address space's page
        # faults and allocator. Measured, processes won such cases: the floor binds them
        # only for calls that wait (a server, a disk, a lock between processes).
        floor = view.floor if ev.cpu_share < 0.5 else 0.0
        per = max(parent, worker / k, cpu, floor, costs.past_the_knee(k))
        if (ev.item_bytes + ev.result_bytes) * ch > PIPELINED_BYTES:
            # Large chunks are not queued behind a busy worker: parent and workers
            # partly take turns.
            per += 0.5 * min(parent, worker / k)
        # The function is pickled once and sent down each worker's pipe, where it is
        # loaded: what it closes over (a 60 MB table) is paid per worker, not per item.
        ship = ev.fn_pickle + k * ev.fn_bytes * PIPE_BYTE + LOADS_PER_DUMPS * ev.fn_pickle
        new = k - started(k)
        starts = server + -(-new // at_once) * start_each if new else 0.0
        fixed = starts + k * WORKER_STOP + ship
        seconds = fixed + costs.n * per + 0.5 * ch * wall
        best = better(best, Option(name, k, ch, seconds, per, view.inner))
    assert best is not None
    return best


MODEL = Model(
    "processes",
    Traits(every_core, batched=True, pickles=True, recycles=True, worker_globals=True, rank=(3, 3)),
    ProcessesBackend,
    predict=predict,
    observe=observe,
    unavailable=unavailable,
)
