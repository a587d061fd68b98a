"""The exceptions pickpool raises of its own.

The user's own exceptions are never wrapped: they are re-raised as themselves, with the
worker's traceback chained as ``__cause__``.
"""

from __future__ import annotations

from concurrent.futures import BrokenExecutor


class PickpoolError(Exception):
    """Base class of every error pickpool raises of its own.

    Catch it to handle anything pickpool itself reports, as opposed to what your function raised::

        try:
            pickpool.map(fetch, urls, model="processes", timeout=5)
        except pickpool.PickpoolError as exc:
            print("the run itself failed:", exc)
    """


class TaskTimeout(PickpoolError, TimeoutError):
    """An item ran longer than the ``timeout=`` given to the call.

    Your function's fault, or the service it waits on: the item was stopped (its worker process
    killed under ``model="processes"``, its await cancelled under ``"asyncio"``; a thread cannot be
    killed and is left to finish on its own). Raise ``timeout`` if the item is merely slow::

        pickpool.map(fetch, urls, model="threads", timeout=10, on_error="collect")
    """


class WorkerCrashed(PickpoolError, BrokenExecutor):
    """The worker process running an item died (``os._exit``, a segfault, a kill, the OOM killer).

    Usually your function's fault (a crash in C code, ``sys.exit`` in a library) or the machine's
    (memory). Only the item that was running fails; the worker is replaced and the run goes on.
    A ``RuntimeError``, and a ``concurrent.futures.BrokenExecutor`` for code written for the
    standard executors (whose whole pool breaks where pickpool fails one call). The message
    carries the exit code or signal::

        results = pickpool.map(risky, items, model="processes", on_error="collect")
        crashed = [r for r in results if isinstance(r, pickpool.Failure)
                   and isinstance(r.exception, pickpool.WorkerCrashed)]
    """


class BackendUnavailable(PickpoolError, LookupError):
    """The model asked for cannot run here: an extra is not installed or the interpreter lacks it.

    The environment's fault, not your code's; the message says what to install or which model
    to use instead::

        try:
            pickpool.map(f, xs, model="processes")
        except pickpool.BackendUnavailable as exc:
            print(exc)  # says why, and what to do
    """
