"""imap reads lazily, works on endless input, and stops its workers when the consumer stops."""

from __future__ import annotations

import gc
import itertools
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

import pickpool
from pickpool._api import Model
from tests.conftest import MODELS
from tests.helpers import identity


def counting(n: int | None, seen: list[int]) -> Iterator[int]:
    for i in itertools.count() if n is None else range(n):
        seen.append(i)
        yield i


def test_imap_on_an_endless_iterator(model: Model) -> None:
    seen: list[int] = []
    results = pickpool.imap(identity, counting(None, seen), model=model)
    assert [next(results) for _ in range(50)] == list(range(50))
    results.close()
    assert len(seen) < 50 + 5000  # read a bounded window ahead, never the whole input


def test_nothing_runs_before_the_first_next(model: Model) -> None:
    seen: list[int] = []
    results = pickpool.imap(identity, counting(10, seen), model=model)
    assert seen == []
    assert list(results) == list(range(10))


@pytest.mark.parametrize("how", ["break", "close", "garbage"])
def test_stopping_early_stops_the_workers(model: Model, how: str) -> None:
    # The autouse no_leaks fixture checks that no thread or process is left afterwards.
    seen: list[int] = []
    results = pickpool.imap(identity, counting(None, seen), model=model)
    if how == "break":
        for value in results:
            if value == 20:
                break
        results.close()  # what a for loop's end does to a generator it no longer references
    elif how == "close":
        next(results)
        results.close()
    else:
        next(results)
        del results
        gc.collect()


def test_unordered_yields_as_completed() -> None:
    released = threading.Event()

    def held_first(x: int) -> int:
        # Item 0 is held until the first result is out: an unordered imap yields the others
        # without it. (An ordered one would wait for it: the bound lets the test fail then.)
        if x == 0:
            released.wait(timeout=10)
        return x

    results = pickpool.imap(held_first, range(4), model="threads", ordered=False)
    try:
        first = next(results)
    finally:
        released.set()
        results.close()
    assert first != 0


def test_an_error_in_the_input_propagates_after_cleanup(model: Model) -> None:
    def broken() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("input went away")

    got: list[object] = []
    with pytest.raises(OSError, match="input went away"):
        got.extend(pickpool.imap(identity, broken(), model=model))


RSS_SCRIPT = """
import resource, sys, pickpool

def inc(x):
    return x + 1

async def ainc(x):
    return x + 1

model = sys.argv[1]
fn = ainc if model == "asyncio" else inc
n = 2_000_000
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
total = 0
for r in pickpool.imap(fn, (i for i in range(n)), model=model):
    total += r
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert total == n * (n + 1) // 2, total
print((after - before) / 1024)
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("model", [*MODELS, "auto"])
def test_two_million_items_in_flat_memory(model: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, model],
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    grown_mb = float(done.stdout.strip())
    assert grown_mb < 100, f"max RSS grew by {grown_mb:.0f} MB over 2M items under {model}"
