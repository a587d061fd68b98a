"""The main loop of a pickpool worker process. Imported in the child only."""

from __future__ import annotations

import signal
from multiprocessing.connection import Connection

from ._pickling import dumps_outcomes, loads
from ._task import Caller, Outcome, Task, failed


def main(conn: Connection, fn_bytes: bytes) -> None:
    """Receive pickled tasks on ``conn``, run them, send pickled outcomes back.

    An empty message, or the parent closing its end, stops the worker.
    """
    # Ctrl-C reaches the whole process group; the parent decides what stops and when.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    caller: Caller | None = None
    load_error: BaseException | None = None
    try:
        caller = Caller(loads(fn_bytes))
    except BaseException as exc:
        exc.add_note(
            "pickpool: the function could not be loaded in the worker process; the module that "
            "defines it must be importable there (or define it in __main__ / a notebook)"
        )
        load_error = exc
    try:
        while True:
            try:
                message = conn.recv_bytes()
            except (EOFError, OSError):
                return
            if not message:
                return
            outcomes: list[Outcome]
            try:
                task: Task = loads(message)
            except BaseException as exc:
                # Index -1 stands for "every item of this task": their indices did not load.
                outcomes = [failed(-1, exc)]
            else:
                if caller is not None:
                    outcomes = caller.run(task)
                else:
                    assert load_error is not None
                    outcomes = [failed(index, load_error) for index, _ in task[1]]
            conn.send_bytes(dumps_outcomes(outcomes))
    finally:
        if caller is not None:
            caller.close()
