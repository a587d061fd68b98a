"""Module-level functions for test_meaning.py: importable by worker processes."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from typing import Any

SEEN: list[int] = []
CONNECTION: sqlite3.Connection | None = None


def spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def note_computing(n: int) -> int:
    """Pure-Python computing (auto's pick for it would be processes), noting ``n`` in SEEN."""
    spin(0.004)
    SEEN.append(n)
    return n


def connect(path: str) -> None:
    """A plain initializer: the worker's connection in a global."""
    global CONNECTION
    if CONNECTION is not None:
        CONNECTION.close()  # (the last run's, in this process)
    CONNECTION = sqlite3.connect(path)


def disconnect() -> None:
    global CONNECTION
    if CONNECTION is not None:
        CONNECTION.close()
        CONNECTION = None


def query_global(n: int) -> int:
    """Waits a little (auto's pick for it would be threads), then uses the global."""
    time.sleep(0.005)
    assert CONNECTION is not None
    row = CONNECTION.execute("SELECT value FROM numbers WHERE n = ?", (n,)).fetchone()
    return int(row[0])


def open_connection(path: str) -> sqlite3.Connection:
    """A worker_state initializer: the worker's connection, returned."""
    return sqlite3.connect(path)


def query(connection: sqlite3.Connection, n: int) -> tuple[int, int]:
    time.sleep(0.002)
    row = connection.execute("SELECT value FROM numbers WHERE n = ?", (n,)).fetchone()
    return int(row[0]), id(connection)


def thread_and_state(state: dict[str, Any], n: int) -> tuple[int, int]:
    """Which thread ran ``n``, and the id of the state it was handed."""
    time.sleep(0.001)
    return threading.get_ident(), id(state)


def new_state() -> dict[str, Any]:
    return {"thread": threading.get_ident()}


def add(state: dict[str, Any], a: int, b: int) -> int:
    return a + b


async def anew_state() -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"loop": id(asyncio.get_running_loop())}


async def aloop_of_state(state: dict[str, Any], n: int) -> bool:
    await asyncio.sleep(0.001)
    return bool(state["loop"] == id(asyncio.get_running_loop()))


def refuse() -> None:
    raise RuntimeError("no database today")


def use(state: object, n: int) -> int:
    return n


async def await_a_while(n: int) -> int:
    await asyncio.sleep(0.01)
    return n


def spin_for(seconds: float) -> float:
    spin(seconds)
    return seconds


class Marked:
    """A worker's state that marks a file while open, and again when closed."""

    def __init__(self, folder: str) -> None:
        import os

        self.path = os.path.join(folder, f"{os.getpid()}-{threading.get_ident()}")
        with open(self.path, "w") as f:
            f.write("open")

    def close(self) -> None:
        with open(self.path, "w") as f:
            f.write("closed")


class AMarked(Marked):
    async def close(self) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        super().close()


def marked(folder: str) -> Marked:
    return Marked(folder)


async def amarked(folder: str) -> AMarked:
    await asyncio.sleep(0)
    return AMarked(folder)


def use_marked(state: Marked, n: int) -> int:
    time.sleep(0.001)
    return n


async def ause_marked(state: AMarked, n: int) -> int:
    await asyncio.sleep(0.001)
    return n
