"""The main loop of a pickpool worker process. Imported in the child only."""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from .. import _machine, _native
from .._errors import PickpoolError
from .._pickling import dumps, dumps_outcomes, loads
from .._task import (
    BLOCK,
    ERROR,
    FATAL,
    OK,
    Caller,
    Outcome,
    Task,
    WithInit,
    expand,
    failed,
    format_traceback,
    release,
    run_initializer,
    task_indices,
)
from ._journal import Journal, SharedFd

# The message that announces a function: the next message is the function, pickled.
FUNCTION = b"F"
# Announce each task's start (so that a timeout counts from there), or stop announcing.
ANNOUNCE, QUIET = b"A", b"Q"
# The message a worker sends when it starts a task, while announcing.
STARTED = b"S"
# The first byte of a part of a chunk's outcomes, sent before the chunk ends (its journal was
# full); the chunk's own message, without it, comes last.
PART = b"P"
# The messages a worker sends as it begins, and as it ends, running the run's initializer
# (always: a timeout counts it, and a crash in it is the initializer's, not an item's).
INITIALIZING, INITIALIZED = b"B", b"E"
# The message that caps native thread pools: the next message is the limit, b"" for none.
INNER = b"I"
# The message that sets the lowest level log records are sent back at: the next message is it.
LOGGING = b"L"
# The message a warm worker gets as a new run takes it: the next message is the pickled
# (environment, cores) the run's new workers would start with (see main's env and cores).
RESETTLE = b"N"
# The first byte of a log record sent to the parent (pickled attributes follow).
RECORD = b"R"
# A worker no run has used for this long exits (a warm pool's workers outlive their run).
IDLE_LIFETIME = 60.0
# A worker idle this long collects its garbage once: nothing else would, as it allocates
# nothing while it waits.
IDLE_COLLECT = 1.0


# (Complex on purpose: a worker process's whole life, in one loop.)
def main(  # noqa: C901
    conn: Connection,
    owner: int,
    cores: int,
    env: dict[str, str],
    journal: SharedFd | None,
    preload: tuple[str, ...] = (),
    start_initargs: tuple[Any, ...] | None = None,
) -> None:
    """Receive pickled tasks on ``conn``, run them, send pickled outcomes back.

    :data:`FUNCTION` followed by a pickled function sets the function later tasks run. An
    empty message, the parent closing its end, :data:`IDLE_LIFETIME` seconds without a
    message, or the death of ``owner`` (the process that started the pool) stop the worker.
    ``cores``: this worker's share of the machine, which a pool started inside it sizes to;
    ``env``: the parent's environment as the worker starts (a fork server's is as it was when
    it started), with the pool sizes read at import, set before your function's modules load
    (:data:`RESETTLE` sets both anew). :data:`INNER` and a limit cap native thread pools.
    ``journal``: where the outcomes of a chunk's finished items are recorded as they finish
    (see ``_journal``), or None. ``preload``: modules the parent imported that register
    something (the joblib backend), imported here too. ``start_initargs``: the initializer's
    arguments, when they can only come with the start (a multiprocessing Queue).
    """
    global _START_INITARGS
    _START_INITARGS = start_initargs
    record = _settle_in(owner, cores, env, journal)
    for name in preload:
        with contextlib.suppress(Exception):  # (what fails to import here is not needed)
            importlib.import_module(name)
    caller: Caller | None = None
    load_error: BaseException | None = None
    announce = False
    inner = _native.Held(None)
    try:
        while True:
            try:
                if not conn.poll(IDLE_COLLECT):
                    gc.collect()
                    if not conn.poll(IDLE_LIFETIME):
                        return
                message = conn.recv_bytes()
                if message == FUNCTION:
                    if caller is not None:
                        caller.close()
                    caller, load_error = _load(conn, conn.recv_bytes())
                    continue
                if message in (ANNOUNCE, QUIET):
                    announce = message == ANNOUNCE
                    continue
                if message in (LOGGING, RESETTLE, INNER):
                    inner = _set(message, conn.recv_bytes(), conn, inner)
                    continue
                if not message:
                    return
                # Pools your function's imports loaded since the last task are capped too.
                _native.caps.refresh()
                if announce:
                    _send(conn, STARTED)
                _send(conn, _run(caller, load_error, message, record, conn))
            except (EOFError, OSError):
                return
            # Nothing of the task stays referenced while the worker waits for the next one.
            del message
    finally:
        inner.close()
        if caller is not None:
            caller.close()


def _settle_in(
    owner: int, cores: int, env: dict[str, str], journal: SharedFd | None
) -> Journal | None:
    """What a new worker process does before its first message (see :func:`main`); its
    journal, mapped."""
    _settle_env(env, cores)
    # Ctrl-C reaches the whole process group; the parent decides what stops and when.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A group of its own, so that killing the worker kills what its item started too.
    os.setpgrp()
    # Not a daemon in its own eyes, so that your function may start processes of its own
    # (a nested pool): the worker watches its owner, and stops its children when it exits.
    multiprocessing.current_process().daemon = False
    threading.Thread(
        target=_exit_with_parent, args=(owner,), name="pickpool-orphan-watch", daemon=True
    ).start()
    if journal is None:
        return None
    record = Journal(journal.fd)
    os.close(journal.fd)
    return record


def _set(message: bytes, value: bytes, conn: Connection, inner: _native.Held) -> _native.Held:
    """Act on a setting the parent sent (:data:`LOGGING`, :data:`RESETTLE`, :data:`INNER`);
    the cap on native thread pools now held."""
    if message == LOGGING:
        _forward_logs(conn, int(value))
    elif message == RESETTLE:
        _settle_env(*loads(value))
    else:
        inner.close()
        inner = _native.Held(int(value) if value else None)
    return inner


def _settle_env(env: dict[str, str], cores: int) -> None:
    """The environment ``env`` exactly, and this worker's share of the cores: as a new worker
    starts, and as a warm one is taken by a new run (which may have set or unset variables
    since, and runs another number of workers)."""
    for name in set(os.environ) - set(env):
        del os.environ[name]  # (unset in the parent since the fork server started)
    os.environ.update(env)
    _machine.set_share(cores)


# Log records from your function's threads share the pipe with outcomes.
_sending = threading.Lock()


def _send(conn: Connection, message: bytes) -> None:
    with _sending:
        conn.send_bytes(message)


class _Forward(logging.Handler):
    """Sends each record to the parent, where its own handlers take it (as loky does)."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self._conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        try:
            attributes = dict(record.__dict__)
            attributes["msg"] = record.getMessage()  # args may not pickle: sent formatted
            attributes["args"] = None
            if record.exc_info:
                attributes["exc_text"] = logging.Formatter().formatException(record.exc_info)
            attributes["exc_info"] = None
            _send(self._conn, RECORD + dumps(attributes))
        except Exception:
            self.handleError(record)


def _forward_logs(conn: Connection, level: int) -> None:
    """Records at ``level`` and above go to the parent, and only there."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _Forward):
            root.removeHandler(handler)
        elif multiprocessing.get_start_method(allow_none=True) == "fork":
            root.removeHandler(handler)  # inherited: the parent's handler gets it already
    root.addHandler(_Forward(conn))
    root.setLevel(level)


def _run(
    caller: Caller | None,
    load_error: BaseException | None,
    message: bytes,
    journal: Journal | None,
    conn: Connection,
) -> bytes:
    """The outcomes of the task in ``message``, pickled; never raises for what ``fn`` did."""
    outcomes: list[Outcome]
    try:
        task: Task = loads(message)
    except BaseException as exc:
        # Index -1 stands for "every item of this task": their indices did not load.
        outcomes = [failed(-1, exc)]
    else:
        if caller is None:
            assert load_error is not None
            outcomes = [failed(index, load_error) for index in task_indices(task)]
        elif journal is not None and len(task[2]) > 1:
            outcomes = _run_recorded(caller, task, journal, conn)
        else:
            outcomes = caller.run(task)
    return _pickled(outcomes)


def _pickled(outcomes: list[Outcome]) -> bytes:
    """``outcomes`` as bytes to send, whatever they hold; never raises."""
    try:
        return dumps_outcomes(outcomes)
    except BaseException as exc:
        # dumps_outcomes fails an item whose result or exception cannot travel; this is for
        # what is stranger still (an exception whose every method raises): the worker lives.
        indices = [o[0] for outcome in outcomes for o in expand(outcome)]
        error = PickpoolError(
            f"the outcomes of items {indices[0]}-{indices[-1]} could not be sent back from the "
            f"worker process ({type(exc).__name__})"
        )
        text = format_traceback(error)
        return dumps([(index, ERROR, error, text) for index in indices])
    finally:
        # Sent (or not): the exceptions' frames, and what the failed calls built, go now.
        for _, status, payload, _ in outcomes:
            if status in (ERROR, FATAL):
                release(payload)


def _run_recorded(caller: Caller, task: Task, journal: Journal, conn: Connection) -> list[Outcome]:
    """A chunk's items, each result recorded in the journal as its item finishes: a worker
    that dies mid-chunk leaves its parent the finished ones (see ``_journal``). A failure, and
    a result the journal cannot take, go to the parent at once, with what was recorded before
    them, as a part of the chunk's outcomes; the journal starts again after them."""
    task_id, first, items = task
    journal.begin(task_id, first)
    start, values = first, []  # results recorded since ``start``
    record, fn = journal.record, caller.fn
    for index, item in enumerate(items, first):
        if caller.plain:  # (the common case, at a call's cost: ``caller.call`` costs 3x)
            try:
                value = fn(item)
            except BaseException as exc:
                outcome = failed(index, exc)
            else:
                if record(value):
                    values.append(value)
                    continue
                outcome = (index, OK, value, None)
        else:
            outcome = caller.call(index, item)
            if outcome[1] == OK and record(outcome[2]):
                values.append(outcome[2])
                continue
        before = [(start, BLOCK, values, None)] if values else []
        _send(conn, PART + _pickled([*before, outcome]))
        del outcome
        start, values = index + 1, []
        journal.begin(task_id, start)
    return [(start, BLOCK, values, None)] if values else []


# The initializer's arguments this worker was started with, if they came that way (see main).
_START_INITARGS: tuple[Any, ...] | None = None


def _load(conn: Connection, fn_bytes: bytes) -> tuple[Caller | None, BaseException | None]:
    try:
        fn = loads(fn_bytes)
    except BaseException as exc:
        exc.add_note(
            "pickpool: the function could not be loaded in the worker process; the module that "
            "defines it must be importable there (or define it in __main__ / a notebook)"
        )
        return None, exc
    if isinstance(fn, WithInit):
        _send(conn, INITIALIZING)
        try:
            initargs = fn.initargs if fn.initargs is not None else _START_INITARGS or ()
            error = run_initializer(fn.initializer, initargs)
        finally:
            _send(conn, INITIALIZED)
        if error is not None:
            return None, error
        fn = fn.fn
    return Caller(fn), None


# How often a worker checks that its parent is still there.
PARENT_POLL = 0.5
ORPHANED = 70  # the exit code of a worker whose parent died


def _exit_with_parent(owner: int) -> None:
    """End this worker soon after the process that owns the pool dies, even mid-item.

    An idle worker ends at once (its pipe reaches EOF), but one busy in an item would run on as
    an orphan if its owner was SIGKILLed. Under fork and spawn the owner is the parent, and a
    dead parent's children are re-parented; under forkserver the parent is the fork server,
    which outlives the owner as long as any worker lives, so the owner is looked up itself.
    (Linux's PR_SET_PDEATHSIG would watch the wrong process under forkserver, and fires when
    the *thread* that started the worker ends.)
    """
    parent = os.getppid()
    while True:
        time.sleep(PARENT_POLL)
        if os.getppid() != parent or not _alive(owner):
            if os.getpgrp() == os.getpid():
                # Whatever the running item started goes too (the group is this worker's).
                os.killpg(os.getpid(), signal.SIGKILL)
            os._exit(ORPHANED)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # A killed process stays a zombie until its own parent reaps it: dead all the same.
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc: the signal check is all there is
