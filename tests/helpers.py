"""Module-level functions for tests: importable by worker processes under every start method."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from pickpool._backends._processes import Starts
from pickpool._machine import Machine


class Boom(Exception):
    """The exception the test functions raise on purpose."""


def square_or_fail(item: tuple[int, bool]) -> int:
    value, fail = item
    if fail:
        raise Boom(f"item {value} fails")
    return value * value


async def asquare_or_fail(item: tuple[int, bool]) -> int:
    await asyncio.sleep(0)
    return square_or_fail(item)


def where(_: object) -> tuple[int, int]:
    """Which process and thread ran the call; waits a little so that several workers take part."""
    time.sleep(0.02)
    return os.getpid(), threading.get_ident()


def identity(x: object) -> object:
    return x


def crash(x: int) -> int:
    if x == 3:
        os._exit(7)
    return x


def hang_on(x: float) -> float:
    """Negative items hang: long enough that only a timeout ends them in a test."""
    if x < 0:
        time.sleep(-x)
    return x


def flaky(folder: str, x: int) -> int:
    """Odd items fail on their first two tries; tries are counted in files, across processes."""
    marks = os.path.join(folder, str(x))
    with open(marks, "a") as f:
        f.write(".")
    with open(marks) as f:
        tries = len(f.read())
    if x % 2 and tries < 3:
        raise Boom(f"item {x} try {tries}")
    return x


def machine(
    *,
    cores: int = 2,
    gil: bool = True,
    start_method: str = "forkserver",
    server_running: bool = True,
    interpreters: bool = False,
    cluster: object = None,
) -> Machine:
    """A made-up machine for the cost model: its cores and GIL, and what each model would
    observe of it (the process start method, sub-interpreters, a dask cluster)."""
    facts: dict[str, object] = {"processes": Starts(start_method, server_running)}
    if interpreters:
        facts["interpreters"] = True
    if cluster is not None:
        facts["dask"] = cluster
    return Machine(cores=cores, gil=gil, facts=facts)


def read_variable(name: str) -> str | None:
    """An environment variable, as the process that runs the call sees it."""
    return os.environ.get(name)


def nested_sum(n: int) -> int:
    """A task that runs a Parallel call of its own on the pickpool backend (this module
    imports nothing of joblib: the worker must have registered the backend itself)."""
    import joblib  # type: ignore[import-untyped]

    delayed = joblib.delayed(abs)
    return sum(joblib.Parallel(n_jobs=2, backend="pickpool")(delayed(-i) for i in range(n)))


QUEUE: list[Any] = []


def keep_queue(queue: Any) -> None:
    """An initializer that keeps a multiprocessing Queue its worker was started with."""
    QUEUE[:] = [queue]


def put_in_queue(x: int) -> int:
    QUEUE[0].put(x)
    return x


class ExitsWhenPickled:
    """A result whose pickling raises SystemExit (a __reduce__ may raise anything)."""

    def __reduce__(self) -> tuple[Any, ...]:
        raise SystemExit(1)


def exits_when_pickled(x: int) -> object:
    return ExitsWhenPickled() if x == 1 else x


@contextlib.contextmanager
def python_script(
    script: str, *args: str, text: bool = True, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[Any]]:
    """``python -c script *args``, its output unbuffered and piped to ``stdout``; on exit it
    is killed if still running, reaped, and its pipe closed (a ``communicate()`` that timed
    out leaves it open, and its ResourceWarning would fail a later test)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=text,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
