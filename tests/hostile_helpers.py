"""Module-level functions for test_hostile.py: importable by worker processes under every start
method. Those that take their parameters first are meant to be bound with functools.partial.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pickpool
from pickpool._api import Model


class Boom(Exception):
    """The exception the test functions raise on purpose."""


def triple(x: int) -> int:
    return 3 * x


def raise_at(at: int, exc: type[BaseException], x: int) -> int:
    if x == at:
        raise exc(f"item {x}")
    return 3 * x


async def araise_at(at: int, exc: type[BaseException], x: int) -> int:
    await asyncio.sleep(0)
    return raise_at(at, exc, x)


def http_error_at(at: int, x: int) -> object:
    """At ``at``, a result that pickles in the worker but fails to load in the parent."""
    if x != at:
        return 3 * x
    import email.message  # here: every worker imports this module, few need these
    import urllib.error

    # HTTPError's __reduce__ passes back none of the five arguments its __init__ requires.
    error = urllib.error.HTTPError(
        "http://example.invalid/", 500, "boom", email.message.Message(), None
    )
    return {"error": error}


def run_sleep_at(at: int, seconds: str, x: int) -> int:
    """At ``at``, a child process that outlives any timeout: ``sleep <seconds>``."""
    if x == at:
        import subprocess

        subprocess.run(["sleep", seconds], check=False)
    return 3 * x


def sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def nested(inner_model: Model, x: int) -> list[int]:
    """A pool inside a worker of a pool."""
    return pickpool.map(triple, range(4 * x, 4 * x + 4), model=inner_model)


class Unprintable(Exception):
    """Cannot be pickled (it holds a lock), and its ``str()`` raises."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.lock = threading.Lock()

    def __str__(self) -> str:
        raise RuntimeError("no str() for this one")


def unprintable_at(at: int, x: int) -> int:
    if x == at:
        raise Unprintable(x)
    return 3 * x


HOG = 400_000_000


def hog_then_fail_at(at: int, x: int) -> int:
    """At ``at``, hold ~400 MB in a local, then fail; elsewhere say which process ran it."""
    if x == at:
        hog = bytearray(HOG)  # zero-filled: every page is touched
        raise Boom(f"item {x} fails holding {len(hog)} bytes")
    return os.getpid()


BIG = 40_000_000


def big(x: int) -> bytes:
    return bytes([x % 256]) * BIG
