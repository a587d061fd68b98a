"""Faults injected at random positions: every index comes back exactly once, nothing is left.

Exceptions and hangs are injected under every model; crashes (os._exit, SIGSEGV, SIGKILL)
under processes only, since anywhere else they take the test process down with them. The
autouse ``no_leaks`` fixture (conftest.py) fails any test that leaves a child process behind.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pickpool
from pickpool._api import Model
from tests.helpers import Boom

HANG = 2.0  # a hung item sleeps this long: past the timeout, short enough to end by itself
TIMEOUT = 0.5
CRASHES = ("exit", "segv", "kill")


def faulty(item: tuple[int, str]) -> int:
    value, action = item
    if action == "raise":
        raise Boom(f"item {value} fails")
    if action == "hang":
        time.sleep(HANG)
    elif action == "exit":
        os._exit(9)
    elif action == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    return value * 2


async def afaulty(item: tuple[int, str]) -> int:
    value, action = item
    if action == "hang":
        await asyncio.sleep(HANG)
        return value * 2
    await asyncio.sleep(0)
    return faulty(item)


EXPECTED = {
    "raise": Boom,
    "hang": pickpool.TaskTimeout,
    "exit": pickpool.WorkerCrashed,
    "segv": pickpool.WorkerCrashed,
    "kill": pickpool.WorkerCrashed,
}


def plans(actions: tuple[str, ...]) -> st.SearchStrategy[list[tuple[int, str]]]:
    """Up to 24 items, most fine, a few faulty, at most one hang (each costs a timeout)."""
    fault = st.sampled_from(actions)
    item = st.tuples(st.integers(0, 1000), st.one_of(st.just("ok"), st.just("ok"), fault))
    return st.lists(item, max_size=24).filter(lambda xs: sum(a == "hang" for _, a in xs) <= 1)


def check_every_index_once(items: list[tuple[int, str]], results: list[Any]) -> None:
    assert len(results) == len(items)
    for index, ((value, action), result) in enumerate(zip(items, results, strict=True)):
        if action == "ok":
            assert result == value * 2
        else:
            assert isinstance(result, pickpool.Failure), (index, action, result)
            assert result.index == index
            assert isinstance(result.exception, EXPECTED[action]), (action, result.exception)


FAULTS = settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.leaves_threads
@pytest.mark.parametrize("model", ["serial", "threads", "asyncio", "auto"])
@FAULTS
@given(items=plans(("raise", "hang")))
def test_exceptions_and_hangs_in_process(model: Model, items: list[tuple[int, str]]) -> None:
    results = pickpool.map(faulty, items, model=model, timeout=TIMEOUT, on_error="collect")
    check_every_index_once(items, results)


@pytest.mark.leaves_threads
@pytest.mark.parametrize("model", ["threads", "asyncio", "auto"])
@FAULTS
@given(items=plans(("raise", "hang")))
def test_exceptions_and_hangs_in_coroutines(model: Model, items: list[tuple[int, str]]) -> None:
    results = pickpool.map(afaulty, items, model=model, timeout=TIMEOUT, on_error="collect")
    check_every_index_once(items, results)


@FAULTS
@given(items=plans(("raise", "hang", *CRASHES)))
def test_crashes_exceptions_and_hangs_in_processes(items: list[tuple[int, str]]) -> None:
    results = pickpool.map(
        faulty, items, model="processes", workers=2, timeout=TIMEOUT, on_error="collect"
    )
    check_every_index_once(items, results)


@FAULTS
@given(items=plans(("raise", *CRASHES)), chunksize=st.integers(1, 8))
def test_crashes_in_chunks_fail_only_their_item(
    items: list[tuple[int, str]], chunksize: int
) -> None:
    # A crash kills the chunk in flight: the driver re-runs its items singly to find the culprit.
    results = pickpool.map(
        faulty, items, model="processes", workers=2, chunksize=chunksize, on_error="collect"
    )
    check_every_index_once(items, results)


@pytest.mark.parametrize(
    ("action", "says"),
    [("exit", "exit code 9"), ("segv", "SIGSEGV"), ("kill", "SIGKILL")],
)
def test_a_crash_names_its_cause(action: str, says: str) -> None:
    items = [(0, "ok"), (1, action), (2, "ok")]
    results = pickpool.map(faulty, items, model="processes", on_error="collect")
    assert (results[0], results[2]) == (0, 4)
    assert isinstance(results[1], pickpool.Failure)
    assert isinstance(results[1].exception, pickpool.WorkerCrashed)
    assert says in str(results[1].exception)


def crash_once(folder: str, x: int) -> int:
    """Item 1 crashes its worker on the first try only (tries are counted in a file)."""
    marks = Path(folder, str(x))
    with marks.open("a") as f:
        f.write(".")
    if x == 1 and len(marks.read_text()) == 1:
        os._exit(9)
    return x


def hang_once(folder: str, x: int) -> int:
    marks = Path(folder, str(x))
    with marks.open("a") as f:
        f.write(".")
    if x == 1 and len(marks.read_text()) == 1:
        time.sleep(HANG)
    return x


def test_retries_cover_crashes(tmp_path: Path) -> None:
    fn = functools.partial(crash_once, str(tmp_path))
    assert pickpool.map(fn, range(4), model="processes", retries=1) == [0, 1, 2, 3]


@pytest.mark.leaves_threads
@pytest.mark.parametrize("model", ["threads", "processes", "asyncio"])
def test_retries_cover_timeouts(model: Model, tmp_path: Path) -> None:
    fn = functools.partial(hang_once, str(tmp_path))
    assert pickpool.map(fn, range(4), model=model, timeout=TIMEOUT, retries=1) == [0, 1, 2, 3]


def test_a_failure_counts_its_attempts() -> None:
    items = [(0, "ok"), (1, "exit"), (2, "raise")]
    results = pickpool.map(faulty, items, model="processes", retries=2, on_error="collect")
    failures = [r for r in results[1:] if isinstance(r, pickpool.Failure)]
    assert [f.attempts for f in failures] == [3, 3]
