"""Module-level functions for test_reliability.py: importable by worker processes under every
start method. Those that take their parameters first are meant to be bound with
functools.partial.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any


class RebuildsAnInt(Exception):
    """Pickles, and loads as the int 5: its ``__reduce__`` rebuilds something else."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (int, (5,))


def raise_rebuilt_at(at: int, x: int) -> int:
    if x == at:
        raise RebuildsAnInt(f"item {x}")
    return x


def note(folder: str, x: int) -> int:
    """Appends a line to ``folder/x`` per call: how many times item ``x`` ran, from any
    process."""
    with open(os.path.join(folder, str(x)), "a") as f:
        f.write(".")
    return x


def runs(folder: str, x: int) -> int:
    """How many times item ``x`` ran (see :func:`note`)."""
    try:
        with open(os.path.join(folder, str(x))) as f:
            return len(f.read())
    except FileNotFoundError:
        return 0


def note_or_die_at(folder: str, at: int, x: int) -> int:
    """:func:`note`, then at ``at`` the worker process dies (``os._exit``)."""
    note(folder, x)
    if x == at:
        os._exit(1)
    return x


def spin(seconds: float) -> float:
    """Pure-Python CPU work for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def meet(barrier: threading.Barrier, x: int) -> int:
    """Waits at ``barrier`` (a few seconds at most): two calls of it meet, or it fails."""
    barrier.wait(10)
    return x


def spin_then(seconds: float, x: int) -> int:
    """Waits ``seconds`` (in small sleeps), then returns ``x``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)
    return x


def spin_note(folder: str, seconds: float, x: int) -> int:
    """:func:`spin` for ``seconds``, then :func:`note`."""
    spin(seconds)
    return note(folder, x)


def pid(x: int) -> int:
    """The process that ran the call."""
    return os.getpid()


def a_lock(x: int) -> object:
    """A result that cannot be pickled."""
    return threading.Lock()


async def block_loop_then_time(x: int) -> float:
    """Item 0 blocks its event loop for 0.6 s (``time.sleep`` in a coroutine); each returns
    when it started."""
    started = time.monotonic()
    if x == 0:
        time.sleep(0.6)
    return started


def hang_a_while() -> None:
    """An initializer that does not return for 30 s."""
    time.sleep(30)


def exit_3() -> None:
    """An initializer that ends its worker process."""
    os._exit(3)


def links(x: int) -> tuple[int, list[int]]:
    """A page of a made-up site of 31 pages (a binary tree), and the pages it links to."""
    return x, [child for child in (2 * x + 1, 2 * x + 2) if child < 31]


async def alinks(x: int) -> tuple[int, list[int]]:
    return links(x)


def fails_then_dies(x: int) -> int:
    """Item 0 raises (sent to the parent at once), item 1 ends its worker, others return."""
    if x == 0:
        raise ValueError("item 0 fails")
    if x == 1:
        os._exit(7)
    return x


class ExitsWhenLoaded:
    """A result whose loading calls ``sys.exit(1)`` (in whichever process loads it)."""

    def __reduce__(self) -> tuple[Any, ...]:
        import sys

        return (sys.exit, (1,))


def exits_when_loaded_at(at: int, x: int) -> object:
    return ExitsWhenLoaded() if x == at else x


class KeepsItsCause(Exception):
    """An exception that comes back from pickling with a cause, as one a nested pool
    re-raises does (loky rebuilds its errors with their remote traceback as the cause)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_with_cause, (self.args, repr(self.__cause__)))


def _with_cause(args: tuple[Any, ...], cause: str) -> KeepsItsCause:
    exc = KeepsItsCause(*args)
    exc.__cause__ = RuntimeError(cause)
    return exc


def raise_from(x: int) -> int:
    """Raises an exception with a cause of its own (as a nested pool's re-raised error)."""
    try:
        raise KeyError(f"inner {x}")
    except KeyError as inner:
        raise KeepsItsCause(f"outer {x}") from inner
